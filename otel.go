package tollgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/semconv/v1.41.0/genaiconv"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names tollgate's tracer and meter.
const instrumentationName = "github.com/tollgate-go/tollgate"

// Trace returns the outermost layer, which records each logical call (all
// its attempts) with OpenTelemetry, following the GenAI semantic conventions
// (semconv v1.41.0).
//
// Each call gets a CLIENT span named "{gen_ai.operation.name}
// {gen_ai.request.model}" (e.g. "chat claude-sonnet-4-5"), with the
// request's provider, model, max_tokens and stream flag, the server address
// and port, and, when it ends, the response id, model and finish reasons, the
// token usage (for Anthropic gen_ai.usage.input_tokens is input + cache read
// + cache creation, as the conventions say), error.type on failure and, for
// streams, gen_ai.response.time_to_first_chunk (measured to when the first
// bytes of the stream reached the caller). tollgate's own attributes carry the prefix
// "tollgate.": the attempts made, the time waited for the budget, for an
// open breaker and in backoff, the request id, and the remaining and limit of
// every rate-limit dimension the last response reported.
//
// Each attempt gets a child CLIENT span named after the HTTP method, with the
// HTTP client conventions (http.request.method, url.full with query values
// redacted, http.request.resend_count, http.response.status_code). The
// attempt's span is in the context of the request the base transport
// receives, so an instrumented base transport (otelhttp) nests under it.
// Retries, retry refusals and waits are span events on the call's span.
//
// The call's span ends when the response body reaches EOF or is closed, or
// when the call fails: for a stream, when the stream ends, with the usage its
// events reported. The layer does not wrap the body; it acts on the
// completion Observe records, so a chain without Observe ends the span when
// the response is returned. Request and response content is never recorded,
// nor are headers other than the rate-limit ones: x-api-key, authorization
// and cookies never reach a span.
//
// Metrics: gen_ai.client.token.usage, gen_ai.client.operation.duration and
// gen_ai.client.operation.time_to_first_chunk, and tollgate.ratelimit.remaining
// and tollgate.ratelimit.limit (gauges per dimension), tollgate.wait.duration
// (histogram by cause: budget, pause, backoff), tollgate.retries (counter by
// reason), tollgate.rate_limited (429 responses, by the limit that was
// exhausted) and tollgate.breaker.state (gauge: 0 closed, 1 half-open, 2 open).
//
// The spans and metrics go to WithTracerProvider's and WithMeterProvider's
// providers, by default the global ones. The usage record of each call goes
// to WithUsageRecorder's function. A nil s gets a State of its own with
// default options.
func Trace(s *State) Middleware {
	s = orNewState(s)
	tel := s.telemetry()
	return func(next http.RoundTripper) http.RoundTripper {
		return &traceLayer{state: s, tel: tel, next: orDefault(next)}
	}
}

// WithTracerProvider sets the TracerProvider of the Trace layer's spans. A
// nil provider, or no option, means otel.GetTracerProvider().
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.telemetry.tracerProvider = tp }
}

// WithMeterProvider sets the MeterProvider of the Trace layer's metrics. A
// nil provider, or no option, means otel.GetMeterProvider().
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.telemetry.meterProvider = mp }
}

// WithUsageRecorder makes the Trace layer call record exactly once per call,
// when the call ends (see Trace), with what it cost. ctx is the call's
// request context, which carries its span. record is called on the
// goroutine that ended the call (usually the one reading or closing the
// response body), so it must be quick and safe for concurrent use. A nil
// record records nothing.
func WithUsageRecorder(record func(ctx context.Context, rec UsageRecord)) Option {
	return func(c *config) { c.telemetry.recordUsage = record }
}

// telemetry is the Trace layer's configuration and instruments for one State.
type telemetry struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	recordUsage    func(context.Context, UsageRecord)

	once   sync.Once
	tracer trace.Tracer
	inst   instruments
}

type instruments struct {
	tokenUsage  genaiconv.ClientTokenUsage
	duration    genaiconv.ClientOperationDuration
	firstChunk  genaiconv.ClientOperationTimeToFirstChunk
	remaining   metric.Int64Gauge
	limit       metric.Int64Gauge
	wait        metric.Float64Histogram
	retries     metric.Int64Counter
	rateLimited metric.Int64Counter
	breaker     metric.Int64Gauge
	fallback    metric.Int64Gauge
}

