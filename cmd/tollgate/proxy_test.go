package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/syncbuf"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// runMainEnv makes the test binary run main with its arguments (TestMain).
const runMainEnv = "TOLLGATE_TEST_RUN_MAIN"

func runMainRequested() bool { return os.Getenv(runMainEnv) == "1" }

// The proxy as its own process: it prints where it listens, passes a stream
// through, and on SIGTERM stops accepting, lets that stream finish and exits
// 0. The upstream holds the stream open until the proxy has said it is
// shutting down, so the call is in flight then. What it writes never holds
// a key.
func TestProxyProcessSIGTERM(t *testing.T) {
	const key = "sk-ant-cmd-test-SECRET-991"
	release := make(chan struct{})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get("x-api-key") != key {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","+
			"\"role\":\"assistant\",\"model\":\"claude-sonnet-5\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n"+
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}))
	t.Cleanup(api.Close)
	dead := tollgatetest.NewServer(tollgatetest.Config{})
	deadURL := dead.URL
	dead.Close() // an OpenAI upstream that refuses connections: its failure is logged

	cmd := exec.Command(os.Args[0], "proxy", "--listen", "127.0.0.1:0", "--anthropic-upstream", api.URL, "--openai-upstream", deadURL,
		"--max-attempts", "1")
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "OTEL_EXPORTER_OTLP_ENDPOINT=")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	out := bufio.NewReader(stdout)
	lines := make(chan string, 4)
	go func() {
		for {
			l, err := out.ReadString('\n')
			if err != nil {
				close(lines)
				exited <- cmd.Wait()
				return
			}
			lines <- l
		}
	}()
	var first string
	select {
	case first = <-lines:
	case <-time.After(10 * time.Second):
		t.Fatalf("the proxy printed nothing; stderr: %s", stderr.String())
	}
	m := regexp.MustCompile(`^tollgate proxy: listening on (http://127\.0\.0\.1:\d+); export ANTHROPIC_BASE_URL=(\S+) OPENAI_BASE_URL=(\S+) `).FindStringSubmatch(first)
	require.NotNil(t, m, first)
	base := m[1]
	require.Equal(t, base+"/v1", m[3])

	// A failed upstream call is logged, without the key.
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-5","messages":[{"role":"user","content":"Hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)

	req, _ = http.NewRequest(http.MethodPost, base+"/v1/messages", strings.NewReader(
		`{"model":"claude-sonnet-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`))
	req.Header.Set("x-api-key", key)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body := bufio.NewReader(resp.Body)
	_, err = body.ReadString('\n')
	require.NoError(t, err)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitFor(t, stderr, regexp.MustCompile(`shutting down; 1 calls in flight`))
	// No new connections, while the stream in flight goes on.
	refuse := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := refuse.Get(base + "/healthz")
		if err != nil {
			break
		}
		_ = r.Body.Close()
		require.False(t, time.Now().After(deadline), "still accepting connections after SIGTERM")
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-exited:
		t.Fatalf("the proxy exited with a call in flight: %v; stderr: %s", err, stderr.String())
	default:
	}
	close(release)
	rest, err := io.ReadAll(body)
	require.NoError(t, err)
	assert.Contains(t, string(rest), "message_stop", "the stream in flight ran to its end")
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status 0; stderr: %s", stderr.String())
		exited <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not exit after SIGTERM")
	}
	assert.Contains(t, stderr.String(), "upstream request failed")
	assert.NotContains(t, first+stderr.String(), key)
	assert.NotContains(t, stderr.String(), "SECRET")
}

// waitFor waits until what b has had written matches re, up to a deadline.
func waitFor(t *testing.T, b *syncbuf.Buffer, re *regexp.Regexp) {
	t.Helper()
	if b.Wait(re, 10*time.Second) == nil {
		t.Fatalf("no %s in %q", re, b.String())
	}
}
