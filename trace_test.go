package tollgate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// trEpoch is where the tests' fake clocks start.
var trEpoch = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// trRig is a Transport on a fake clock whose spans, metrics and usage
// records a test can read.
type trRig struct {
	spans   *tracetest.InMemoryExporter
	tp      *sdktrace.TracerProvider
	mp      *sdkmetric.MeterProvider
	metrics *sdkmetric.ManualReader
	clk     *fakeclock.Clock
	rt      *tollgate.Transport

	mu      sync.Mutex
	records []tollgate.UsageRecord
}

// trNewRig returns a rig whose Transport sends through base (nil: a fresh
// http.Transport whose idle connections are closed when the test ends).
func trNewRig(t *testing.T, base http.RoundTripper, opts ...tollgate.Option) *trRig {
	t.Helper()
	rig := &trRig{spans: tracetest.NewInMemoryExporter(), metrics: sdkmetric.NewManualReader(), clk: fakeclock.New(trEpoch)}
	rig.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(rig.spans))
	rig.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(rig.metrics))
	t.Cleanup(func() {
		_ = rig.tp.Shutdown(context.Background())
		_ = rig.mp.Shutdown(context.Background())
	})
	if base == nil {
		base = trBase(t)
	}
	rig.rt = tollgate.New(base, append(rig.options(), opts...)...)
	return rig
}

// options are the rig's providers, clock and usage recorder, for a State
// made by hand.
func (rig *trRig) options() []tollgate.Option {
	return []tollgate.Option{
		tollgate.WithTracerProvider(rig.tp), tollgate.WithMeterProvider(rig.mp), tollgate.WithClock(rig.clk),
		tollgate.WithUsageRecorder(func(_ context.Context, r tollgate.UsageRecord) {
			rig.mu.Lock()
			rig.records = append(rig.records, r)
			rig.mu.Unlock()
		}),
	}
}

func trBase(t *testing.T) *http.Transport {
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	return base
}

// do sends req, playing the clock through any wait, and returns the waits
// it played.
func (rig *trRig) do(t *testing.T, req *http.Request) (*http.Response, []time.Duration) {
	t.Helper()
	resp, err, waits := driveClock(rig.clk, func() (*http.Response, error) { return rig.rt.RoundTrip(req) })
	require.NoError(t, err)
	return resp, waits
}

func (rig *trRig) usageRecords() []tollgate.UsageRecord {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return append([]tollgate.UsageRecord(nil), rig.records...)
}

// ended returns the ended spans, in end order.
func (rig *trRig) ended() tracetest.SpanStubs { return rig.spans.GetSpans() }

func (rig *trRig) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, rig.metrics.Collect(context.Background(), &rm))
	return rm
}

// trScripted is a test server that answers request n (1-based) with
// script(n, w, r).
func trScripted(t *testing.T, script func(n int, w http.ResponseWriter, r *http.Request)) *httptest.Server {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		script(int(n.Add(1)), w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// trPost is a Messages request to u.
func trPost(t *testing.T, ctx context.Context, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	return req
}

func trReadAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return string(b)
}

// trCallAndAttempts splits ended spans into the one call span and its
// attempts.
func trCallAndAttempts(t *testing.T, spans tracetest.SpanStubs) (tracetest.SpanStub, []tracetest.SpanStub) {
	t.Helper()
	var calls, attempts []tracetest.SpanStub
	for _, s := range spans {
		if s.Parent.IsValid() && trHasAttr(s, "tollgate.attempt") {
			attempts = append(attempts, s)
		} else {
			calls = append(calls, s)
		}
	}
	require.Len(t, calls, 1, "one call span")
	return calls[0], attempts
}

// trCalls groups ended spans by call: each call span with its attempts, in
// the order the calls ended.
func trCalls(t *testing.T, spans tracetest.SpanStubs) [][]tracetest.SpanStub {
	t.Helper()
	var out [][]tracetest.SpanStub
	for _, s := range spans {
		if trHasAttr(s, "tollgate.attempt") {
			continue
		}
		call := []tracetest.SpanStub{s}
		for _, a := range spans {
			if trHasAttr(a, "tollgate.attempt") && a.Parent.SpanID() == s.SpanContext.SpanID() {
				call = append(call, a)
			}
		}
		out = append(out, call)
	}
	return out
}

func trHasAttr(s tracetest.SpanStub, key attribute.Key) bool {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return true
		}
	}
	return false
}

func trAttrs(kvs []attribute.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

// trEvents returns the attributes of s's events of the given name, in order.
func trEvents(s tracetest.SpanStub, name string) []map[string]any {
	var out []map[string]any
	for _, e := range s.Events {
		if e.Name == name {
			out = append(out, trAttrs(e.Attributes))
		}
	}
	return out
}

const trMessageJSON = `{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",` +
	`"content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn",` +
	`"usage":{"input_tokens":10,"cache_read_input_tokens":5,"cache_creation_input_tokens":3,"output_tokens":7}}`

const trChatRequest = `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"Hi"}]}`

const trStreamRequest = `{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`

// trSSE is an Anthropic stream: 12 input tokens, 20 output tokens.
var trSSE = strings.Join([]string{
	"event: message_start",
	`data: {"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}`,
	"",
	"event: content_block_start",
	`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
	"",
	"event: ping",
	`data: {"type":"ping"}`,
	"",
	"event: content_block_delta",
	`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}`,
	"",
	"event: content_block_stop",
	`data: {"type":"content_block_stop","index":0}`,
	"",
	"event: message_delta",
	`data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}`,
	"",
	"event: message_stop",
	`data: {"type":"message_stop"}`,
	"", "",
}, "\n")

func trLimitHeaders(w http.ResponseWriter) {
	w.Header().Set("request-id", "req_011")
	w.Header().Set("anthropic-ratelimit-requests-limit", "50")
	w.Header().Set("anthropic-ratelimit-requests-remaining", "49")
	w.Header().Set("anthropic-ratelimit-input-tokens-limit", "30000")
	w.Header().Set("anthropic-ratelimit-input-tokens-remaining", "29000")
}

func trOKJSON(w http.ResponseWriter) {
	trLimitHeaders(w)
	w.Header().Set("content-type", "application/json")
	_, _ = io.WriteString(w, trMessageJSON)
}

func trOKStream(w http.ResponseWriter) {
	trLimitHeaders(w)
	w.Header().Set("content-type", "text/event-stream")
	_, _ = io.WriteString(w, trSSE)
}

func trAPIError(w http.ResponseWriter, status int, typ string) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"type":"error","error":{"type":%q,"message":"no"}}`, typ)
}

