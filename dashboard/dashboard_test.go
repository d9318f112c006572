package dashboard_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/dashboard"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const secret = "sk-ant-dashboard-test-SECRET-0123456789"

// call sends one Messages call for model through rt and reads the reply.
func call(t *testing.T, rt http.RoundTripper, url, model string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/messages", strings.NewReader(
		`{"model":"`+model+`","max_tokens":64,"messages":[{"role":"user","content":"Hello there"}]}`))
	require.NoError(t, err)
	req.Header.Set("x-api-key", secret)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := rt.RoundTrip(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}

func get(t *testing.T, h http.Handler, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func decodeStatus(t *testing.T, rec *httptest.ResponseRecorder) dashboard.Status {
	t.Helper()
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var st dashboard.Status
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &st), rec.Body.String())
	return st
}

func TestStatusShowsEachKeyWithHistoryAnd429s(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	t.Cleanup(api.Close)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt := tollgate.New(base, tollgate.WithBackoff(time.Millisecond, 2*time.Millisecond))
	other := tollgate.New(base)
	d := dashboard.New(rt, dashboard.WithSource(other), dashboard.WithInterval(10*time.Millisecond), dashboard.WithTitle("fleet <b>"))
	t.Cleanup(d.Close)

	st := decodeStatus(t, get(t, d, "/status.json"))
	assert.Empty(t, st.Keys, "nothing called yet")
	assert.Equal(t, "fleet <b>", st.Title)
	assert.InDelta(t, 0.01, st.IntervalSeconds, 1e-9)

	// A 429 the Transport absorbs (it retries), then a plain call.
	api.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "1"})
	require.Equal(t, http.StatusOK, call(t, rt, api.URL, "claude-sonnet-5"))
	require.Equal(t, http.StatusOK, call(t, rt, api.URL, "claude-sonnet-5-5"))
	require.Equal(t, http.StatusOK, call(t, other, api.URL, "claude-haiku-5-5"))
	called := time.Now().UnixMilli()

	// The sampler keeps going on its own: wait for a few points, the last
	// taken after the calls (on a loaded machine the sampler can fall
	// behind them).
	deadline := time.Now().Add(2 * time.Second)
	for {
		st = decodeStatus(t, get(t, d, "/status?format=json"))
		if len(st.Keys) == 2 {
			h := st.Keys[1].History
			if len(h) >= 3 && h[len(h)-1].Time >= called {
				break
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	require.Len(t, st.Keys, 2, "one row per model family (sonnet-5 and sonnet-5-5 share one)")
	haiku, sonnet := st.Keys[0], st.Keys[1]
	assert.Equal(t, "claude-haiku-5", haiku.Family)
	assert.Equal(t, 1, haiku.Source, "from the second source")
	assert.Equal(t, "claude-sonnet-5", sonnet.Family)
	assert.Equal(t, 0, sonnet.Source)
	assert.Equal(t, "anthropic", sonnet.Provider)
	assert.Len(t, sonnet.Account, 16, "the hash of the key")
	assert.Equal(t, "closed", sonnet.Breaker.State)
	assert.Equal(t, "Tier 1", sonnet.Tier)
	assert.False(t, sonnet.ColdStart)
	assert.Equal(t, int64(1), sonnet.Counters.RateLimited)
	assert.Equal(t, int64(1), sonnet.RecentRateLimited, "the 429 is within the history window")
	require.NotNil(t, sonnet.Last429)
	assert.GreaterOrEqual(t, len(sonnet.History), 3)
	assert.Contains(t, []string{"count_as_produced", "reserve_max_tokens"}, sonnet.Output.Rule)
	assert.NotEmpty(t, sonnet.Output.Source)

	dims := map[string]dashboard.DimensionStatus{}
	for _, dm := range sonnet.Dimensions {
		dims[dm.Name] = dm
	}
	require.Contains(t, dims, "requests")
	assert.Equal(t, int64(50), dims["requests"].Limit)
	assert.Equal(t, "headers", dims["requests"].LimitSource)
	assert.Equal(t, int64(2), dims["requests"].Used, "two settled calls (the 429 gave its request back)")
	assert.InDelta(t, 2.0/50, dims["requests"].Utilization, 1e-9)
	require.NotNil(t, dims["requests"].Remaining)
	assert.Equal(t, int64(30_000), dims["input-tokens"].Limit)
	assert.Equal(t, int64(8_000), dims["output-tokens"].Limit)
	last := sonnet.History[len(sonnet.History)-1]
	assert.InDelta(t, 2.0/50, last.Utilization["requests"], 1e-9)
	var attempts, limited int64
	for _, p := range sonnet.History {
		attempts += p.Attempts
		limited += p.RateLimited
	}
	assert.Equal(t, int64(3), attempts, "the history counts every attempt once")
	assert.Equal(t, int64(1), limited)

	assert.NotContains(t, get(t, d, "/status.json").Body.String(), secret)
}

func TestPage(t *testing.T) {
	d := dashboard.New(tollgate.New(nil), dashboard.WithTitle(`<script>alert(1)</script>`))
	t.Cleanup(d.Close)
	rec := get(t, d, "/status")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	page := rec.Body.String()
	assert.NotContains(t, page, "<script>alert(1)")
	assert.Contains(t, page, "&lt;script&gt;alert(1)&lt;/script&gt;")
	assert.NotRegexp(t, `(?i)<(script|link|img)[^>]+(src|href)=`, page, "no external assets")
	assert.Contains(t, page, `fetch("?format=json"`, "it polls its own URL, wherever it is mounted")

	// The CSP allows exactly the page's inline script and style.
	csp := rec.Header().Get("Content-Security-Policy")
	for _, re := range []string{`(?s)<script>(.*?)</script>`, `(?s)<style>(.*?)</style>`} {
		m := regexp.MustCompile(re).FindStringSubmatch(page)
		require.NotNil(t, m)
		sum := sha256.Sum256([]byte(m[1]))
		assert.Contains(t, csp, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	assert.Contains(t, csp, "default-src 'none'")

	rec = httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/status", nil))
	assert.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
}

// Close stops the sampler (goleak checks no goroutine is left) and the
// handler still answers afterwards; a second Close does nothing.
func TestCloseStopsTheSampler(t *testing.T) {
	d := dashboard.New(tollgate.New(nil), dashboard.WithInterval(time.Millisecond))
	d.Close()
	d.Close()
	st := decodeStatus(t, get(t, d, "/status.json"))
	assert.Empty(t, st.Keys)
	empty := dashboard.New(nil)
	defer empty.Close()
	assert.Empty(t, empty.Status().Keys, "no source, no rows")
}

func TestHistoryIsBounded(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 100_000})
	t.Cleanup(api.Close)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt := tollgate.New(base)
	d := dashboard.New(rt, dashboard.WithInterval(time.Hour), dashboard.WithHistory(time.Hour))
	t.Cleanup(d.Close)
	for i := range dashboard.MaxKeys + 5 {
		call(t, rt, api.URL, "model-"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	st := d.Status()
	assert.Len(t, st.Keys, dashboard.MaxKeys+5, "every key is shown")
	withHistory := 0
	for _, k := range st.Keys {
		if len(k.History) > 0 {
			withHistory++
		}
	}
	assert.Equal(t, dashboard.MaxKeys, withHistory, "history is kept for MaxKeys keys at most")
}

func TestMetrics(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	t.Cleanup(api.Close)
	mp, h, err := dashboard.Metrics()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, mp.Shutdown(context.Background())) })
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt := tollgate.New(base, tollgate.WithMeterProvider(mp))
	require.Equal(t, http.StatusOK, call(t, rt, api.URL, "claude-sonnet-5"))

	rec := get(t, h, "/metrics")
	require.Equal(t, http.StatusOK, rec.Code)
	body := rec.Body.String()
	assert.Contains(t, rec.Header().Get("Content-Type"), "text/plain")
	assert.Regexp(t, `(?m)^tollgate_ratelimit_limit\{.*gen_ai_provider_name="anthropic".*tollgate_model_family="claude-sonnet-5".*tollgate_ratelimit_dimension="requests".*\} 50$`, body)
	assert.Regexp(t, `(?m)^gen_ai_client_token_usage_`, body)
	assert.Regexp(t, `(?m)^tollgate_breaker_state\{.*\} 0$`, body)
	assert.NotContains(t, body, secret)

	// Each call makes a registry of its own: two in one process do not clash.
	mp2, _, err := dashboard.Metrics()
	require.NoError(t, err)
	require.NoError(t, mp2.Shutdown(context.Background()))
}
