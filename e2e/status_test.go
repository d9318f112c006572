package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/dashboard"
	"github.com/tollgate-go/tollgate/internal/proxy"
	"github.com/tollgate-go/tollgate/internal/redistest"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// screenshotEnv names the variable that makes TestStatusPageInChromium
// write its screenshot to docs/status.png, the one the README shows.
const screenshotEnv = "TOLLGATE_UPDATE_SCREENSHOT"

// chromium returns Debian's headless Chromium (scripts/test installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("TOLLGATE_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if bin, err := exec.LookPath(name); err == nil {
			return bin
		}
	}
	requireService(t, "Chromium", "no chromium in PATH (or TOLLGATE_CHROMIUM); scripts/test installs it: apt-get install chromium")
	return ""
}

// headless runs Chromium on url with args, giving the page's script time to
// fetch and render (virtual time: the page's timers run, no wall-clock wait).
func headless(t *testing.T, bin, target string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000", "--hide-scrollbars"}, args...)
	cmd := exec.CommandContext(ctx, bin, append(all, target)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "chromium: %s", stderr.String())
	return stdout.String()
}

// call makes one Messages call through the proxy with model, and returns
// the status.
func call(t *testing.T, base, key, model string, stream bool) int {
	t.Helper()
	body := `{"model":` + mustJSON(model) + `,"max_tokens":64,"stream":` + map[bool]string{true: "true", false: "false"}[stream] +
		`,"messages":[{"role":"user","content":"Hello there, how are the limits today?"}]}`
	req, err := http.NewRequest(http.MethodPost, base+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("x-api-key", key)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := queryClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The status page, loaded in headless Chromium after its script ran: one
// card per account and model family with its limits, breaker and 429s, and
// a chart; a hostile model name shows as text.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromium(t)
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000,
		OutputAccounting: tollgatetest.CountAsProduced})
	t.Cleanup(api.Close)
	u, err := url.Parse(api.URL)
	require.NoError(t, err)
	p, err := proxy.New(proxy.Config{AnthropicUpstream: u, OpenAIUpstream: u,
		Options:   []tollgate.Option{tollgate.WithBackoff(time.Millisecond, 5*time.Millisecond)},
		Dashboard: []dashboard.Option{dashboard.WithInterval(20 * time.Millisecond), dashboard.WithHistory(time.Minute)}})
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		srv.Close()
		require.NoError(t, p.Close())
	})
	t.Cleanup(queryClient.CloseIdleConnections)

	// Traffic for the page: two accounts, a 429 absorbed.
	for i := range 12 {
		if i == 5 {
			api.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "5"})
		}
		require.Equal(t, http.StatusOK, call(t, srv.URL, anthropicKey, "claude-sonnet-5", i%2 == 0))
		// Spreads the calls over the sampler's points, for the
		// screenshot's chart; nothing below depends on it.
		time.Sleep(25 * time.Millisecond)
	}
	require.Equal(t, http.StatusOK, call(t, srv.URL, "sk-ant-other-SECRET", "claude-haiku-5-5", false))

	// The screenshot the README shows.
	shot := filepath.Join(t.TempDir(), "status.png")
	headless(t, bin, srv.URL+"/status", "--window-size=1280,850", "--screenshot="+shot)
	b, err := os.ReadFile(shot)
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	assert.Equal(t, 1280, img.Bounds().Dx())
	if os.Getenv(screenshotEnv) == "1" {
		require.NoError(t, os.WriteFile(filepath.Join("..", "docs", "status.png"), b, 0o644))
		t.Logf("wrote docs/status.png")
	}

	// A model name made to inject markup: the page shows it as text.
	const hostile = `<img src=x onerror="document.title='pwned'">`
	require.Equal(t, http.StatusOK, call(t, srv.URL, anthropicKey, hostile, false))

	dom := headless(t, bin, srv.URL+"/status", "--dump-dom")
	require.Regexp(t, `<body data-renders="[1-9]`, dom, "the script rendered the data")
	assert.NotContains(t, dom, "Loading the status", "replaced by the rendered cards")
	assert.Contains(t, dom, `data-family="claude-sonnet-5"`)
	assert.Contains(t, dom, `data-family="claude-haiku-5"`)
	sonnet := card(t, dom, "claude-sonnet-5")
	assert.Contains(t, sonnet, `data-breaker="closed"`)
	assert.Contains(t, sonnet, "breaker closed")
	assert.Regexp(t, `<tr data-dimension="requests"><td>requests</td><td class="limit">50<small class="src">headers</small></td><td class="level">\d+</td>`, sonnet)
	assert.Regexp(t, `<tr data-dimension="input-tokens"><td>input-tokens</td><td class="limit">30,000<small`, sonnet)
	assert.Regexp(t, `<tr data-dimension="output-tokens"><td>output-tokens</td><td class="limit">8,000<small`, sonnet)
	assert.Regexp(t, `<div class="stat recent429 hot"><b>1</b><span>429s, last 60 s`, sonnet)
	assert.Contains(t, sonnet, "output count as produced")
	assert.Contains(t, sonnet, "Tier 1")
	assert.Regexp(t, `<polyline [^>]*data-dimension="requests"`, sonnet, "the chart of use")
	assert.Contains(t, sonnet, `class="r429"`, "the 429 on the chart")
	assert.Regexp(t, `<span class="account">account [0-9a-f]{16}</span>`, sonnet)
	assert.Contains(t, dom, "&lt;img src=x onerror=", "the hostile name as text")
	assert.NotContains(t, dom, "<img", "no element made from it")
	assert.Regexp(t, `<title>tollgate proxy</title>`, dom, "the title the data gave, not one a name injected")
	for _, key := range []string{anthropicKey, "SECRET"} {
		assert.NotContains(t, dom, key)
	}

}

