package tollgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
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

	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// traced is a Transport on a fake clock whose spans, metrics and usage
// records a test can read.
type traced struct {
	spans   *tracetest.InMemoryExporter
	tp      *sdktrace.TracerProvider
	metrics *sdkmetric.ManualReader
	clk     *fakeclock.Clock
	rt      *Transport

	mu      sync.Mutex
	records []UsageRecord
}

func newTraced(t *testing.T, opts ...Option) *traced {
	t.Helper()
	tr := &traced{spans: tracetest.NewInMemoryExporter(), metrics: sdkmetric.NewManualReader(), clk: fakeclock.New(testEpoch)}
	tr.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(tr.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tr.metrics))
	t.Cleanup(func() {
		_ = tr.tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	opts = append([]Option{
		WithTracerProvider(tr.tp), WithMeterProvider(mp), WithClock(tr.clk), withJitter(fullCeiling),
		WithUsageRecorder(func(_ context.Context, r UsageRecord) {
			tr.mu.Lock()
			tr.records = append(tr.records, r)
			tr.mu.Unlock()
		}),
	}, opts...)
	tr.rt = New(newBase(t), opts...)
	return tr
}

// do sends req, playing the clock through any wait.
func (tr *traced) do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err, _ := drive(tr.clk, func() (*http.Response, error) { return tr.rt.RoundTrip(req) })
	require.NoError(t, err)
	return resp
}

func (tr *traced) usageRecords() []UsageRecord {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]UsageRecord(nil), tr.records...)
}

// ended returns the ended spans: the call's and its attempts', in end order.
func (tr *traced) ended() tracetest.SpanStubs { return tr.spans.GetSpans() }

func (tr *traced) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tr.metrics.Collect(context.Background(), &rm))
	return rm
}

// trCallAndAttempts splits ended spans into the one call span and its attempts.
func trCallAndAttempts(t *testing.T, spans tracetest.SpanStubs) (tracetest.SpanStub, []tracetest.SpanStub) {
	t.Helper()
	var calls, attempts []tracetest.SpanStub
	for _, s := range spans {
		if s.Parent.IsValid() && s.Parent.SpanID() != (trace.SpanID{}) && trHasAttr(s, "tollgate.attempt") {
			attempts = append(attempts, s)
		} else {
			calls = append(calls, s)
		}
	}
	require.Len(t, calls, 1, "one call span")
	return calls[0], attempts
}

func trHasAttr(s tracetest.SpanStub, key attribute.Key) bool {
	_, ok := trAttrOf(s.Attributes, key)
	return ok
}

func trAttrOf(kvs []attribute.KeyValue, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func trAttrs(kvs []attribute.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
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

func TestTraceCallSpanJSON(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	assert.Empty(t, tr.ended(), "no span ends before the body is read")

	_, err := io.ReadAll(resp.Body) // EOF, no Close: the spans end at EOF
	require.NoError(t, err)
	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 1)

	assert.Equal(t, "chat claude-sonnet-4-5", call.Name)
	assert.Equal(t, trace.SpanKindClient, call.SpanKind)
	assert.Equal(t, codes.Unset, call.Status.Code)
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
		"tollgate.attempts":                         int64(1),
		"tollgate.request.id":                       "req_011",
		"tollgate.ratelimit.requests.remaining":     int64(49),
		"tollgate.ratelimit.requests.limit":         int64(50),
		"tollgate.ratelimit.input_tokens.remaining": int64(29000),
		"tollgate.wait.backoff":                     0.0,
		"tollgate.model_family":                     "claude-sonnet-4",
		"tollgate.tier":                             TierCustom,
	} {
		assert.Equal(t, v, got[k], k)
	}
	assert.NotContains(t, got, "error.type")
	assert.NotContains(t, got, "gen_ai.response.time_to_first_chunk", "not a stream")

	a := attempts[0]
	assert.Equal(t, "POST", a.Name)
	assert.Equal(t, trace.SpanKindClient, a.SpanKind)
	assert.Equal(t, call.SpanContext.SpanID(), a.Parent.SpanID(), "the attempt is the call's child")
	assert.Equal(t, call.SpanContext.TraceID(), a.SpanContext.TraceID())
	ga := trAttrs(a.Attributes)
	assert.Equal(t, "POST", ga["http.request.method"])
	assert.Equal(t, int64(200), ga["http.response.status_code"])
	assert.Equal(t, srv.URL+"/v1/messages", ga["url.full"])
	assert.NotContains(t, ga, "http.request.resend_count", "a first attempt is no resend")

	require.NoError(t, resp.Body.Close())
	assert.Len(t, tr.ended(), 2, "Close after EOF ends nothing twice")
	assert.Len(t, tr.usageRecords(), 1, "one usage record per call")
}

