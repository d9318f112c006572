package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/proxy"
	"github.com/tollgate-go/tollgate/internal/syncbuf"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The keys of the tests: nothing the proxy writes may contain them.
const (
	anthropicKey = "sk-ant-proxy-test-SECRET-4f1d2c"
	openAIKey    = "sk-proxy-test-openai-SECRET-77ab"
)

// rig is a proxy in front of a fake API, both on 127.0.0.1.
type rig struct {
	api   *tollgatetest.Server
	proxy *proxy.Proxy
	srv   *httptest.Server
	logs  *syncbuf.Buffer
	spans *tracetest.InMemoryExporter
}

func newRig(t *testing.T, cfg tollgatetest.Config, opts ...tollgate.Option) *rig {
	t.Helper()
	api := tollgatetest.NewServer(cfg)
	t.Cleanup(api.Close)
	return newRigTo(t, api, api.URL, opts...)
}

// newRigTo puts a proxy in front of upstream (api may be nil).
func newRigTo(t *testing.T, api *tollgatetest.Server, upstream string, opts ...tollgate.Option) *rig {
	t.Helper()
	u, err := url.Parse(upstream)
	require.NoError(t, err)
	r := &rig{api: api, logs: &syncbuf.Buffer{}, spans: tracetest.NewInMemoryExporter()}
	tp := trace.NewTracerProvider(trace.WithSyncer(r.spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	opts = append([]tollgate.Option{tollgate.WithTracerProvider(tp), tollgate.WithBackoff(time.Millisecond, 5*time.Millisecond)}, opts...)
	r.proxy, err = proxy.New(proxy.Config{
		AnthropicUpstream: u,
		OpenAIUpstream:    u,
		MaxBody:           1 << 20,
		Options:           opts,
		Logger:            slog.New(slog.NewTextHandler(r.logs, nil)),
	})
	require.NoError(t, err)
	r.srv = httptest.NewServer(r.proxy)
	t.Cleanup(func() {
		r.srv.Close()
		require.NoError(t, r.proxy.Close())
	})
	return r
}

func anthropicRequest(t *testing.T, base, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("x-api-key", anthropicKey)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	return req
}

func messages(model string, stream bool) string {
	return `{"model":"` + model + `","max_tokens":64,"stream":` + map[bool]string{true: "true", false: "false"}[stream] +
		`,"messages":[{"role":"user","content":"Write a haiku about rate limits."}]}`
}

func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// noSecrets checks that nothing the proxy wrote or serves holds a key.
func (r *rig) noSecrets(t *testing.T) {
	t.Helper()
	var seen strings.Builder
	seen.WriteString(r.logs.String())
	for _, path := range []string{"/metrics", "/status", "/status.json"} {
		resp, body := do(t, must(http.NewRequest(http.MethodGet, r.srv.URL+path, nil)))
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		seen.WriteString(body)
	}
	for _, s := range r.spans.GetSpans() {
		b, err := json.Marshal(s.Attributes)
		require.NoError(t, err)
		seen.Write(b)
		for _, e := range s.Events {
			b, _ := json.Marshal(e.Attributes)
			seen.Write(b)
		}
		seen.WriteString(s.Name + s.Status.Description)
	}
	for _, key := range []string{anthropicKey, openAIKey, "SECRET"} {
		assert.NotContains(t, seen.String(), key)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestAnthropicJSONAndStream(t *testing.T) {
	r := newRig(t, tollgatetest.Config{APIKey: anthropicKey, RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})

	resp, body := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var msg struct {
		Type  string
		Usage struct {
			OutputTokens int `json:"output_tokens"`
		}
	}
	require.NoError(t, json.Unmarshal([]byte(body), &msg))
	assert.Equal(t, "message", msg.Type)
	assert.Equal(t, 64, msg.Usage.OutputTokens)
	assert.NotEmpty(t, resp.Header.Get("anthropic-ratelimit-requests-limit"), "the API's headers come back")

	resp, body = do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", true)))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/event-stream")
	assert.Contains(t, body, "event: message_start")
	assert.True(t, strings.HasSuffix(strings.TrimSpace(body), `data: {"type":"message_stop"}`), body[max(0, len(body)-200):])

	// Both went through the Transport: one pool, its limits learned.
	a, _ := r.proxy.Transports()
	ks, ok := a.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-5"})
	require.True(t, ok)
	assert.Equal(t, int64(2), ks.Counters.Attempts)
	assert.Equal(t, 50, ks.Budget.Limits.RequestsPerMinute)
	r.noSecrets(t)
}

func TestOpenAIRoutes(t *testing.T) {
	r := newRig(t, tollgatetest.Config{APIKey: openAIKey, RequestsPerMinute: 500, TokensPerMinute: 100_000})
	req := must(http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(
		`{"model":"gpt-5","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}`)))
	req.Header.Set("Authorization", "Bearer "+openAIKey)
	resp, body := do(t, req)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.True(t, strings.HasSuffix(strings.TrimSpace(body), "data: [DONE]"))

	_, o := r.proxy.Transports()
	ks, ok := o.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-5"})
	require.True(t, ok, "chat completions go through the OpenAI Transport")
	assert.Equal(t, 100_000, ks.Budget.Limits.TokensPerMinute)
	assert.Equal(t, int64(1), ks.Counters.Attempts)
	r.noSecrets(t)
}

// What the path does not tell, the headers do; an unknown path under /v1/
// is forwarded without tollgate.
func TestRoutesByHeaders(t *testing.T) {
	type seen struct{ path, key, auth string }
	got := make(chan seen, 10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.URL.Path, r.Header.Get("x-api-key"), r.Header.Get("Authorization")}
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"data":[]}`)
	}))
	t.Cleanup(up.Close)
	anthropicUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{"anthropic:" + r.URL.Path, r.Header.Get("x-api-key"), r.Header.Get("Authorization")}
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(anthropicUp.Close)
	p, err := proxy.New(proxy.Config{AnthropicUpstream: must(url.Parse(anthropicUp.URL + "/base")), OpenAIUpstream: must(url.Parse(up.URL))})
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); _ = p.Close() })

	for _, tc := range []struct {
		path    string
		headers map[string]string
		want    seen
	}{
		{"/v1/models", map[string]string{"x-api-key": anthropicKey}, seen{"anthropic:/base/v1/models", anthropicKey, ""}},
		{"/v1/models", map[string]string{"Authorization": "Bearer " + openAIKey}, seen{"/v1/models", "", "Bearer " + openAIKey}},
		{"/v1/files/f1", map[string]string{"anthropic-version": "2023-06-01", "Authorization": "Bearer oauth-token"}, seen{"anthropic:/base/v1/files/f1", "", "Bearer oauth-token"}},
		{"/v1/skills", map[string]string{"x-api-key": anthropicKey}, seen{"anthropic:/base/v1/skills", anthropicKey, ""}},
		{"/v1/audio/speech", map[string]string{"Authorization": "Bearer " + openAIKey}, seen{"/v1/audio/speech", "", "Bearer " + openAIKey}},
		{"/v1/messages/batches", nil, seen{"anthropic:/base/v1/messages/batches", "", ""}},
	} {
		req := must(http.NewRequest(http.MethodGet, srv.URL+tc.path, nil))
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		resp, _ := do(t, req)
		assert.Equal(t, http.StatusOK, resp.StatusCode, tc.path)
		select {
		case s := <-got:
			assert.Equal(t, tc.want, s, "%s %v", tc.path, tc.headers)
		case <-time.After(time.Second):
			t.Fatalf("%s: upstream saw nothing", tc.path)
		}
	}
	a, o := p.Transports()
	for _, ks := range append(a.Snapshot().Keys, o.Snapshot().Keys...) {
		assert.NotContains(t, []string{"skills", "audio"}, ks.Key.Family, "unknown paths bypass tollgate")
	}
	// /v1/models went through the Transports (unpaced by tollgate's table):
	// they counted the attempts.
	assert.NotEmpty(t, a.Snapshot().Keys)
	assert.NotEmpty(t, o.Snapshot().Keys)

	resp, body := do(t, must(http.NewRequest(http.MethodGet, srv.URL+"/nope", nil)))
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, body, "no route for GET /nope")
	resp, body = do(t, must(http.NewRequest(http.MethodGet, srv.URL+"/healthz", nil)))
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok\n", body)
}

// Keys pass untouched (the fake API checks them); a request without one is
// forwarded, and the API's 401 comes back.
func TestKeysPassThroughAndMissingKeyGets401(t *testing.T) {
	r := newRig(t, tollgatetest.Config{APIKey: anthropicKey})
	req := anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false))
	req.Header.Del("x-api-key")
	resp, body := do(t, req)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, body, "authentication_error")
	assert.Equal(t, 1, r.api.Stats().Requests, "forwarded once: a 401 is not retried")

	req = anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false))
	req.Header.Set("x-api-key", "sk-ant-wrong-SECRET")
	resp, _ = do(t, req)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	resp, _ = do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// Each key has a budget of its own: three accounts, none the key.
	a, _ := r.proxy.Transports()
	accounts := map[string]bool{}
	for _, ks := range a.Snapshot().Keys {
		accounts[ks.Key.Account] = true
	}
	assert.Len(t, accounts, 3)
	r.noSecrets(t)
}

func TestRetriedOverloadAndAbsorbed429(t *testing.T) {
	r := newRig(t, tollgatetest.Config{APIKey: anthropicKey, RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000})
	r.api.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "5"})
	r.api.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "5"})
	resp, body := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, 3, r.api.Stats().Requests, "529, 429, then the answer, all within one client call")
}

func TestBodyLimit(t *testing.T) {
	r := newRig(t, tollgatetest.Config{})
	big := `{"model":"claude-sonnet-5","max_tokens":1,"messages":[{"role":"user","content":"` + strings.Repeat("a", 1<<20) + `"}]}`
	resp, body := do(t, anthropicRequest(t, r.srv.URL, big))
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Contains(t, body, `"type":"request_too_large"`)

	// Chunked, with no Content-Length: cut when the limit is passed.
	req := anthropicRequest(t, r.srv.URL, "")
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader(big[:10]), strings.NewReader(big[10:])))
	req.ContentLength = -1
	resp, body = do(t, req)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Contains(t, body, "larger than 1048576 bytes")
	assert.Zero(t, r.api.Stats().Requests, "nothing too large reaches the API")

	// OpenAI's shape for OpenAI routes.
	req = must(http.NewRequest(http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(big)))
	req.Header.Set("Authorization", "Bearer "+openAIKey)
	resp, body = do(t, req)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Contains(t, body, `{"error":{"message":"tollgate proxy: request body larger`)
}

// Each SSE event reaches the client while the upstream is still writing
// the next: the upstream waits for the test to have read the first event.
func TestStreamIsFlushedEventByEvent(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}))
	t.Cleanup(up.Close)
	r := newRigTo(t, nil, up.URL)
	resp, err := http.DefaultClient.Do(anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", true)))
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err, "the first event arrives before the stream ends")
	assert.Equal(t, "event: message_start\n", line)
	close(release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Contains(t, string(rest), "message_stop")
}

// A client that hangs up mid-stream cancels the upstream request, and the
// Transport gives back what the call held.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	r := newRig(t, tollgatetest.Config{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 100_000,
		OutputTokens: 2000, StreamEventDelay: 5 * time.Millisecond})
	body := `{"model":"claude-sonnet-5","max_tokens":4000,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := http.DefaultClient.Do(anthropicRequest(t, r.srv.URL, body).WithContext(ctx))
	require.NoError(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "event: message_start\n", line)
	cancel()
	_ = resp.Body.Close()

	a, _ := r.proxy.Transports()
	deadline := time.Now().Add(2 * time.Second)
	for {
		ks, _ := a.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-5"})
		reserved := 0.0
		for _, d := range ks.Budget.Dimensions {
			reserved += d.Reserved
		}
		if r.api.Stats().InFlight == 0 && ks.Budget.InFlight == 0 && reserved == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the client left: upstream in flight %d, tollgate in flight %d, reserved %v",
				r.api.Stats().InFlight, ks.Budget.InFlight, reserved)
		}
		time.Sleep(5 * time.Millisecond)
	}
	assert.Less(t, r.api.Stats().OutputTokens, 2000, "the stream was cut, not run to its end")
}

// A mid-stream error event reaches the client as the API sent it.
func TestMidStreamErrorReachesClient(t *testing.T) {
	r := newRig(t, tollgatetest.Config{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000})
	r.api.Inject(1, tollgatetest.Fault{MidStreamError: true})
	resp, body := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", true)))
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "event: content_block_delta")
	assert.True(t, strings.HasSuffix(body, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"), body)
	assert.Equal(t, 1, r.api.Stats().Requests, "a stream that started is not retried")
}

// When tollgate will not send (its breaker is open longer than the call can
// wait), the client gets the API's kind of answer, with when to come back.
func TestOpenBreakerAnswersLikeTheAPI(t *testing.T) {
	r := newRig(t, tollgatetest.Config{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000},
		tollgate.WithFailFast(), tollgate.WithBreakerThreshold(1), tollgate.WithMaxAttempts(1), tollgate.WithBackoff(10*time.Second, 20*time.Second))
	r.api.Inject(1, tollgatetest.Fault{Status: 529})
	resp, _ := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	require.Equal(t, 529, resp.StatusCode, "the API's own 529")
	resp, body := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	assert.Equal(t, 529, resp.StatusCode)
	assert.Contains(t, body, `"type":"overloaded_error"`)
	assert.Contains(t, body, "tollgate proxy: ")
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
	assert.Equal(t, 1, r.api.Stats().Requests, "the second call was not sent")
}

func TestUpstreamDown(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	dead := up.URL
	up.Close()
	r := newRigTo(t, nil, dead, tollgate.WithMaxAttempts(2))
	resp, body := do(t, anthropicRequest(t, r.srv.URL, messages("claude-sonnet-5", false)))
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	assert.Contains(t, body, `"type":"api_error"`)
	assert.Contains(t, r.logs.String(), "upstream request failed")
	assert.Contains(t, r.logs.String(), "path=/v1/messages")
	r.noSecrets(t)
}

func TestNewNeedsUpstreams(t *testing.T) {
	_, err := proxy.New(proxy.Config{})
	assert.ErrorContains(t, err, "both upstreams")
}