func TestTraceCallSpanJSON(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	assert.Empty(t, rig.ended(), "no span ends before the body is read")

	_, err := io.ReadAll(resp.Body) // EOF, no Close: the spans end at EOF
	require.NoError(t, err)
	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1)

	assert.Equal(t, "chat claude-sonnet-4-5", call.Name)
	assert.Equal(t, trace.SpanKindClient, call.SpanKind)
	assert.Equal(t, codes.Unset, call.Status.Code)
	port, err := strconv.Atoi(strings.TrimPrefix(srv.URL, "http://127.0.0.1:"))
	require.NoError(t, err)
	got := trAttrs(call.Attributes)
	for k, v := range map[string]any{
		"gen_ai.operation.name":                     "chat",
		"gen_ai.provider.name":                      "anthropic",
		"gen_ai.request.model":                      "claude-sonnet-4-5",
		"gen_ai.request.max_tokens":                 int64(100),
		"gen_ai.request.stream":                     false,
		"gen_ai.response.id":                        "msg_01",
		"gen_ai.response.model":                     "claude-sonnet-4-5-20250929",
		"gen_ai.response.finish_reasons":            []string{"end_turn"},
		"gen_ai.usage.input_tokens":                 int64(18), // 10 + 5 cache read + 3 cache creation
		"gen_ai.usage.output_tokens":                int64(7),
		"gen_ai.usage.cache_read.input_tokens":      int64(5),
		"gen_ai.usage.cache_creation.input_tokens":  int64(3),
		"server.address":                            "127.0.0.1",
		"server.port":                               int64(port),
		"http.response.status_code":                 int64(200),
		"tollgate.attempts":                         int64(1),
		"tollgate.request.id":                       "req_011",
		"tollgate.ratelimit.requests.remaining":     int64(49),
		"tollgate.ratelimit.requests.limit":         int64(50),
		"tollgate.ratelimit.input_tokens.remaining": int64(29000),
		"tollgate.ratelimit.input_tokens.limit":     int64(30000),
		"tollgate.wait.backoff":                     0.0,
		"tollgate.wait.budget":                      0.0,
		"tollgate.wait.pause":                       0.0,
		"tollgate.model_family":                     "claude-sonnet-4",
		"tollgate.tier":                             tollgate.TierCustom,
	} {
		assert.Equal(t, v, got[k], k)
	}
	assert.NotContains(t, got, "error.type")
	assert.NotContains(t, got, "gen_ai.response.time_to_first_chunk", "not a stream")
	assert.NotContains(t, got, "tollgate.ratelimit.output_tokens.remaining", "the response said nothing of it")

	a := attempts[0]
	assert.Equal(t, "POST", a.Name)
	assert.Equal(t, trace.SpanKindClient, a.SpanKind)
	assert.Equal(t, call.SpanContext.SpanID(), a.Parent.SpanID(), "the attempt is the call's child")
	assert.Equal(t, call.SpanContext.TraceID(), a.SpanContext.TraceID())
	ga := trAttrs(a.Attributes)
	assert.Equal(t, "POST", ga["http.request.method"])
	assert.Equal(t, int64(200), ga["http.response.status_code"])
	assert.Equal(t, srv.URL+"/v1/messages", ga["url.full"])
	assert.Equal(t, int64(1), ga["tollgate.attempt"])
	assert.Equal(t, "req_011", ga["tollgate.request.id"])
	assert.NotContains(t, ga, "http.request.resend_count", "a first attempt is no resend")
	assert.Equal(t, codes.Unset, a.Status.Code)

	require.NoError(t, resp.Body.Close())
	assert.Len(t, rig.ended(), 2, "Close after EOF ends nothing twice")
	assert.Len(t, rig.usageRecords(), 1, "one usage record per call")
}

func TestTraceStreamEndsAtStreamEnd(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		trOKStream(w)
		w.(http.Flusher).Flush()
	})
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trStreamRequest))
	rig.clk.Advance(1500 * time.Millisecond) // the caller starts reading later
	assert.Empty(t, rig.ended(), "the stream is not over")
	trReadAll(t, resp)

	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1)
	got := trAttrs(call.Attributes)
	assert.Equal(t, "chat claude-sonnet-4-5", call.Name)
	assert.Equal(t, true, got["gen_ai.request.stream"])
	assert.Equal(t, "msg_02", got["gen_ai.response.id"])
	assert.Equal(t, int64(12), got["gen_ai.usage.input_tokens"])
	assert.Equal(t, int64(20), got["gen_ai.usage.output_tokens"], "the final message_delta count")
	assert.Equal(t, []string{"end_turn"}, got["gen_ai.response.finish_reasons"])
	assert.Equal(t, 1.5, got["gen_ai.response.time_to_first_chunk"], "to when the caller got the first bytes")
	assert.Equal(t, 1500*time.Millisecond, call.EndTime.Sub(call.StartTime), "the span covers the stream")

	rm := rig.collect(t)
	ttfc := trMetric(t, rm, "gen_ai.client.operation.time_to_first_chunk").Data.(metricdata.Histogram[float64])
	require.Len(t, ttfc.DataPoints, 1)
	assert.Equal(t, 1.5, ttfc.DataPoints[0].Sum)
	assert.Equal(t, uint64(1), ttfc.DataPoints[0].Count)
}

func TestTraceEarlyCloseEndsSpans(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKStream(w) })
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trStreamRequest))
	buf := make([]byte, 200)
	_, err := io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	assert.Empty(t, rig.ended())
	require.NoError(t, resp.Body.Close())

	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1)
	assert.NotContains(t, trAttrs(call.Attributes), "error.type", "closing early is the caller's choice, not an error")
	assert.Equal(t, codes.Unset, call.Status.Code)
	require.Len(t, rig.usageRecords(), 1)
}