func TestTraceStreamEndsAtStreamEnd(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		tr := w.(http.Flusher)
		trOKStream(w)
		tr.Flush()
	})
	tr := newTraced(t)
	req := post(t, context.Background(), srv.URL, trStreamRequest)
	resp := tr.do(t, req)
	tr.clk.Advance(1500 * time.Millisecond) // reading the stream takes time
	readAll(t, resp)

	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 1)
	got := trAttrs(call.Attributes)
	assert.Equal(t, true, got["gen_ai.request.stream"])
	assert.Equal(t, int64(12), got["gen_ai.usage.input_tokens"])
	assert.Equal(t, int64(20), got["gen_ai.usage.output_tokens"], "the final message_delta count")
	assert.Equal(t, []string{"end_turn"}, got["gen_ai.response.finish_reasons"])
	assert.Equal(t, 1.5, got["gen_ai.response.time_to_first_chunk"], "to when the caller got the first bytes")
	assert.Equal(t, 1500*time.Millisecond, call.EndTime.Sub(call.StartTime), "the span covers the stream")
}

func TestTraceEarlyCloseEndsSpans(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKStream(w) })
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trStreamRequest))
	buf := make([]byte, 200)
	_, err := io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())

	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 1)
	assert.NotContains(t, trAttrs(call.Attributes), "error.type", "closing early is the caller's choice, not an error")
	require.Len(t, tr.usageRecords(), 1)
}

func TestTraceRetriedCallHasOneSpanPerAttempt(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("content-type", "application/json")
			w.WriteHeader(529)
			_, _ = io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
			return
		}
		trOKJSON(w)
	})
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	readAll(t, resp)

	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 2)
	for _, a := range attempts {
		assert.Equal(t, call.SpanContext.SpanID(), a.Parent.SpanID())
	}
	first, second := trAttrs(attempts[0].Attributes), trAttrs(attempts[1].Attributes)
	assert.Equal(t, int64(529), first["http.response.status_code"])
	assert.Equal(t, "529", first["error.type"])
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.NotContains(t, first, "http.request.resend_count")
	assert.Equal(t, int64(1), second["http.request.resend_count"])
	assert.Equal(t, int64(200), second["http.response.status_code"])

	got := trAttrs(call.Attributes)
	assert.Equal(t, int64(2), got["tollgate.attempts"])
	assert.Equal(t, (500*time.Millisecond - 1).Seconds(), got["tollgate.wait.backoff"])
	assert.NotContains(t, got, "error.type", "the call succeeded")

	events := map[string]map[string]any{}
	for _, e := range call.Events {
		events[e.Name] = trAttrs(e.Attributes)
	}
	require.Contains(t, events, "tollgate.retry")
	assert.Equal(t, "overloaded", events["tollgate.retry"]["tollgate.retry.reason"])
	assert.Equal(t, int64(1), events["tollgate.retry"]["tollgate.attempt"])
	assert.Equal(t, int64(529), events["tollgate.retry"]["http.response.status_code"])
	assert.Equal(t, (500*time.Millisecond - 1).Seconds(), events["tollgate.retry"]["tollgate.retry.wait"])
	require.Contains(t, events, "tollgate.wait")
	assert.Equal(t, "backoff", events["tollgate.wait"]["tollgate.wait.cause"])

	rec := tr.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, 2, rec[0].Attempts)
	assert.Equal(t, 200, rec[0].Status)

	rm := tr.collect(t)
	assert.Equal(t, map[string]int64{"overloaded": 1}, trCounterBy(t, rm, "tollgate.retries", "tollgate.retry.reason"))
}