// telemetry returns s's telemetry, creating its tracer and instruments on
// first use.
func (s *State) telemetry() *telemetry {
	t := s.cfg.telemetry
	if t == nil {
		t = unconfigured // a State made without NewState, in a test
	}
	t.once.Do(t.init)
	return t
}

// unconfigured is the telemetry of States that have none: global providers.
var unconfigured = new(telemetry)

// Recommended bucket boundaries of the GenAI conventions.
var (
	durationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	tokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
)

func (t *telemetry) init() {
	tp, mp := t.tracerProvider, t.meterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t.tracer = tp.Tracer(instrumentationName, trace.WithSchemaURL(semconv.SchemaURL))
	m := mp.Meter(instrumentationName, metric.WithSchemaURL(semconv.SchemaURL))

	// An instrument that cannot be made is reported and replaced by a no-op.
	var errs []error
	keep := func(err error) { errs = append(errs, err) }
	var err error
	t.inst.tokenUsage, err = genaiconv.NewClientTokenUsage(m, metric.WithExplicitBucketBoundaries(tokenBuckets...))
	keep(err)
	t.inst.duration, err = genaiconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	t.inst.firstChunk, err = genaiconv.NewClientOperationTimeToFirstChunk(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	t.inst.remaining, err = m.Int64Gauge("tollgate.ratelimit.remaining",
		metric.WithDescription("What the provider's rate-limit headers said remains, per dimension, after the latest response."))
	keep(err)
	t.inst.limit, err = m.Int64Gauge("tollgate.ratelimit.limit",
		metric.WithDescription("The per-minute limit the provider's rate-limit headers reported, per dimension."))
	keep(err)
	t.inst.wait, err = m.Float64Histogram("tollgate.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a call waited before an attempt, by cause: budget, pause (open breaker) or backoff."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	t.inst.retries, err = m.Int64Counter("tollgate.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("Attempts that were retried, by reason."))
	keep(err)
	t.inst.rateLimited, err = m.Int64Counter("tollgate.rate_limited", metric.WithUnit("{response}"),
		metric.WithDescription("429 responses, by the limit that was exhausted."))
	keep(err)
	t.inst.breaker, err = m.Int64Gauge("tollgate.breaker.state",
		metric.WithDescription("Breaker state per (provider, model family): 0 closed, 1 half-open, 2 open."))
	keep(err)
	t.inst.fallback, err = m.Int64Gauge("tollgate.store.fallback",
		metric.WithDescription("1 while the store given by WithStore fails and the budget paces locally at its fallback share, 0 while the store answers."))
	keep(err)
	if err := errors.Join(errs...); err != nil {
		otel.Handle(fmt.Errorf("tollgate: creating instruments: %w", err))
	}
	t.inst.orNoop()
}

func (in *instruments) orNoop() {
	var n noop.Meter
	if in.remaining == nil {
		in.remaining, _ = n.Int64Gauge("")
	}
	if in.limit == nil {
		in.limit, _ = n.Int64Gauge("")
	}
	if in.wait == nil {
		in.wait, _ = n.Float64Histogram("")
	}
	if in.retries == nil {
		in.retries, _ = n.Int64Counter("")
	}
	if in.rateLimited == nil {
		in.rateLimited, _ = n.Int64Counter("")
	}
	if in.breaker == nil {
		in.breaker, _ = n.Int64Gauge("")
	}
	if in.fallback == nil {
		in.fallback, _ = n.Int64Gauge("")
	}
}

// tollgate's own attribute keys.
const (
	attemptsKey      = attribute.Key("tollgate.attempts")
	attemptKey       = attribute.Key("tollgate.attempt")
	requestIDKey     = attribute.Key("tollgate.request.id")
	modelFamilyKey   = attribute.Key("tollgate.model_family")
	tierKey          = attribute.Key("tollgate.tier")
	waitBudgetKey    = attribute.Key("tollgate.wait.budget")  // seconds
	waitPauseKey     = attribute.Key("tollgate.wait.pause")   // seconds
	waitBackoffKey   = attribute.Key("tollgate.wait.backoff") // seconds
	waitCauseKey     = attribute.Key("tollgate.wait.cause")
	waitDurationKey  = attribute.Key("tollgate.wait.duration") // seconds
	retryReasonKey   = attribute.Key("tollgate.retry.reason")
	retryWaitKey     = attribute.Key("tollgate.retry.wait") // seconds
	dimensionKey     = attribute.Key("tollgate.ratelimit.dimension")
	rateLimitedByKey = attribute.Key("tollgate.rate_limited.reason")
	breakerFromKey   = attribute.Key("tollgate.breaker.from")
	breakerToKey     = attribute.Key("tollgate.breaker.to")
	breakerReasonKey = attribute.Key("tollgate.breaker.reason")
)

// Span event names.
const (
	retryEvent   = "tollgate.retry"      // an attempt failed and will be retried
	noRetryEvent = "tollgate.retry.stop" // an attempt failed and will not be retried
	waitEvent    = "tollgate.wait"       // the call waited (budget, pause or backoff)
	breakerEvent = "tollgate.breaker.state_change"
)

// dimensionAttrs are the span attribute keys of each dimension's reading,
// e.g. tollgate.ratelimit.input_tokens.remaining.
var dimensionAttrs = func() (keys [numDimensions]struct{ remaining, limit attribute.Key }) {
	for d := range numDimensions {
		name := strings.ReplaceAll(d.String(), "-", "_")
		keys[d].remaining = attribute.Key("tollgate.ratelimit." + name + ".remaining")
		keys[d].limit = attribute.Key("tollgate.ratelimit." + name + ".limit")
	}
	return keys
}()

type traceLayer struct {
	state *State
	tel   *telemetry
	next  http.RoundTripper
}

func (l *traceLayer) RoundTrip(req *http.Request) (*http.Response, error) {
	req, c := l.state.callFor(req)
	if c.trace != nil {
		// An outer Trace of the same State traces this call already.
		return l.next.RoundTrip(req)
	}
	ct := l.tel.startCall(req, c)
	c.trace = ct
	resp, err := l.next.RoundTrip(req.WithContext(ct.ctx))
	if err != nil {
		ct.end(0, err)
		return nil, err
	}
	ct.responded()
	if ex := c.lastExchange(); ex != nil && ex.isSent() {
		ex.whenDone(func(*exchange) { ct.end(resp.StatusCode, nil) })
	} else {
		// No Observe layer: nothing will report the end of the body.
		ct.end(resp.StatusCode, nil)
	}
	return resp, nil
}

// A callTrace is the Trace layer's record of one call: its span and those of
// its attempts. Its methods are no-ops on a nil *callTrace, so the other
// layers call them without checking whether the call is traced.
type callTrace struct {
	tel    *telemetry
	call   *call
	clock  Clock
	ctx    context.Context // the call's request context, carrying span
	span   trace.Span
	method string
	url    string               // url.full, redacted
	server []attribute.KeyValue // server.address, server.port

	mu        sync.Mutex
	attempts  []*attemptSpan // the attempts whose spans are open
	headersAt time.Time      // when the last response's headers arrived
	ended     bool
}

func (t *telemetry) startCall(req *http.Request, c *call) *callTrace {
	ct := &callTrace{
		tel:    t,
		call:   c,
		clock:  c.state.cfg.clock,
		method: req.Method,
		url:    redactedURL(req.URL),
		server: serverAttrs(req.URL),
	}
	info := c.info
	name := info.Operation
	var attrs []attribute.KeyValue
	if info.Operation != "" {
		attrs = append(attrs, semconv.GenAIOperationNameKey.String(info.Operation))
		if info.Model != "" {
			name += " " + info.Model
			attrs = append(attrs, semconv.GenAIRequestModel(info.Model))
		}
		if info.MaxTokens > 0 {
			attrs = append(attrs, semconv.GenAIRequestMaxTokens(int(info.MaxTokens)))
		}
		attrs = append(attrs, semconv.GenAIRequestStream(info.Stream))
	} else {
		// Not a GenAI operation (e.g. listing models): an HTTP client span.
		name = req.Method
		attrs = append(attrs, semconv.HTTPRequestMethodKey.String(req.Method))
	}
	if info.Provider != "" {
		attrs = append(attrs, semconv.GenAIProviderNameKey.String(string(info.Provider)))
	}
	attrs = append(attrs, ct.server...)
	if c.key.Family != "" {
		attrs = append(attrs, modelFamilyKey.String(c.key.Family))
	}
	ct.ctx, ct.span = t.tracer.Start(req.Context(), name,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...), trace.WithTimestamp(c.start))
	return ct
}

// responded notes that the chain returned a response.
func (ct *callTrace) responded() {
	now := ct.clock.Now()
	ct.mu.Lock()
	ct.headersAt = now
	ct.mu.Unlock()
}

// attemptContext starts the span of attempt ex and returns ctx carrying it.
// newExchange calls it for every attempt.
func (ct *callTrace) attemptContext(ctx context.Context, ex *exchange) context.Context {
	if ct == nil {
		return ctx
	}
	now := ct.clock.Now()
	// An earlier attempt that never reached Observe (refused by the breaker
	// or the budget) has nothing more to report.
	ct.endOpenAttempts(now, nil)
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(ct.method),
		semconv.URLFullKey.String(ct.url),
		attemptKey.Int(ex.attempt),
	}
	attrs = append(attrs, ct.server...)
	if ex.attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCountKey.Int(ex.attempt-1))
	}
	ctx, span := ct.tel.tracer.Start(ctx, ct.method,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...), trace.WithTimestamp(now))
	a := &attemptSpan{span}
	ct.mu.Lock()
	ct.attempts = append(ct.attempts, a)
	ct.mu.Unlock()
	ex.whenDone(func(ex *exchange) { ct.endAttempt(ctx, a, ex) })
	return ctx
}