func TestTraceRetriedCallHasOneSpanPerAttempt(t *testing.T) {
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			trAPIError(w, 529, "overloaded_error")
			return
		}
		trOKJSON(w)
	})
	rig := trNewRig(t, nil)
	resp, waits := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	trReadAll(t, resp)
	// The backoff is random (full jitter below the 500 ms base); whatever it
	// was, the span reports the wait the clock served.
	require.Len(t, waits, 1, "one backoff")
	backoff := waits[0]
	assert.Greater(t, backoff, time.Duration(0))
	assert.Less(t, backoff, tollgate.DefaultBackoffBase)

	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 2)
	for _, a := range attempts {
		assert.Equal(t, call.SpanContext.SpanID(), a.Parent.SpanID())
	}
	first, second := trAttrs(attempts[0].Attributes), trAttrs(attempts[1].Attributes)
	assert.Equal(t, int64(529), first["http.response.status_code"])
	assert.Equal(t, "529", first["error.type"])
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.Equal(t, int64(1), first["tollgate.attempt"])
	assert.NotContains(t, first, "http.request.resend_count")
	assert.Equal(t, int64(2), second["tollgate.attempt"])
	assert.Equal(t, int64(1), second["http.request.resend_count"])
	assert.Equal(t, int64(200), second["http.response.status_code"])
	assert.NotContains(t, second, "error.type")
	assert.Equal(t, backoff, attempts[1].StartTime.Sub(attempts[0].EndTime), "the second attempt starts after the backoff")

	got := trAttrs(call.Attributes)
	assert.Equal(t, int64(2), got["tollgate.attempts"])
	assert.Equal(t, backoff.Seconds(), got["tollgate.wait.backoff"])
	assert.NotContains(t, got, "error.type", "the call succeeded")
	assert.Equal(t, codes.Unset, call.Status.Code)

	retries := trEvents(call, "tollgate.retry")
	require.Len(t, retries, 1)
	assert.Equal(t, "overloaded", retries[0]["tollgate.retry.reason"])
	assert.Equal(t, int64(1), retries[0]["tollgate.attempt"])
	assert.Equal(t, int64(529), retries[0]["http.response.status_code"])
	assert.Equal(t, backoff.Seconds(), retries[0]["tollgate.retry.wait"])
	assert.Empty(t, trEvents(call, "tollgate.retry.stop"), "the success is no event")
	wait := trEvents(call, "tollgate.wait")
	require.Len(t, wait, 1)
	assert.Equal(t, "backoff", wait[0]["tollgate.wait.cause"])
	assert.Equal(t, backoff.Seconds(), wait[0]["tollgate.wait.duration"])

	rec := rig.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, 2, rec[0].Attempts)
	assert.Equal(t, 200, rec[0].Status)
	assert.Equal(t, tollgate.Waits{Backoff: backoff}, rec[0].Waits)

	rm := rig.collect(t)
	assert.Equal(t, map[string]int64{"overloaded": 1}, trCounterBy(t, rm, "tollgate.retries", "tollgate.retry.reason"))
	assert.Equal(t, map[string]float64{"backoff": backoff.Seconds()}, trWaitSums(t, rm))
}

func TestTraceGiveUpEndsWithError(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("retry-after", "3600") // longer than WithMaxWait
		w.Header().Set("anthropic-ratelimit-input-tokens-remaining", "0")
		trAPIError(w, 429, "rate_limit_error")
	})
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	assert.Equal(t, 429, resp.StatusCode)
	trReadAll(t, resp)

	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1)
	assert.Equal(t, "rate_limit_error", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, "429", trAttrs(attempts[0].Attributes)["error.type"])
	stops := trEvents(call, "tollgate.retry.stop")
	require.Len(t, stops, 1, "the refusal to retry is an event")
	assert.Equal(t, "retry-after exceeds the maximum wait", stops[0]["tollgate.retry.reason"])
	assert.Equal(t, int64(429), stops[0]["http.response.status_code"])
	assert.Empty(t, trEvents(call, "tollgate.retry"))

	rm := rig.collect(t)
	assert.Equal(t, map[string]int64{"input-tokens": 1}, trCounterBy(t, rm, "tollgate.rate_limited", "tollgate.rate_limited.reason"))
	_, ok := trFindMetric(rm, "tollgate.retries")
	assert.False(t, ok, "nothing was retried")
	rec := rig.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, "rate_limit_error", rec[0].Error)
	assert.Equal(t, 429, rec[0].Status)
}

func TestTraceTransportErrorEndsSpans(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close()
	rig := trNewRig(t, nil, tollgate.WithMaxAttempts(1))
	_, err := rig.rt.RoundTrip(trPost(t, context.Background(), addr, trChatRequest))
	require.Error(t, err)

	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1)
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, "*net.OpError", trAttrs(call.Attributes)["error.type"])
	assert.NotContains(t, trAttrs(call.Attributes), "http.response.status_code")
	assert.Len(t, trEvents(call, "exception"), 1, "the error is recorded")
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.Equal(t, "*net.OpError", trAttrs(attempts[0].Attributes)["error.type"])
	assert.NotContains(t, trAttrs(attempts[0].Attributes), "http.response.status_code")
	rec := rig.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, 0, rec[0].Status)
	assert.Equal(t, "*net.OpError", rec[0].Error)
}

func TestTraceCanceledCall(t *testing.T) {
	srv := trScripted(t, func(int, http.ResponseWriter, *http.Request) { t.Error("a canceled call was sent") })
	rig := trNewRig(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := rig.rt.RoundTrip(trPost(t, ctx, srv.URL, trChatRequest))
	require.ErrorIs(t, err, context.Canceled)
	call, attempts := trCallAndAttempts(t, rig.ended())
	assert.Equal(t, "canceled", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	require.Len(t, attempts, 1)
	assert.Equal(t, "canceled", trAttrs(attempts[0].Attributes)["error.type"], "a refused attempt's span ends with the refusal")
	rec := rig.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, "canceled", rec[0].Error)
}

func TestTraceStreamErrorEventFailsTheSpan(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, strings.SplitAfter(trSSE, "\n\n")[0]+
			"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
	})
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trStreamRequest))
	assert.Contains(t, trReadAll(t, resp), "overloaded_error", "the error reaches the caller unchanged")
	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1, "a stream that started is not retried")
	got := trAttrs(call.Attributes)
	assert.Equal(t, "overloaded_error", got["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, int64(200), got["http.response.status_code"])
	assert.Equal(t, int64(12), got["gen_ai.usage.input_tokens"])
	assert.Equal(t, "overloaded_error", rig.usageRecords()[0].Error)
}

func TestTraceBrokenBodyEndsWithItsError(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Header().Set("content-length", "1000")
		_, _ = io.WriteString(w, trMessageJSON[:40]) // then the connection ends
	})
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	_, err := io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	call, attempts := trCallAndAttempts(t, rig.ended())
	assert.Equal(t, "unexpected_eof", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	require.Len(t, attempts, 1)
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.Equal(t, "unexpected_eof", trAttrs(attempts[0].Attributes)["error.type"])
	require.NoError(t, resp.Body.Close())
	assert.Len(t, rig.ended(), 2)
	assert.Len(t, rig.usageRecords(), 1)
}