// card returns the section of the page for a model family.
func card(t *testing.T, dom, family string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<section class="key"[^>]*data-family="` + regexp.QuoteMeta(family) + `".*?</section>`).FindString(dom)
	require.NotEmpty(t, m, "no card for %s", family)
	return m
}

// Two proxies on one Redis pace one budget: what one spent, the other's
// budget shows before any response could have told it.
func TestProxiesShareABudgetThroughRedis(t *testing.T) {
	addr := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	// An upstream that sends no rate-limit headers: the only way a proxy
	// learns what the other spent is the shared store.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-5","content":[{"type":"text","text":"ok"}],`+
			`"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":2}}`)
	}))
	t.Cleanup(up.Close)
	args := []string{"--anthropic-upstream", up.URL, "--openai-upstream", up.URL, "--redis", "redis://" + addr + "/0",
		"--redis-prefix", prefix, "--rpm", "60", "--itpm", "100000", "--otpm", "100000"}
	a, b := startProxy(t, args...), startProxy(t, args...)
	assert.Contains(t, a.stdout.String(), "budgets shared through Redis at "+addr)

	for range 20 {
		require.Equal(t, http.StatusOK, call(t, a.URL, anthropicKey, "claude-sonnet-5", false))
	}
	require.Equal(t, http.StatusOK, call(t, b.URL, anthropicKey, "claude-sonnet-5", false))
	levelB := requestsLevel(t, b)
	// 60 − 21 sent, plus what refilled meanwhile (1 a second); a budget of
	// its own would show 59.
	assert.Less(t, levelB, 45.0, "B's budget counts A's 20 requests")
	assert.Greater(t, levelB, 30.0)

	require.Equal(t, http.StatusOK, call(t, a.URL, anthropicKey, "claude-sonnet-5", false))
	assert.Less(t, requestsLevel(t, a), levelB, "and A's counts B's")

	// Another key has a budget of its own, in the same Redis.
	require.Equal(t, http.StatusOK, call(t, b.URL, "sk-ant-second-account", "claude-sonnet-5", false))
	st := status(t, b)
	require.Len(t, st.Keys, 2)
	for _, k := range st.Keys {
		assert.False(t, k.Fallback, "Redis answered")
	}
}

func status(t *testing.T, p *runningProxy) dashboard.Status {
	t.Helper()
	var st dashboard.Status
	require.NoError(t, json.Unmarshal([]byte(p.get(t, "/status.json")), &st))
	return st
}

// requestsLevel is the requests bucket's level the first key shows.
func requestsLevel(t *testing.T, p *runningProxy) float64 {
	t.Helper()
	st := status(t, p)
	require.NotEmpty(t, st.Keys)
	for _, d := range st.Keys[0].Dimensions {
		if d.Name == "requests" {
			require.Equal(t, int64(60), d.Limit)
			return d.Level
		}
	}
	t.Fatalf("no requests limit in %+v", st.Keys[0])
	return 0
}