// An attemptSpan is the span of one attempt; its pointer identifies it
// (spans themselves need not be comparable).
type attemptSpan struct{ span trace.Span }

// endAttempt ends the span of attempt ex, which is complete.
func (ct *callTrace) endAttempt(ctx context.Context, a *attemptSpan, ex *exchange) {
	if !ct.forget(a) {
		return
	}
	span := a.span
	now := ct.clock.Now()
	status, h, apiErr := ex.result()
	_, err := exchangeOutcome(ex)
	if status != 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	}
	if h.RequestID != "" {
		span.SetAttributes(requestIDKey.String(h.RequestID))
	}
	switch {
	case status >= 400:
		// The HTTP conventions' error.type for a status is the status code.
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, "")
	case err != nil:
		typ := errorTypeOf(err)
		span.SetAttributes(semconv.ErrorTypeKey.String(typ))
		span.SetStatus(codes.Error, typ)
	}
	span.End(trace.WithTimestamp(now))
	ct.recordLimits(ctx, status, h, apiErr)
}

// forget removes a from the open attempts, reporting whether it was open.
func (ct *callTrace) forget(a *attemptSpan) bool {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for i, open := range ct.attempts {
		if open == a {
			ct.attempts = append(ct.attempts[:i], ct.attempts[i+1:]...)
			return true
		}
	}
	return false
}