type trRoundTripper func(*http.Request) (*http.Response, error)

func (f trRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func TestTraceAttemptSpanParentsTheBaseTransport(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	inner := trBase(t)
	var seen trace.SpanContext
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		seen = trace.SpanContextFromContext(req.Context()) // what otelhttp would parent to
		return inner.RoundTrip(req)
	})
	s := tollgate.NewState(tollgate.WithTracerProvider(tp))
	rt := tollgate.Chain(base, tollgate.Trace(s), tollgate.Retry(s), tollgate.Observe(s))
	resp, err := rt.RoundTrip(trPost(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	trReadAll(t, resp)
	_, attempts := trCallAndAttempts(t, exp.GetSpans())
	require.Len(t, attempts, 1)
	assert.Equal(t, attempts[0].SpanContext.SpanID(), seen.SpanID())
}

func TestTraceNestsInTheCallersSpan(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	rig := trNewRig(t, nil)
	ctx, parent := rig.tp.Tracer("sdk").Start(context.Background(), "anthropic.messages.create")
	resp, _ := rig.do(t, trPost(t, ctx, srv.URL, trChatRequest))
	trReadAll(t, resp)
	call, _ := trCallAndAttempts(t, rig.ended())
	parent.End()
	assert.Equal(t, parent.SpanContext().SpanID(), call.Parent.SpanID())
	assert.Equal(t, parent.SpanContext().TraceID(), call.SpanContext.TraceID())
}

// Trace alone is a full chain's outermost layer: it puts Observe under
// itself, so the span ends with the body and carries the usage. (Before the
// restructure a Trace without Observe ended its span when RoundTrip
// returned.)
func TestTraceAloneStillEndsWithTheBody(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	rt := tollgate.Chain(trBase(t), tollgate.Trace(tollgate.NewState(tollgate.WithTracerProvider(tp))))
	resp, err := rt.RoundTrip(trPost(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	assert.Empty(t, exp.GetSpans(), "the body is not read yet")
	trReadAll(t, resp)
	call, attempts := trCallAndAttempts(t, exp.GetSpans())
	require.Len(t, attempts, 1)
	assert.Equal(t, "chat claude-sonnet-4-5", call.Name)
	assert.Equal(t, int64(18), trAttrs(call.Attributes)["gen_ai.usage.input_tokens"])
}

// A breaker change is an event on the span of the attempt that caused or
// noticed it; the waits of a call are events on its span, in the order the
// layers served them (the Breaker's pause, outside, before the Budget's
// queue), and totals on it; and they are measured by cause.
func TestTraceWaitsAreEvents(t *testing.T) {
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("anthropic-ratelimit-requests-limit", "60")
		w.Header().Set("anthropic-ratelimit-requests-remaining", "58")
		if n == 1 { // every caller must wait a second; this call is not retried
			w.Header().Set("retry-after", "1")
			w.Header().Set("x-should-retry", "false")
			trAPIError(w, 429, "rate_limit_error")
			return
		}
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, trMessageJSON)
	})
	rig := trNewRig(t, nil, tollgate.WithMaxConcurrency(1))
	key := tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}

	// Call A: its headers (a 429 with retry-after) open the breaker; its
	// body, unread, holds the only slot in flight.
	respA, err := rig.rt.RoundTrip(trPost(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	ks, ok := rig.rt.Snapshot().Key(key)
	require.True(t, ok)
	require.Equal(t, tollgate.BreakerOpen, ks.Breaker.State)
	pause := ks.Breaker.OpenUntil.Sub(rig.clk.Now())
	assert.InDelta(t, time.Second, pause, float64(time.Millisecond), "the server's retry-after")

	// Call B waits for the pause, then for A's slot.
	done := make(chan rtResult, 1)
	go func() {
		resp, err := rig.rt.RoundTrip(trPost(t, context.Background(), srv.URL, trChatRequest))
		done <- rtResult{resp, err}
	}()
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second), "B waits for the breaker")
	assert.Equal(t, []time.Duration{pause}, rig.clk.Pending())
	rig.clk.Advance(pause)
	require.Eventually(t, func() bool {
		ks, _ := rig.rt.Snapshot().Key(key)
		return ks.Budget.Waiting == 1
	}, 5*time.Second, time.Millisecond, "B queues for A's slot")
	rig.clk.Advance(2 * time.Second)
	trReadAll(t, respA)
	var b rtResult
	select {
	case b = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("B was not admitted when A's slot was freed")
	}
	require.NoError(t, b.err)
	trReadAll(t, b.resp)

	calls := trCalls(t, rig.ended())
	require.Len(t, calls, 2)
	callA, attemptA := calls[0][0], calls[0][1:]
	callB, attemptB := calls[1][0], calls[1][1:]
	require.Len(t, attemptA, 1)
	require.Len(t, attemptB, 1)

	changes := trEvents(attemptA[0], "tollgate.breaker.state_change")
	require.Len(t, changes, 1, "A's response opened the breaker")
	assert.Equal(t, map[string]any{"tollgate.model_family": "claude-sonnet-4", "tollgate.breaker.from": "closed",
		"tollgate.breaker.to": "open", "tollgate.breaker.reason": "retry-after"}, changes[0])
	assert.Empty(t, trEvents(callA, "tollgate.wait"), "A waited for nothing")

	var moves []string
	for _, e := range trEvents(attemptB[0], "tollgate.breaker.state_change") {
		moves = append(moves, e["tollgate.breaker.from"].(string)+"→"+e["tollgate.breaker.to"].(string))
	}
	assert.Equal(t, []string{"open→half-open", "half-open→closed"}, moves, "B, the probe, saw the breaker through")

	got := trAttrs(callB.Attributes)
	assert.Equal(t, pause.Seconds(), got["tollgate.wait.pause"])
	assert.Equal(t, 2.0, got["tollgate.wait.budget"])
	assert.Equal(t, 0.0, got["tollgate.wait.backoff"])
	var causes []any
	for _, e := range trEvents(callB, "tollgate.wait") {
		causes = append(causes, e["tollgate.wait.cause"])
		assert.Equal(t, int64(1), e["tollgate.attempt"])
	}
	assert.Equal(t, []any{"pause", "budget"}, causes)
	rec := rig.usageRecords()
	require.Len(t, rec, 2)
	assert.Equal(t, tollgate.Waits{Pause: pause, Budget: 2 * time.Second}, rec[1].Waits)

	rm := rig.collect(t)
	assert.Equal(t, map[string]float64{"pause": pause.Seconds(), "budget": 2}, trWaitSums(t, rm))
	assert.Equal(t, int64(0), trGauge(t, rm, "tollgate.breaker.state", "")[""], "closed again")
}