func TestTraceGiveUpEndsWithError(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("retry-after", "3600") // longer than WithMaxWait
		w.Header().Set("anthropic-ratelimit-input-tokens-remaining", "0")
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(429)
		_, _ = io.WriteString(w, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`)
	})
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	assert.Equal(t, 429, resp.StatusCode)
	readAll(t, resp)

	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 1)
	assert.Equal(t, "rate_limit_error", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	var stop bool
	for _, e := range call.Events {
		if e.Name == "tollgate.retry.stop" {
			stop = true
			assert.Equal(t, "retry-after exceeds the maximum wait", trAttrs(e.Attributes)["tollgate.retry.reason"])
		}
	}
	assert.True(t, stop, "the refusal to retry is an event")

	rm := tr.collect(t)
	assert.Equal(t, map[string]int64{"input-tokens": 1}, trCounterBy(t, rm, "tollgate.rate_limited", "tollgate.rate_limited.reason"))
	assert.Equal(t, "rate_limit_error", tr.usageRecords()[0].Error)
}

func TestTraceTransportErrorEndsSpans(t *testing.T) {
	srv := newScripted(t, func(int, http.ResponseWriter, *http.Request) {})
	addr := srv.URL
	srv.Close()
	tr := newTraced(t, WithMaxAttempts(1))
	_, err := tr.rt.RoundTrip(post(t, context.Background(), addr, trChatRequest))
	require.Error(t, err)

	call, attempts := trCallAndAttempts(t, tr.ended())
	require.Len(t, attempts, 1)
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, "*net.OpError", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	assert.NotContains(t, trAttrs(attempts[0].Attributes), "http.response.status_code")
	assert.Len(t, tr.usageRecords(), 1)
}

func TestTraceCanceledCall(t *testing.T) {
	srv := newScripted(t, func(int, http.ResponseWriter, *http.Request) {})
	tr := newTraced(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tr.rt.RoundTrip(post(t, ctx, srv.URL, trChatRequest))
	require.ErrorIs(t, err, context.Canceled)
	call, _ := trCallAndAttempts(t, tr.ended())
	assert.Equal(t, "canceled", trAttrs(call.Attributes)["error.type"])
}

func TestTraceStreamErrorEventFailsTheSpan(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, strings.SplitAfter(trSSE, "\n\n")[0]+
			"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
	})
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trStreamRequest))
	readAll(t, resp)
	call, _ := trCallAndAttempts(t, tr.ended())
	assert.Equal(t, "overloaded_error", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, call.Status.Code)
	assert.Equal(t, int64(12), trAttrs(call.Attributes)["gen_ai.usage.input_tokens"])
}

func TestTraceAttemptSpanParentsTheBaseTransport(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var seen trace.SpanContext
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		seen = trace.SpanContextFromContext(req.Context()) // what otelhttp would parent to
		return http.DefaultTransport.RoundTrip(req)
	})
	s := NewState(WithTracerProvider(tp))
	rt := Chain(base, Trace(s), Retry(s), Observe(s))
	resp, err := rt.RoundTrip(post(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	readAll(t, resp)
	_, attempts := trCallAndAttempts(t, exp.GetSpans())
	require.Len(t, attempts, 1)
	assert.Equal(t, attempts[0].SpanContext.SpanID(), seen.SpanID())
}

type trRoundTripper func(*http.Request) (*http.Response, error)

func (f trRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func TestTraceNestsInTheCallersSpan(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	tr := newTraced(t)
	ctx, parent := tr.tp.Tracer("sdk").Start(context.Background(), "anthropic.messages.create")
	resp := tr.do(t, post(t, ctx, srv.URL, trChatRequest))
	readAll(t, resp)
	parent.End()
	call, _ := trCallAndAttempts(t, tr.ended()[:2])
	assert.Equal(t, parent.SpanContext().SpanID(), call.Parent.SpanID())
}

func TestTraceWaitsAreEvents(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	tr := newTraced(t)
	s := tr.rt.State()
	// A layer that waits as the budget and an open breaker would.
	waiter := func(next http.RoundTripper) http.RoundTripper {
		return trRoundTripper(func(req *http.Request) (*http.Response, error) {
			c := callFrom(req.Context())
			c.addWait(func(w *Waits) { w.Budget += 2 * time.Second })
			c.addWait(func(w *Waits) { w.Pause += time.Second })
			s.traceBreakerChange(req.Context(), c.key, "closed", "open", "overloaded")
			return next.RoundTrip(req)
		})
	}
	rt := Chain(newBase(t), Trace(s), Retry(s), waiter, Observe(s))
	resp, err := rt.RoundTrip(post(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	readAll(t, resp)

	call, attempts := trCallAndAttempts(t, tr.ended())
	got := trAttrs(call.Attributes)
	assert.Equal(t, 2.0, got["tollgate.wait.budget"])
	assert.Equal(t, 1.0, got["tollgate.wait.pause"])
	var causes []any
	for _, e := range call.Events {
		if e.Name == "tollgate.wait" {
			causes = append(causes, trAttrs(e.Attributes)["tollgate.wait.cause"])
		}
	}
	assert.Equal(t, []any{"budget", "pause"}, causes)
	require.Len(t, attempts, 1)
	require.Len(t, attempts[0].Events, 1, "the breaker's change is an event on the attempt that moved it")
	e := attempts[0].Events[0]
	assert.Equal(t, "tollgate.breaker.state_change", e.Name)
	assert.Equal(t, "open", trAttrs(e.Attributes)["tollgate.breaker.to"])

	rm := tr.collect(t)
	m := trMetric(t, rm, "tollgate.breaker.state")
	g := m.Data.(metricdata.Gauge[int64])
	require.Len(t, g.DataPoints, 1)
	assert.Equal(t, int64(2), g.DataPoints[0].Value)
	h := trMetric(t, rm, "tollgate.wait.duration").Data.(metricdata.Histogram[float64])
	sums := map[string]float64{}
	for _, dp := range h.DataPoints {
		v, _ := dp.Attributes.Value("tollgate.wait.cause")
		sums[v.AsString()] = dp.Sum
	}
	assert.Equal(t, map[string]float64{"budget": 2, "pause": 1}, sums)
}

func TestTraceMetrics(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	tr.clk.Advance(2 * time.Second)
	readAll(t, resp)

	rm := tr.collect(t)
	usage := trMetric(t, rm, "gen_ai.client.token.usage").Data.(metricdata.Histogram[int64])
	byType := map[string]int64{}
	for _, dp := range usage.DataPoints {
		typ, _ := dp.Attributes.Value("gen_ai.token.type")
		byType[typ.AsString()] = dp.Sum
		model, _ := dp.Attributes.Value("gen_ai.request.model")
		assert.Equal(t, "claude-sonnet-4-5", model.AsString())
	}
	assert.Equal(t, map[string]int64{"input": 18, "output": 7}, byType)

	dur := trMetric(t, rm, "gen_ai.client.operation.duration").Data.(metricdata.Histogram[float64])
	require.Len(t, dur.DataPoints, 1)
	assert.Equal(t, 2.0, dur.DataPoints[0].Sum)

	remaining := trMetric(t, rm, "tollgate.ratelimit.remaining").Data.(metricdata.Gauge[int64])
	byDim := map[string]int64{}
	for _, dp := range remaining.DataPoints {
		d, _ := dp.Attributes.Value("tollgate.ratelimit.dimension")
		byDim[d.AsString()] = dp.Value
	}
	assert.Equal(t, map[string]int64{"requests": 49, "input-tokens": 29000}, byDim)
}

func TestTraceUsageRecord(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	tr.clk.Advance(time.Second)
	readAll(t, resp)
	rec := tr.usageRecords()
	require.Len(t, rec, 1)
	assert.Equal(t, UsageRecord{
		Time: testEpoch.Add(time.Second), Duration: time.Second, RequestID: "req_011",
		Provider: ProviderAnthropic, Operation: "chat", Model: "claude-sonnet-4-5", ResponseModel: "claude-sonnet-4-5-20250929",
		InputTokens: 10, OutputTokens: 7, CacheReadInputTokens: 5, CacheCreationInputTokens: 3,
		Status: 200, Attempts: 1,
	}, rec[0])
	assert.Equal(t, int64(18), rec[0].TotalInputTokens())
}

func TestTraceRecordsNoSecrets(t *testing.T) {
	const key, bearer, cookie, query = "sk-ant-SECRETKEY", "SECRETBEARER", "SECRETCOOKIE", "SECRETQUERY"
	srv := newScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(529)
			return
		}
		w.Header().Set("set-cookie", "session="+cookie)
		trOKJSON(w)
	})
	tr := newTraced(t)
	req := post(t, context.Background(), srv.URL, trChatRequest)
	req.URL.RawQuery = "api-version=1&key=" + query
	req.URL.User = url.UserPassword("user", key)
	req.Header.Set("x-api-key", key)
	req.Header.Set("authorization", "Bearer "+bearer)
	req.Header.Set("cookie", "session="+cookie)
	readAll(t, tr.do(t, req))

	var dump strings.Builder
	for _, s := range tr.ended() {
		fmt.Fprintf(&dump, "%s %v %v %v\n", s.Name, s.Attributes, s.Status, s.Events)
	}
	for _, r := range tr.usageRecords() {
		b, err := json.Marshal(r)
		require.NoError(t, err)
		fmt.Fprintf(&dump, "%s %+v\n", b, r)
	}
	rm := tr.collect(t)
	for _, sm := range rm.ScopeMetrics {
		fmt.Fprintf(&dump, "%+v\n", sm.Metrics)
	}
	out := dump.String()
	for _, secret := range []string{key, bearer, cookie, query, "x-api-key", "authorization", "cookie"} {
		assert.NotContains(t, strings.ToLower(out), strings.ToLower(secret))
	}
	_, attempts := trCallAndAttempts(t, tr.ended())
	u := trAttrs(attempts[0].Attributes)["url.full"].(string)
	assert.Equal(t, "http://REDACTED:REDACTED@"+strings.TrimPrefix(srv.URL, "http://")+"/v1/messages?api-version=1&key=REDACTED", u)
}

func TestTraceErrorMessagesAreRedacted(t *testing.T) {
	err := &url.Error{Op: "Post", URL: "https://u:p@api.example.com/v1?key=SECRET", Err: errors.New("boom")}
	assert.Equal(t, `Post "https://REDACTED:REDACTED@api.example.com/v1?key=REDACTED": boom`, redactedError{err}.Error())
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://api.anthropic.com/v1/messages":                      "https://api.anthropic.com/v1/messages",
		"https://x.openai.azure.com/chat?api-version=2024&api-key=k": "https://x.openai.azure.com/chat?api-key=REDACTED&api-version=2024",
		"https://a.example/v1#frag":                                  "https://a.example/v1",
	} {
		u, err := url.Parse(in)
		require.NoError(t, err)
		assert.Equal(t, want, redactedURL(u), in)
	}
}

func trMetric(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return metricdata.Metrics{}
}

func trCounterBy(t *testing.T, rm metricdata.ResourceMetrics, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, dp := range trMetric(t, rm, name).Data.(metricdata.Sum[int64]).DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.AsString()] += dp.Value
	}
	return out
}

func TestTraceBrokenBodyEndsWithItsError(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Header().Set("content-length", "1000")
		_, _ = io.WriteString(w, trMessageJSON[:40]) // then the connection ends
	})
	tr := newTraced(t)
	resp := tr.do(t, post(t, context.Background(), srv.URL, trChatRequest))
	_, err := io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	call, attempts := trCallAndAttempts(t, tr.ended())
	assert.Equal(t, "unexpected_eof", trAttrs(call.Attributes)["error.type"])
	assert.Equal(t, codes.Error, attempts[0].Status.Code)
	require.NoError(t, resp.Body.Close())
	assert.Len(t, tr.ended(), 2)
	assert.Len(t, tr.usageRecords(), 1)
}

func TestTraceWithoutObserveEndsAtReturn(t *testing.T) {
	srv := newScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { trOKJSON(w) })
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	rt := Chain(newBase(t), Trace(NewState(WithTracerProvider(tp))))
	resp, err := rt.RoundTrip(post(t, context.Background(), srv.URL, trChatRequest))
	require.NoError(t, err)
	require.Len(t, exp.GetSpans(), 1, "nothing reports the end of the body")
	assert.Equal(t, "chat claude-sonnet-4-5", exp.GetSpans()[0].Name)
	readAll(t, resp)
}