// endOpenAttempts ends the spans of attempts that were never completed, with
// err when there is one.
func (ct *callTrace) endOpenAttempts(now time.Time, err error) {
	ct.mu.Lock()
	open := ct.attempts
	ct.attempts = nil
	ct.mu.Unlock()
	for _, a := range open {
		span := a.span
		if err != nil {
			typ := errorTypeOf(err)
			span.SetAttributes(semconv.ErrorTypeKey.String(typ))
			span.SetStatus(codes.Error, typ)
		}
		span.End(trace.WithTimestamp(now))
	}
}

// recordLimits records what a response said of the rate limits: the gauges
// of every dimension it reported, and a 429 by the limit that was exhausted.
func (ct *callTrace) recordLimits(ctx context.Context, status int, h RateLimitHeaders, apiErr *APIError) {
	key := ct.call.key
	for d := range numDimensions {
		r := h.Limits[d]
		set := metric.WithAttributes(keyMetricAttrs(key, dimensionKey.String(d.String()))...)
		if r.HasRemaining {
			ct.tel.inst.remaining.Record(ctx, r.Remaining, set)
		}
		if r.HasLimit {
			ct.tel.inst.limit.Record(ctx, r.Limit, set)
		}
	}
	if status == http.StatusTooManyRequests {
		ct.tel.inst.rateLimited.Add(ctx, 1, metric.WithAttributes(keyMetricAttrs(key, rateLimitedByKey.String(rateLimitReason(h, apiErr)))...))
	}
}