// The rate-limit and breaker gauges are read from the State when metrics
// are collected: each collection sees the latest response's readings, and
// the breaker's state at that moment, whether or not a call ran since.
func TestTraceGaugesReadTheStateWhenCollected(t *testing.T) {
	remaining := []string{"49", "48", "0"}
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("anthropic-ratelimit-requests-limit", "50")
		w.Header().Set("anthropic-ratelimit-requests-remaining", remaining[n-1])
		if n == 1 { // later responses leave the input tokens out
			w.Header().Set("anthropic-ratelimit-input-tokens-limit", "30000")
			w.Header().Set("anthropic-ratelimit-input-tokens-remaining", "29000")
		}
		if n == 3 { // nothing remains: every caller must wait a second
			w.Header().Set("retry-after", "1")
			w.Header().Set("x-should-retry", "false")
			trAPIError(w, 429, "rate_limit_error")
			return
		}
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, trMessageJSON)
	})
	rig := trNewRig(t, nil)
	call := func() {
		resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
		trReadAll(t, resp)
	}

	rm := rig.collect(t)
	for _, name := range []string{"tollgate.ratelimit.remaining", "tollgate.ratelimit.limit", "tollgate.breaker.state"} {
		_, ok := trFindMetric(rm, name)
		assert.False(t, ok, "%s before any response", name)
	}
	_, ok := trFindMetric(rm, "tollgate.store.fallback")
	assert.False(t, ok, "no fallback without WithStore")

	call()
	rm = rig.collect(t)
	assert.Equal(t, map[string]int64{"requests": 49, "input-tokens": 29000}, trGauge(t, rm, "tollgate.ratelimit.remaining", "tollgate.ratelimit.dimension"))
	assert.Equal(t, map[string]int64{"requests": 50, "input-tokens": 30000}, trGauge(t, rm, "tollgate.ratelimit.limit", "tollgate.ratelimit.dimension"))
	assert.Equal(t, map[string]int64{"": 0}, trGauge(t, rm, "tollgate.breaker.state", ""))
	for _, dp := range trMetric(t, rm, "tollgate.ratelimit.remaining").Data.(metricdata.Gauge[int64]).DataPoints {
		provider, _ := dp.Attributes.Value("gen_ai.provider.name")
		family, _ := dp.Attributes.Value("tollgate.model_family")
		assert.Equal(t, "anthropic", provider.AsString())
		assert.Equal(t, "claude-sonnet-4", family.AsString())
	}

	call()
	rm = rig.collect(t)
	assert.Equal(t, map[string]int64{"requests": 48, "input-tokens": 29000}, trGauge(t, rm, "tollgate.ratelimit.remaining", "tollgate.ratelimit.dimension"),
		"the newest reading of each dimension")

	call() // a 429 asks every caller to wait: the breaker opens until then
	ks, ok := rig.rt.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"})
	require.True(t, ok)
	require.Equal(t, tollgate.BreakerOpen, ks.Breaker.State)
	rm = rig.collect(t)
	assert.Equal(t, int64(0), trGauge(t, rm, "tollgate.ratelimit.remaining", "tollgate.ratelimit.dimension")["requests"])
	assert.Equal(t, map[string]int64{"": 2}, trGauge(t, rm, "tollgate.breaker.state", ""), "open")

	rig.clk.Advance(ks.Breaker.OpenUntil.Sub(rig.clk.Now()))
	rm = rig.collect(t)
	assert.Equal(t, map[string]int64{"": 1}, trGauge(t, rm, "tollgate.breaker.state", ""), "half-open once the pause is over, with no call in between")
}

// trStore is a Store that fails while failing is set and otherwise keeps
// its buckets in memory.
type trStore struct {
	mem     tollgate.Store
	failing atomic.Bool
}

var errTrStoreDown = errors.New("store down")

func (s *trStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	if s.failing.Load() {
		return tollgate.Admitted{}, errTrStoreDown
	}
	return s.mem.Admit(ctx, name, a)
}

func (s *trStore) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	if s.failing.Load() {
		return tollgate.Levels{}, errTrStoreDown
	}
	return s.mem.Settle(ctx, name, st)
}

func (s *trStore) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	if s.failing.Load() {
		return errTrStoreDown
	}
	return s.mem.Pause(ctx, name, d, reason)
}

func TestTraceStoreFallbackGauge(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	store := &trStore{}
	rig := trNewRig(t, nil, tollgate.WithStore(store), tollgate.WithStoreFallback(0.5, time.Second),
		tollgate.WithLogger(slog.New(slog.DiscardHandler)))
	store.mem = tollgate.NewMemoryStore(rig.clk)
	call := func() {
		resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
		trReadAll(t, resp)
	}
	fallback := func() int64 {
		return trGauge(t, rig.collect(t), "tollgate.store.fallback", "")[""]
	}

	assert.Equal(t, int64(0), fallback(), "the store has not failed")
	store.failing.Store(true)
	call()
	assert.Equal(t, int64(1), fallback(), "pacing locally")
	store.failing.Store(false)
	assert.Equal(t, int64(1), fallback(), "until the store is tried again")
	rig.clk.Advance(time.Second)
	call()
	assert.Equal(t, int64(0), fallback(), "the store answers again")
}

