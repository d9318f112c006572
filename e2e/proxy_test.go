package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/proxy"
	"github.com/tollgate-go/tollgate/internal/syncbuf"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The keys the SDKs send: nothing the proxy writes may hold them.
const (
	anthropicKey = "sk-ant-e2e-proxy-SECRET-5e1f"
	openAIKey    = "sk-e2e-proxy-openai-SECRET-0c2d"
)

// nodeDir holds package.json and, once `npm ci --prefix e2e/node` ran, the
// SDKs (scripts/test runs it).
const nodeDir = "node"

// requireService skips the test, or fails it when TOLLGATE_REQUIRE_SERVICES=1
// (as scripts/test sets it), when what it needs is not there.
func requireService(t *testing.T, what, why string) {
	t.Helper()
	if os.Getenv("TOLLGATE_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s: required (TOLLGATE_REQUIRE_SERVICES=1): %s", what, why)
	}
	t.Skipf("%s: not available: %s", what, why)
}

// node returns the node binary, with the SDKs installed.
func node(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("node")
	if err != nil {
		requireService(t, "node", "no node in PATH; install Node.js 20+ and run: npm ci --prefix e2e/node")
	}
	for _, pkg := range []string{"@anthropic-ai/sdk", "openai"} {
		if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", pkg, "package.json")); err != nil {
			requireService(t, "the TypeScript SDKs", pkg+" is not installed; run: npm ci --prefix e2e/node")
		}
	}
	return bin
}

var startLine = regexp.MustCompile(`tollgate proxy: listening on (http://127\.0\.0\.1:\d+); `)

// runningProxy is `tollgate proxy` running in this process.
type runningProxy struct {
	URL            string
	stdout, stderr *syncbuf.Buffer
}

// startProxy runs `tollgate proxy` with args (after --listen 127.0.0.1:0) in
// this process until the test ends.
func startProxy(t *testing.T, args ...string) *runningProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &runningProxy{stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}}
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), p.stdout, p.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("the proxy did not stop")
		}
	})
	t.Cleanup(queryClient.CloseIdleConnections)
	deadline := time.After(10 * time.Second)
	for {
		written := p.stdout.Written()
		if m := startLine.FindStringSubmatch(p.stdout.String()); m != nil {
			p.URL = m[1]
			return p
		}
		select {
		case <-written:
		case err := <-done:
			t.Fatalf("the proxy stopped: %v; stderr: %s", err, p.stderr.String())
		case <-deadline:
			t.Fatalf("the proxy did not start; stderr: %s", p.stderr.String())
		}
	}
}

// get fetches a path of the proxy.
func (p *runningProxy) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := queryClient.Get(p.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, b)
	return string(b)
}

// nodeResult is what clients.mjs prints.
type nodeResult struct {
	OK       bool   `json:"ok"`
	Requests int    `json:"requests"` // HTTP requests the SDK sent
	Status   int    `json:"status"`
	Error    string `json:"error"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Text     string `json:"text"`
	Events   []string
	Chunks   int `json:"chunks"`
	Usage    map[string]any
}

// runNode runs one scenario of clients.mjs against the proxy.
func runNode(t *testing.T, bin string, p *runningProxy, scenario string) (nodeResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "clients.mjs", scenario)
	cmd.Dir = nodeDir
	cmd.Env = append(os.Environ(),
		"ANTHROPIC_BASE_URL="+p.URL, "ANTHROPIC_API_KEY="+anthropicKey,
		"OPENAI_BASE_URL="+p.URL+"/v1", "OPENAI_API_KEY="+openAIKey)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r nodeResult
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &r), "node %s: %v\nstdout: %s\nstderr: %s", scenario, err, stdout.String(), stderr.String())
	return r, stderr.String()
}

// The official TypeScript SDKs, with their defaults, through the proxy
// against the fake API: JSON and streams of both, a 529 and a 429 that the
// proxy retries so that the SDK sees one successful request.
func TestProxyTypeScriptSDKs(t *testing.T) {
	bin := node(t)
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	t.Cleanup(api.Close)
	p := startProxy(t, "--anthropic-upstream", api.URL, "--openai-upstream", api.URL)

	for _, tc := range []struct {
		scenario string
		fault    *tollgatetest.Fault
		attempts int // what the fake API saw
	}{
		{scenario: "anthropic-json", attempts: 1},
		{scenario: "anthropic-stream", attempts: 1},
		{scenario: "openai-json", attempts: 1},
		{scenario: "openai-stream", attempts: 1},
		{scenario: "anthropic-json", fault: &tollgatetest.Fault{Status: 529, RetryAfterMS: "20"}, attempts: 2},
		{scenario: "anthropic-stream", fault: &tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "20"}, attempts: 2},
		{scenario: "openai-json", fault: &tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "20"}, attempts: 2},
	} {
		name := tc.scenario
		if tc.fault != nil {
			name += fmt.Sprintf(" after a %d", tc.fault.Status)
			api.Inject(1, *tc.fault)
		}
		before := api.Stats()
		r, stderr := runNode(t, bin, p, tc.scenario)
		seen := api.Stats().Since(before)
		require.True(t, r.OK, "%s: %+v", name, r)
		assert.Equal(t, 1, r.Requests, "%s: the SDK sent one request; the proxy absorbed the rest", name)
		assert.Equal(t, tc.attempts, seen.Requests, "%s: attempts the API saw", name)
		assert.Equal(t, 1, seen.OK, name)
		assert.NotEmpty(t, r.Text, name)
		assert.NotContains(t, stderr, "deprecated", "%s: the model named is current", name)
		switch tc.scenario {
		case "anthropic-json":
			assert.Equal(t, "message", r.Type)
			assert.EqualValues(t, 64, r.Usage["output_tokens"])
		case "anthropic-stream":
			assert.Equal(t, "message_start", r.Events[0])
			assert.Equal(t, "message_stop", r.Events[len(r.Events)-1])
			assert.Contains(t, r.Events, "content_block_delta")
			assert.EqualValues(t, 64, r.Usage["output_tokens"])
		case "openai-json":
			assert.EqualValues(t, 64, r.Usage["completion_tokens"])
		case "openai-stream":
			assert.Greater(t, r.Chunks, 3)
			assert.EqualValues(t, 64, r.Usage["completion_tokens"], "the usage chunk came through")
		}
	}

	// What the proxy shows: both providers' pools, the 429s it absorbed.
	var st struct {
		Keys []struct {
			Provider, Family string
			Counters         struct {
				RateLimited int64 `json:"rate_limited"`
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(p.get(t, "/status.json")), &st))
	limited := map[string]int64{}
	for _, k := range st.Keys {
		limited[k.Provider+"/"+k.Family] = k.Counters.RateLimited
	}
	assert.Equal(t, map[string]int64{"anthropic/claude-sonnet-5": 1, "openai/gpt-5": 1}, limited)
	metrics := p.get(t, "/metrics")
	assert.Regexp(t, `tollgate_rate_limited_total\{.*gen_ai_provider_name="openai"`, metrics)
	everything := p.stdout.String() + p.stderr.String() + p.get(t, "/status") + p.get(t, "/status.json") + metrics
	for _, key := range []string{anthropicKey, openAIKey, "SECRET"} {
		assert.NotContains(t, everything, key)
	}
}