// rateLimitReason names what a 429 ran out of: the spend limit, the first
// dimension reported exhausted, or the provider's error type.
func rateLimitReason(h RateLimitHeaders, apiErr *APIError) string {
	if apiErr.isSpendCap() {
		return "spend_limit"
	}
	for d, r := range h.Limits {
		if r.HasRemaining && r.Remaining == 0 {
			return Dimension(d).String()
		}
	}
	if apiErr != nil && apiErr.Type != "" {
		return apiErr.Type
	}
	return "unknown"
}

func keyMetricAttrs(k Key, more ...attribute.KeyValue) []attribute.KeyValue {
	return append([]attribute.KeyValue{semconv.GenAIProviderNameKey.String(string(k.Provider)), modelFamilyKey.String(k.Family)}, more...)
}

// retryDecided records what Retry decided after an attempt. checkRetry calls
// it for every attempt; a success is not an event.
func (ct *callTrace) retryDecided(d retryDecision) {
	if ct == nil {
		return
	}
	c := ct.call
	var status int
	if ex := c.lastExchange(); ex != nil {
		status, _, _ = ex.result()
	}
	if !d.retry && status > 0 && status < 400 {
		return
	}
	attrs := []attribute.KeyValue{
		attemptKey.Int(c.attemptCount()),
		retryReasonKey.String(d.reason),
		retryWaitKey.Float64(d.wait.Seconds()),
	}
	if status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	name := noRetryEvent
	if d.retry {
		name = retryEvent
		ct.tel.inst.retries.Add(ct.ctx, 1, metric.WithAttributes(keyMetricAttrs(c.key, retryReasonKey.String(d.reason))...))
	}
	ct.span.AddEvent(name, trace.WithAttributes(attrs...), trace.WithTimestamp(ct.clock.Now()))
}

// waited records the waits added to the call's Waits, from before to after.
// addWait calls it.
func (ct *callTrace) waited(before, after Waits) {
	if ct == nil {
		return
	}
	now := ct.clock.Now()
	attempt := ct.call.attemptCount()
	for _, w := range []struct {
		cause string
		d     time.Duration
	}{
		{"budget", after.Budget - before.Budget},
		{"pause", after.Pause - before.Pause},
		{"backoff", after.Backoff - before.Backoff},
	} {
		if w.d <= 0 {
			continue
		}
		ct.span.AddEvent(waitEvent, trace.WithTimestamp(now), trace.WithAttributes(
			waitCauseKey.String(w.cause), waitDurationKey.Float64(w.d.Seconds()), attemptKey.Int(attempt)))
		ct.tel.inst.wait.Record(ct.ctx, w.d.Seconds(), metric.WithAttributes(keyMetricAttrs(ct.call.key, waitCauseKey.String(w.cause))...))
	}
}

// traceBreakerChange records that the breaker of k went from one state to
// another ("closed", "half-open", "open"), for the given reason (e.g.
// "retry-after", "overloaded"): an event on the span in ctx (the attempt
// whose result moved it, when there is one) and the tollgate.breaker.state
// gauge. The Breaker layer calls it.
func (s *State) traceBreakerChange(ctx context.Context, k Key, from, to, reason string) {
	t := s.telemetry()
	trace.SpanFromContext(ctx).AddEvent(breakerEvent, trace.WithTimestamp(s.cfg.clock.Now()), trace.WithAttributes(
		modelFamilyKey.String(k.Family), breakerFromKey.String(from), breakerToKey.String(to), breakerReasonKey.String(reason)))
	level := map[string]int64{"closed": 0, "half-open": 1, "open": 2}[to]
	t.inst.breaker.Record(ctx, level, metric.WithAttributes(keyMetricAttrs(k)...))
}