// Spans are named and attributed by the provider and the GenAI operation
// the request's path (else its anthropic-version header, else its host)
// tells; a request that is no GenAI operation gets an HTTP client span and
// no GenAI metrics.
func TestTraceClassifiesProviderAndOperation(t *testing.T) {
	for _, tc := range []struct {
		name, method, url string
		header            http.Header
		provider, op      string
	}{
		{"anthropic messages", "POST", "https://api.anthropic.com/v1/messages", nil, "anthropic", "chat"},
		{"anthropic count_tokens", "POST", "https://api.anthropic.com/v1/messages/count_tokens", nil, "anthropic", "count_tokens"},
		{"openai chat", "POST", "https://api.openai.com/v1/chat/completions", nil, "openai", "chat"},
		{"trailing slash", "POST", "https://api.openai.com/v1/chat/completions/", nil, "openai", "chat"},
		{"openai responses", "POST", "https://api.openai.com/v1/responses", nil, "openai", "chat"},
		{"openai embeddings", "POST", "https://api.openai.com/v1/embeddings", nil, "openai", "embeddings"},
		{"openai legacy completions", "POST", "https://api.openai.com/v1/completions", nil, "openai", ""},
		{"anthropic-version header", "POST", "https://llm-gateway.internal/v1/chat/completions",
			http.Header{"Anthropic-Version": {"2023-06-01"}}, "anthropic", "chat"},
		{"messages behind a gateway", "POST", "https://gateway.example/anthropic/v1/messages", nil, "anthropic", "chat"},
		{"unknown path on an anthropic host", "GET", "https://api.anthropic.com/v1/models", nil, "anthropic", ""},
		{"host case is ignored", "GET", "https://API.Anthropic.COM/v1/models", nil, "anthropic", ""},
		{"unknown path elsewhere", "POST", "https://example.com/v1/generate", nil, "openai", ""},
		{"assistants thread messages", "POST", "https://api.openai.com/v1/threads/t_1/messages", nil, "openai", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
				return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
					Body: io.NopCloser(strings.NewReader(`{}`)), Request: req}, nil
			})
			rig := trNewRig(t, base)
			req, err := http.NewRequest(tc.method, tc.url, strings.NewReader(`{"model":"m-1","max_tokens":5}`))
			require.NoError(t, err)
			for k, v := range tc.header {
				req.Header[k] = v
			}
			resp, _ := rig.do(t, req)
			trReadAll(t, resp)

			call, _ := trCallAndAttempts(t, rig.ended())
			got := trAttrs(call.Attributes)
			assert.Equal(t, tc.provider, got["gen_ai.provider.name"])
			rec := rig.usageRecords()
			require.Len(t, rec, 1)
			assert.Equal(t, tollgate.Provider(tc.provider), rec[0].Provider)
			assert.Equal(t, tc.op, rec[0].Operation)
			_, measured := trFindMetric(rig.collect(t), "gen_ai.client.operation.duration")
			if tc.op == "" {
				assert.Equal(t, tc.method, call.Name, "an HTTP client span")
				assert.Equal(t, tc.method, got["http.request.method"])
				assert.NotContains(t, got, "gen_ai.operation.name")
				assert.NotContains(t, got, "gen_ai.request.model")
				assert.False(t, measured, "no GenAI metrics for what is no GenAI operation")
				return
			}
			assert.Equal(t, tc.op+" m-1", call.Name)
			assert.Equal(t, tc.op, got["gen_ai.operation.name"])
			assert.Equal(t, "m-1", got["gen_ai.request.model"])
			assert.True(t, measured)
		})
	}
}

func TestTraceMetrics(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	rig.clk.Advance(2 * time.Second)
	trReadAll(t, resp)

	rm := rig.collect(t)
	usage := trMetric(t, rm, "gen_ai.client.token.usage").Data.(metricdata.Histogram[int64])
	byType := map[string]int64{}
	for _, dp := range usage.DataPoints {
		typ, _ := dp.Attributes.Value("gen_ai.token.type")
		byType[typ.AsString()] = dp.Sum
		model, _ := dp.Attributes.Value("gen_ai.request.model")
		assert.Equal(t, "claude-sonnet-4-5", model.AsString())
		responseModel, _ := dp.Attributes.Value("gen_ai.response.model")
		assert.Equal(t, "claude-sonnet-4-5-20250929", responseModel.AsString())
	}
	assert.Equal(t, map[string]int64{"input": 18, "output": 7}, byType)

	dur := trMetric(t, rm, "gen_ai.client.operation.duration").Data.(metricdata.Histogram[float64])
	require.Len(t, dur.DataPoints, 1)
	assert.Equal(t, 2.0, dur.DataPoints[0].Sum)
	_, hasError := dur.DataPoints[0].Attributes.Value("error.type")
	assert.False(t, hasError)
	_, ok := trFindMetric(rm, "gen_ai.client.operation.time_to_first_chunk")
	assert.False(t, ok, "not a stream")

	assert.Equal(t, map[string]int64{"requests": 49, "input-tokens": 29000},
		trGauge(t, rm, "tollgate.ratelimit.remaining", "tollgate.ratelimit.dimension"))
}