// end ends the call's span, once: the call failed with err, or its last
// response (of the given status, when no exchange records it) is complete.
func (ct *callTrace) end(status int, err error) {
	ct.mu.Lock()
	if ct.ended {
		ct.mu.Unlock()
		return
	}
	ct.ended = true
	headersAt := ct.headersAt
	ct.mu.Unlock()

	now := ct.clock.Now()
	ct.endOpenAttempts(now, err)
	c := ct.call
	var (
		h       RateLimitHeaders
		apiErr  *APIError
		u       Usage
		bodyErr error
	)
	var firstChunkAt time.Time
	if ex := c.lastExchange(); ex != nil && ex.isSent() {
		status, h, apiErr = ex.result()
		u, bodyErr = exchangeOutcome(ex)
		ex.mu.Lock()
		firstChunkAt = ex.firstChunkAt
		ex.mu.Unlock()
		if err != nil {
			bodyErr = nil // the transport error is the exchange's error
		}
	}
	c.mu.Lock()
	attempts, waits := c.attempts, c.waits
	c.mu.Unlock()

	errType := callErrorType(err, status, apiErr, u.StreamError, bodyErr)
	info := c.info
	// Time to first chunk: to when the first bytes of the stream reached
	// the caller; when the caller read none, to the response headers.
	ttfc := time.Duration(-1)
	if info.Stream && status > 0 && status < 300 {
		switch {
		case !firstChunkAt.IsZero():
			ttfc = firstChunkAt.Sub(c.start)
		case !headersAt.IsZero():
			ttfc = headersAt.Sub(c.start)
		}
	}

	span := ct.span
	// A span nobody records (the no-op provider, the default) is not worth
	// its attributes: this runs once per call.
	if span.IsRecording() {
		ct.annotate(span, now, err, errType, status, attempts, waits, h, u, ttfc)
	}
	span.End(trace.WithTimestamp(now))

	ct.recordMetrics(info, u, errType, now.Sub(c.start), ttfc)
	if record := ct.tel.recordUsage; record != nil {
		record(ct.ctx, UsageRecord{
			Time:                     now,
			Duration:                 now.Sub(c.start),
			RequestID:                h.RequestID,
			Provider:                 info.Provider,
			Operation:                info.Operation,
			Model:                    info.Model,
			ResponseModel:            u.ResponseModel,
			Stream:                   info.Stream,
			InputTokens:              u.InputTokens,
			OutputTokens:             u.OutputTokens,
			CacheReadInputTokens:     u.CacheReadInputTokens,
			CacheCreationInputTokens: u.CacheCreationInputTokens,
			Status:                   status,
			Error:                    errType,
			Attempts:                 attempts,
			Waits:                    waits,
		})
	}
}

// annotate sets the attributes and the status of a finished call's span.
func (ct *callTrace) annotate(span trace.Span, now time.Time, err error, errType string, status, attempts int,
	waits Waits, h RateLimitHeaders, u Usage, ttfc time.Duration) {
	c := ct.call
	attrs := []attribute.KeyValue{
		attemptsKey.Int(attempts),
		waitBudgetKey.Float64(waits.Budget.Seconds()),
		waitPauseKey.Float64(waits.Pause.Seconds()),
		waitBackoffKey.Float64(waits.Backoff.Seconds()),
	}
	if status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	if h.RequestID != "" {
		attrs = append(attrs, requestIDKey.String(h.RequestID))
	}
	if u.ResponseID != "" {
		attrs = append(attrs, semconv.GenAIResponseID(u.ResponseID))
	}
	if u.ResponseModel != "" {
		attrs = append(attrs, semconv.GenAIResponseModel(u.ResponseModel))
	}
	if len(u.FinishReasons) > 0 {
		attrs = append(attrs, semconv.GenAIResponseFinishReasons(u.FinishReasons...))
	}
	if u.Reported {
		attrs = append(attrs,
			semconv.GenAIUsageInputTokens(int(u.TotalInputTokens())),
			semconv.GenAIUsageOutputTokens(int(u.OutputTokens)),
			semconv.GenAIUsageCacheReadInputTokens(int(u.CacheReadInputTokens)),
			semconv.GenAIUsageCacheCreationInputTokens(int(u.CacheCreationInputTokens)))
	}
	if ttfc >= 0 {
		attrs = append(attrs, semconv.GenAIResponseTimeToFirstChunk(ttfc.Seconds()))
	}
	for d := range numDimensions {
		if r := h.Limits[d]; r.HasRemaining {
			attrs = append(attrs, dimensionAttrs[d].remaining.Int64(r.Remaining))
		}
		if r := h.Limits[d]; r.HasLimit {
			attrs = append(attrs, dimensionAttrs[d].limit.Int64(r.Limit))
		}
	}
	if tier := c.state.budget.tier(c.key); tier != "" {
		attrs = append(attrs, tierKey.String(tier))
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errType)
		if err != nil {
			span.RecordError(redactedError{err}, trace.WithTimestamp(now))
		}
	}
	span.SetAttributes(attrs...)
}