// The GenAI metrics are recorded with attribute sets cached by the shape of
// a call: calls of one shape add up in one data point, and calls that differ
// in model or error each get their own, with their own attributes.
func TestTraceMetricsByShapeOfCall(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("answer") {
		case "invalid":
			trAPIError(w, 400, "invalid_request_error")
		case "stream-error":
			w.Header().Set("content-type", "text/event-stream")
			_, _ = io.WriteString(w, strings.SplitAfter(trSSE, "\n\n")[0]+
				"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
		case "haiku":
			w.Header().Set("content-type", "application/json")
			_, _ = io.WriteString(w, strings.Replace(trMessageJSON, "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", 1))
		default:
			trOKJSON(w)
		}
	})
	rig := trNewRig(t, nil)
	call := func(answer, body string, d time.Duration) {
		req := trPost(t, context.Background(), srv.URL, body)
		req.URL.RawQuery = "answer=" + answer
		resp, _ := rig.do(t, req)
		rig.clk.Advance(d)
		trReadAll(t, resp)
	}
	haiku := strings.Replace(trChatRequest, "claude-sonnet-4-5", "claude-haiku-4-5", 1)
	// A stream that fails names its model as a success does: only its
	// error tells its shape apart.
	call("stream-error", trStreamRequest, 500*time.Millisecond)
	call("ok", trChatRequest, time.Second)
	call("ok", trChatRequest, 3*time.Second)
	call("invalid", trChatRequest, 100*time.Millisecond)
	call("haiku", haiku, 2*time.Second)
	call("invalid", haiku, 200*time.Millisecond)

	type point struct {
		model, responseModel, errorType string
	}
	of := func(set attribute.Set) point {
		model, _ := set.Value("gen_ai.request.model")
		responseModel, _ := set.Value("gen_ai.response.model")
		errorType, _ := set.Value("error.type")
		op, _ := set.Value("gen_ai.operation.name")
		provider, _ := set.Value("gen_ai.provider.name")
		assert.Equal(t, "chat", op.AsString())
		assert.Equal(t, "anthropic", provider.AsString())
		return point{model.AsString(), responseModel.AsString(), errorType.AsString()}
	}
	rm := rig.collect(t)
	type durations struct {
		count uint64
		sum   float64
	}
	byShape := map[point]durations{}
	for _, dp := range trMetric(t, rm, "gen_ai.client.operation.duration").Data.(metricdata.Histogram[float64]).DataPoints {
		byShape[of(dp.Attributes)] = durations{dp.Count, dp.Sum}
	}
	assert.Equal(t, map[point]durations{
		{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", ""}:                 {2, 4},
		{"claude-sonnet-4-5", "", "invalid_request_error"}:                      {1, 0.1},
		{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "overloaded_error"}: {1, 0.5},
		{"claude-haiku-4-5", "claude-haiku-4-5-20251001", ""}:                   {1, 2},
		{"claude-haiku-4-5", "", "invalid_request_error"}:                       {1, 0.2},
	}, byShape)

	type tokens struct {
		point
		typ string
	}
	byType := map[tokens]int64{}
	for _, dp := range trMetric(t, rm, "gen_ai.client.token.usage").Data.(metricdata.Histogram[int64]).DataPoints {
		typ, _ := dp.Attributes.Value("gen_ai.token.type")
		_, hasError := dp.Attributes.Value("error.type")
		assert.False(t, hasError, "token usage carries no error.type")
		byType[tokens{of(dp.Attributes), typ.AsString()}] = dp.Sum
	}
	assert.Equal(t, map[tokens]int64{
		{point{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", ""}, "input"}:  36 + 12, // the failed stream's too
		{point{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", ""}, "output"}: 14 + 1,
		{point{"claude-haiku-4-5", "claude-haiku-4-5-20251001", ""}, "input"}:    18,
		{point{"claude-haiku-4-5", "claude-haiku-4-5-20251001", ""}, "output"}:   7,
	}, byType, "the error responses reported no usage")
}

func TestTraceUsageRecord(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	rig := trNewRig(t, nil)
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	rig.clk.Advance(time.Second)
	assert.Empty(t, rig.usageRecords(), "the call is not over")
	trReadAll(t, resp)
	rec := rig.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, tollgate.UsageRecord{
		Time: trEpoch.Add(time.Second), Duration: time.Second, RequestID: "req_011",
		Provider: tollgate.ProviderAnthropic, Operation: "chat", Model: "claude-sonnet-4-5", ResponseModel: "claude-sonnet-4-5-20250929",
		InputTokens: 10, OutputTokens: 7, CacheReadInputTokens: 5, CacheCreationInputTokens: 3,
		Status: 200, Attempts: 1,
	}, rec[0])
	assert.Equal(t, int64(18), rec[0].TotalInputTokens())
}

func TestTraceUsageRecorderGetsTheCallsContext(t *testing.T) {
	srv := trScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	rig := trNewRig(t, nil)
	type ctxKey struct{}
	var spanOf, value any
	s := tollgate.NewState(append(rig.options(), tollgate.WithUsageRecorder(func(ctx context.Context, _ tollgate.UsageRecord) {
		spanOf, value = trace.SpanContextFromContext(ctx).SpanID(), ctx.Value(ctxKey{})
	}))...)
	rt := tollgate.Chain(trBase(t), tollgate.Trace(s))
	ctx := context.WithValue(context.Background(), ctxKey{}, "mine")
	resp, err := rt.RoundTrip(trPost(t, ctx, srv.URL, trChatRequest))
	require.NoError(t, err)
	trReadAll(t, resp)
	call, _ := trCallAndAttempts(t, rig.ended())
	assert.Equal(t, call.SpanContext.SpanID(), spanOf, "the context carries the call's span")
	assert.Equal(t, "mine", value, "and the caller's values")
}

func TestTraceRecordsNoSecrets(t *testing.T) {
	const key, bearer, cookie, query = "sk-ant-SECRETKEY", "SECRETBEARER", "SECRETCOOKIE", "SECRETQUERY"
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(529)
			return
		}
		w.Header().Set("set-cookie", "session="+cookie)
		trOKJSON(w)
	})
	rig := trNewRig(t, nil)
	req := trPost(t, context.Background(), srv.URL, trChatRequest)
	req.URL.RawQuery = "api-version=1&key=" + query
	req.URL.User = url.UserPassword("user", key)
	req.Header.Set("x-api-key", key)
	req.Header.Set("authorization", "Bearer "+bearer)
	req.Header.Set("cookie", "session="+cookie)
	resp, _ := rig.do(t, req)
	trReadAll(t, resp)

	var dump strings.Builder
	for _, s := range rig.ended() {
		fmt.Fprintf(&dump, "%s %v %v %v\n", s.Name, s.Attributes, s.Status, s.Events)
	}
	for _, r := range rig.usageRecords() {
		b, err := json.Marshal(r)
		require.NoError(t, err)
		fmt.Fprintf(&dump, "%s %+v\n", b, r)
	}
	rm := rig.collect(t)
	for _, sm := range rm.ScopeMetrics {
		fmt.Fprintf(&dump, "%+v\n", sm.Metrics)
	}
	fmt.Fprintf(&dump, "%+v\n", rig.rt.Snapshot())
	out := strings.ToLower(dump.String())
	for _, secret := range []string{key, bearer, cookie, query, "x-api-key", "authorization", "cookie"} {
		assert.NotContains(t, out, strings.ToLower(secret))
	}
	_, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 2)
	for _, a := range attempts {
		assert.Equal(t, "http://REDACTED:REDACTED@"+strings.TrimPrefix(srv.URL, "http://")+"/v1/messages?api-version=1&key=REDACTED",
			trAttrs(a.Attributes)["url.full"])
	}
}