// recordMetrics records the GenAI client metrics of a finished call; ttfc
// is negative when the call was no successful stream.
func (ct *callTrace) recordMetrics(info RequestInfo, u Usage, errType string, d, ttfc time.Duration) {
	if info.Operation == "" {
		return
	}
	op, provider := genaiconv.OperationNameAttr(info.Operation), genaiconv.ProviderNameAttr(info.Provider)
	attrs := append([]attribute.KeyValue(nil), ct.server...)
	if info.Model != "" {
		attrs = append(attrs, semconv.GenAIRequestModel(info.Model))
	}
	if u.ResponseModel != "" {
		attrs = append(attrs, semconv.GenAIResponseModel(u.ResponseModel))
	}
	in := &ct.tel.inst
	if u.Reported {
		in.tokenUsage.Record(ct.ctx, u.TotalInputTokens(), op, provider, genaiconv.TokenTypeInput, attrs...)
		in.tokenUsage.Record(ct.ctx, u.OutputTokens, op, provider, genaiconv.TokenTypeOutput, attrs...)
	}
	if ttfc >= 0 {
		in.firstChunk.Record(ct.ctx, ttfc.Seconds(), op, provider, attrs...)
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
	}
	in.duration.Record(ct.ctx, d.Seconds(), op, provider, attrs...)
}

// exchangeOutcome returns the usage and the error an exchange ended with.
func exchangeOutcome(ex *exchange) (Usage, error) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.usage, ex.err
}

// callErrorType is the error.type of a call: the chain's error, else the
// provider's error type (or the status) of an error response, else an error
// event in the body, else the error that ended the body. Empty on success.
func callErrorType(err error, status int, apiErr, streamErr *APIError, bodyErr error) string {
	switch {
	case err != nil:
		return errorTypeOf(err)
	case status >= 400:
		if apiErr != nil && apiErr.Type != "" {
			return apiErr.Type
		}
		return strconv.Itoa(status)
	case streamErr != nil:
		if streamErr.Type != "" {
			return streamErr.Type
		}
		return "stream_error"
	case bodyErr != nil:
		return errorTypeOf(bodyErr)
	}
	return ""
}

// errorTypeOf names an error for error.type, with low cardinality.
func errorTypeOf(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, ErrOpen):
		return "circuit_open"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected_eof"
	}
	return fmt.Sprintf("%T", err)
}

// redactedError is an error whose message has any URL's query values and user
// information redacted, for span events.
type redactedError struct{ err error }

func (e redactedError) Error() string {
	var ue *url.Error
	if errors.As(e.err, &ue) {
		if u, err := url.Parse(ue.URL); err == nil {
			return (&url.Error{Op: ue.Op, URL: redactedURL(u), Err: redactedError{ue.Err}}).Error()
		}
		return ue.Op + ": " + redactedError{ue.Err}.Error()
	}
	return e.err.Error()
}

// keptQueryParams are query parameters whose values are not secret.
var keptQueryParams = map[string]bool{"api-version": true, "beta": true}

// redactedURL returns u as url.full may record it: without user information
// or fragment, with every query value but keptQueryParams' redacted.
func redactedURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	r := *u
	if r.User != nil {
		r.User = url.UserPassword("REDACTED", "REDACTED")
	}
	r.Fragment, r.RawFragment = "", ""
	if r.RawQuery != "" {
		q := r.Query()
		for k, vs := range q {
			if !keptQueryParams[k] {
				for i := range vs {
					vs[i] = "REDACTED"
				}
			}
		}
		r.RawQuery = q.Encode()
	}
	return r.String()
}

// serverAttrs returns server.address and server.port of u.
func serverAttrs(u *url.URL) []attribute.KeyValue {
	if u == nil {
		return nil
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		port = 443
		if u.Scheme == "http" {
			port = 80
		}
	}
	return []attribute.KeyValue{semconv.ServerAddress(u.Hostname()), semconv.ServerPort(port)}
}

// storeChanged logs and records that the store given by WithStore failed
// (down) or answers again.
func (s *State) storeChanged(down bool, err error) {
	if down {
		s.cfg.logger.Warn("tollgate: the shared store failed; pacing by a local budget at a share of each limit until it answers",
			"share", s.budget.guard.share, "retry", s.budget.guard.retry, "error", err)
		s.telemetry().inst.fallback.Record(context.Background(), 1)
		return
	}
	s.cfg.logger.Info("tollgate: the shared store answers again; pacing by it")
	s.telemetry().inst.fallback.Record(context.Background(), 0)
}