// url.full keeps the parameters whose values are no secret, and nothing
// else of the query, the user information or the fragment.
func TestTraceRedactsURLs(t *testing.T) {
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
	})
	for in, want := range map[string]string{
		"https://api.anthropic.com/v1/messages":                                "https://api.anthropic.com/v1/messages",
		"https://x.openai.azure.com/chat?api-version=2024&api-key=k":           "https://x.openai.azure.com/chat?api-key=REDACTED&api-version=2024",
		"https://a.example/v1#frag":                                            "https://a.example/v1",
		"https://a.example/v1?beta=true&beta=tools&token=a&token=b":            "https://a.example/v1?beta=true&beta=tools&token=REDACTED&token=REDACTED",
		"https://me@a.example:8443/v1/messages?x=1":                            "https://REDACTED:REDACTED@a.example:8443/v1/messages?x=REDACTED",
		"https://gateway.example/v1/chat/completions?api-version=2024-10-21#x": "https://gateway.example/v1/chat/completions?api-version=2024-10-21",
	} {
		t.Run(in, func(t *testing.T) {
			rig := trNewRig(t, base)
			req, err := http.NewRequest(http.MethodGet, in, nil)
			require.NoError(t, err)
			resp, _ := rig.do(t, req)
			trReadAll(t, resp)
			_, attempts := trCallAndAttempts(t, rig.ended())
			require.Len(t, attempts, 1)
			assert.Equal(t, want, trAttrs(attempts[0].Attributes)["url.full"])
		})
	}
}

// An error that names a URL is recorded on the span with the URL redacted.
func TestTraceErrorMessagesAreRedacted(t *testing.T) {
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		return nil, &url.Error{Op: "Post", URL: "https://u:p@api.example.com/v1?key=SECRET", Err: errors.New("boom")}
	})
	rig := trNewRig(t, base, tollgate.WithMaxAttempts(1))
	_, err := rig.rt.RoundTrip(trPost(t, context.Background(), "https://api.example.com", trChatRequest))
	require.Error(t, err)
	call, _ := trCallAndAttempts(t, rig.ended())
	exceptions := trEvents(call, "exception")
	require.Len(t, exceptions, 1)
	assert.Equal(t, `Post "https://REDACTED:REDACTED@api.example.com/v1?key=REDACTED": boom`, exceptions[0]["exception.message"])
	assert.NotContains(t, fmt.Sprint(call.Events, call.Attributes, call.Status), "SECRET")
}

// An attempt the Breaker refuses without sending it completes: its span
// and the call's end with the refusal, and the call is recorded.
func TestTraceRefusedAttemptEndsItsSpan(t *testing.T) {
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("anthropic-ratelimit-requests-limit", "50")
		w.Header().Set("anthropic-ratelimit-requests-remaining", "0")
		w.Header().Set("retry-after", "1")
		w.Header().Set("x-should-retry", "false")
		trAPIError(w, 429, "rate_limit_error")
	})
	rig := trNewRig(t, nil, tollgate.WithFailFast())
	resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
	trReadAll(t, resp) // a 429 asks every caller to wait: the breaker opens
	rig.spans.Reset()

	_, err := rig.rt.RoundTrip(trPost(t, context.Background(), srv.URL, trChatRequest))
	require.ErrorIs(t, err, tollgate.ErrOpen)
	call, attempts := trCallAndAttempts(t, rig.ended())
	require.Len(t, attempts, 1, "an open breaker is not retried")
	assert.Equal(t, "circuit_open", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, "circuit_open", trAttrs(attempts[0].Attributes)["error.type"])
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.NotContains(t, trAttrs(attempts[0].Attributes), "http.response.status_code")
	rec := rig.usageRecords()
	require.Len(t, rec, 2)
	assert.Equal(t, "circuit_open", rec[1].Error)
	assert.Equal(t, 1, rec[1].Attempts)
	assert.Equal(t, 0, rec[1].Status)
}

// A call the Breaker answers with the server's own 429 (the server asked
// every caller to wait longer than this one may) is traced as that answer.
func TestTraceReplayed429(t *testing.T) {
	srv := trScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("request-id", "req_429")
		w.Header().Set("retry-after", "3600")
		trAPIError(w, 429, "rate_limit_error")
	})
	rig := trNewRig(t, nil)
	for range 2 {
		resp, _ := rig.do(t, trPost(t, context.Background(), srv.URL, trChatRequest))
		assert.Equal(t, 429, resp.StatusCode)
		trReadAll(t, resp)
	}
	calls := trCalls(t, rig.ended())
	require.Len(t, calls, 2)
	replayed := calls[1]
	require.Len(t, replayed, 2, "one attempt, never sent")
	got := trAttrs(replayed[0].Attributes)
	assert.Equal(t, int64(429), got["http.response.status_code"])
	assert.Equal(t, "rate_limit_error", got["error.type"], "the server's error, as for the first call")
	assert.Equal(t, codes.Error, replayed[0].Status.Code)
	assert.Equal(t, int64(429), trAttrs(replayed[1].Attributes)["http.response.status_code"])
	rec := rig.usageRecords()
	require.Len(t, rec, 2)
	assert.Equal(t, rec[0].Error, rec[1].Error)
	assert.Equal(t, 429, rec[1].Status)
}

func trFindMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func trMetric(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	m, ok := trFindMetric(rm, name)
	require.True(t, ok, "no metric %s", name)
	return m
}

// trCounterBy sums an Int64 counter's data points by the value of key.
func trCounterBy(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, dp := range trMetric(t, rm, name).Data.(metricdata.Sum[int64]).DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.AsString()] += dp.Value
	}
	return out
}

// trGauge returns an Int64 gauge's data points by the value of key (by ""
// when key is empty); a key seen twice fails the test.
func trGauge(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, dp := range trMetric(t, rm, name).Data.(metricdata.Gauge[int64]).DataPoints {
		var k string
		if key != "" {
			v, _ := dp.Attributes.Value(key)
			k = v.AsString()
		}
		_, dup := out[k]
		require.False(t, dup, "%s: two data points for %q", name, k)
		out[k] = dp.Value
	}
	return out
}

// trWaitSums returns the sums of tollgate.wait.duration by cause.
func trWaitSums(t *testing.T, rm metricdata.ResourceMetrics) map[string]float64 {
	t.Helper()
	sums := map[string]float64{}
	for _, dp := range trMetric(t, rm, "tollgate.wait.duration").Data.(metricdata.Histogram[float64]).DataPoints {
		v, _ := dp.Attributes.Value("tollgate.wait.cause")
		sums[v.AsString()] += dp.Sum
	}
	return sums
}
