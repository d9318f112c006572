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
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate-go/tollgate/internal/usage"
)

// Trace returns the outermost layer, which records each logical call (all
// its attempts) with OpenTelemetry, following the GenAI semantic
// conventions (semconv v1.41.0): a CLIENT span per call named
// "{gen_ai.operation.name} {gen_ai.request.model}" with the request's
// provider, model, max_tokens and stream flag, and, when it ends, the
// response id, model, finish reasons, token usage and error.type; a child
// CLIENT span per attempt with the HTTP client conventions; span events for
// retries, waits and breaker changes; and the GenAI client metrics besides
// tollgate's own (see the package documentation for the list).
//
// The call's span ends when the response body reaches EOF or is closed, or
// when the call fails: for a stream, when the stream ends, with the usage
// its events reported. The attempt's span is in the context of the request
// the base transport receives, so an instrumented base transport (otelhttp)
// nests under it. Request and response content is never recorded, nor are
// headers other than the rate-limit ones: x-api-key, authorization and
// cookies never reach a span.
//
// Spans and metrics go to WithTracerProvider's and WithMeterProvider's
// providers, by default the global ones; the usage record of each call goes
// to WithUsageRecorder's function. A nil s gets a State of its own with
// default options. The Observe layer is put under the layer when next has
// none of s's inside it.
func Trace(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return &traceLayer{state: s, tel: s.telemetry(), next: s.observed(next)}
	}
}

type traceLayer struct {
	state *State
	tel   *telemetry
	next  http.RoundTripper
}

func (l *traceLayer) observes(s *State) bool { return observes(l.next, s) }

func (l *traceLayer) RoundTrip(req *http.Request) (*http.Response, error) {
	c := l.state.callOf(req.Context())
	if c != nil && c.observer != nil {
		// An outer Trace of the same State traces this call already.
		return l.next.RoundTrip(req)
	}
	ctx := req.Context()
	if c == nil {
		c = l.state.newCall(req)
		ctx = c.context(ctx)
	}
	ct := l.tel.startCall(ctx, req, c)
	c.observer = ct
	resp, err := l.next.RoundTrip(req.WithContext(ct.ctx))
	if err != nil {
		ct.end(0, err)
		return nil, err
	}
	ct.responded()
	c.lastExchange().whenDone(ct)
	return resp, nil
}

// exchanged ends the call when its last exchange is complete.
func (ct *callTrace) exchanged(ex *exchange) { ct.end(ex.result().status, nil) }

// attrBuffers hold the attributes of a span while they are handed to the
// SDK, which copies them: one buffer serves every span.
var attrBuffers = sync.Pool{New: func() any { return new([]attribute.KeyValue) }}

func getAttrs() *[]attribute.KeyValue { return attrBuffers.Get().(*[]attribute.KeyValue) }

func putAttrs(b *[]attribute.KeyValue) {
	if cap(*b) <= 64 {
		clear(*b)
		*b = (*b)[:0]
		attrBuffers.Put(b)
	}
}

// A callTrace is the Trace layer's record of one call: its span and those of
// its attempts. It is the call's observer.
type callTrace struct {
	tel     *telemetry
	call    *call
	clock   Clock
	ctx     context.Context // the call's request context, carrying span
	span    trace.Span
	method  string
	url     string // url.full, redacted
	address string // server.address
	port    int    // server.port

	mu        sync.Mutex
	attempts  []*attemptSpan // the attempts whose spans are open
	headersAt time.Time      // when the last response's headers arrived
	ended     bool
}

// startCall starts the span of call c in ctx.
func (t *telemetry) startCall(ctx context.Context, req *http.Request, c *call) *callTrace {
	ct := &callTrace{tel: t, call: c, clock: c.state.cfg.clock, method: req.Method, url: redactedURL(req.URL)}
	ct.address, ct.port = serverOf(req.URL)
	info := &c.info
	name := info.operation
	buf := getAttrs()
	defer putAttrs(buf)
	attrs := *buf
	if info.operation != "" {
		attrs = append(attrs, semconv.GenAIOperationNameKey.String(info.operation))
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
	attrs = append(attrs, semconv.GenAIProviderNameKey.String(string(info.provider)),
		semconv.ServerAddress(ct.address), semconv.ServerPort(ct.port))
	if k := c.key(); k.Family != "" {
		attrs = append(attrs, modelFamilyKey.String(k.Family))
	}
	attrs = c.appendClass(attrs)
	ct.ctx, ct.span = t.tracer.Start(ctx, name,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...), trace.WithTimestamp(c.start))
	*buf = attrs
	return ct
}

// appendClass appends the call's place in the queue: tollgate.priority,
// and tollgate.tenant when it has one.
func (c *call) appendClass(attrs []attribute.KeyValue) []attribute.KeyValue {
	attrs = append(attrs, priorityKey.String(c.priority.String()))
	if c.tenant != "" {
		attrs = append(attrs, tenantKey.String(c.tenant))
	}
	return attrs
}

// responded notes that the chain returned a response.
func (ct *callTrace) responded() {
	now := ct.clock.Now()
	ct.mu.Lock()
	ct.headersAt = now
	ct.mu.Unlock()
}

// An attemptSpan is the span of one attempt; its pointer identifies it
// (spans themselves need not be comparable).
type attemptSpan struct {
	ct   *callTrace
	ctx  context.Context
	span trace.Span
}

// exchanged ends the span when the attempt is complete.
func (a *attemptSpan) exchanged(ex *exchange) { a.ct.endAttempt(a.ctx, a, ex) }

// attemptStarted starts the span of attempt ex and returns ctx carrying it.
func (ct *callTrace) attemptStarted(ctx context.Context, ex *exchange) context.Context {
	now := ct.clock.Now()
	buf := getAttrs()
	defer putAttrs(buf)
	attrs := append(*buf,
		semconv.HTTPRequestMethodKey.String(ct.method),
		semconv.URLFullKey.String(ct.url),
		attemptKey.Int(ex.attempt),
		semconv.ServerAddress(ct.address), semconv.ServerPort(ct.port))
	if ex.attempt > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCountKey.Int(ex.attempt-1))
	}
	attrs = ct.call.appendClass(attrs)
	ctx, span := ct.tel.tracer.Start(ctx, ct.method,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...), trace.WithTimestamp(now))
	*buf = attrs
	a := &attemptSpan{ct, ctx, span}
	ct.mu.Lock()
	ct.attempts = append(ct.attempts, a)
	ct.mu.Unlock()
	ex.whenDone(a)
	return ctx
}

// endAttempt ends the span of attempt ex, which is complete.
func (ct *callTrace) endAttempt(ctx context.Context, a *attemptSpan, ex *exchange) {
	if !ct.forget(a) {
		return
	}
	span := a.span
	r := ex.result()
	_, err := ex.outcome()
	buf := getAttrs()
	defer putAttrs(buf)
	attrs := *buf
	if r.status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(r.status))
	}
	if r.headers.RequestID != "" {
		attrs = append(attrs, requestIDKey.String(r.headers.RequestID))
	}
	switch {
	case r.status >= 400:
		// The HTTP conventions' error.type for a status is the status code.
		attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(r.status)))
		span.SetStatus(codes.Error, "")
	case err != nil:
		typ := errorTypeOf(err)
		attrs = append(attrs, semconv.ErrorTypeKey.String(typ))
		span.SetStatus(codes.Error, typ)
	}
	span.SetAttributes(attrs...)
	*buf = attrs
	span.End(trace.WithTimestamp(ct.clock.Now()))
	if r.status == http.StatusTooManyRequests {
		ct.tel.inst.rateLimited.Add(ctx, 1, metric.WithAttributeSet(
			ct.call.pool.metricSets().reason(rateLimitedByKey, rateLimitReason(r.headers, r.apiErr))))
	}
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

// rateLimitReason names what a 429 ran out of: the spend limit, the first
// dimension reported exhausted, or the provider's error type.
func rateLimitReason(h RateLimitHeaders, apiErr *APIError) string {
	if isSpendCap(apiErr) {
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

// retryDecided records what Retry decided after an attempt: a retry, or a
// refusal to retry an error; a success is not an event.
func (ct *callTrace) retryDecided(d retryDecision, attempt, status int) {
	if !d.retry && status > 0 && status < 400 {
		return
	}
	attrs := []attribute.KeyValue{
		attemptKey.Int(attempt),
		retryReasonKey.String(d.reason),
		retryWaitKey.Float64(d.wait.Seconds()),
	}
	if status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	name := "tollgate.retry.stop" // an attempt failed and will not be retried
	if d.retry {
		name = "tollgate.retry" // an attempt failed and will be retried
		ct.tel.inst.retries.Add(ct.ctx, 1, metric.WithAttributeSet(ct.call.pool.metricSets().reason(retryReasonKey, d.reason)))
	}
	ct.span.AddEvent(name, trace.WithAttributes(attrs...), trace.WithTimestamp(ct.clock.Now()))
}

// waited records a wait of the call.
func (ct *callTrace) waited(cause string, d time.Duration, attempt int) {
	ct.span.AddEvent("tollgate.wait", trace.WithTimestamp(ct.clock.Now()), trace.WithAttributes(
		waitCauseKey.String(cause), waitDurationKey.Float64(d.Seconds()), attemptKey.Int(attempt)))
	c := ct.call
	ct.tel.inst.wait.Record(ct.ctx, d.Seconds(),
		metric.WithAttributeSet(c.pool.metricSets().wait[waitCauseIndex(cause)][c.priority.rank()]))
}

// breakerChanged records a breaker change as an event on the span in ctx:
// the attempt that caused or noticed it.
func (ct *callTrace) breakerChanged(ctx context.Context, ev BreakerEvent) {
	trace.SpanFromContext(ctx).AddEvent("tollgate.breaker.state_change", trace.WithTimestamp(ev.At), trace.WithAttributes(
		modelFamilyKey.String(ev.Key.Family), breakerFromKey.String(string(ev.From)),
		breakerToKey.String(string(ev.To)), breakerReasonKey.String(ev.Reason)))
}

// end ends the call's span, once: the call failed with err, or its last
// response (of the given status) is complete.
func (ct *callTrace) end(status int, err error) {
	ct.mu.Lock()
	if ct.ended {
		ct.mu.Unlock()
		return
	}
	ct.ended = true
	headersAt, open := ct.headersAt, ct.attempts
	ct.attempts = nil
	ct.mu.Unlock()

	now := ct.clock.Now()
	for _, a := range open { // attempts refused before they were sent
		endRefused(a.span, now, err)
	}
	c := ct.call
	var (
		r         response
		u         usage.Usage
		bodyErr   error
		firstByte time.Time
		acct      accounting
	)
	if ex := c.lastExchange(); ex != nil {
		r = ex.result()
		u, bodyErr = ex.outcome()
		firstByte = ex.firstByte()
		acct = ex.accounted()
	}
	if r.status == 0 {
		r.status = status
	}
	if err != nil {
		bodyErr = nil // the chain's error is the exchange's error
	}
	attempts, waits := c.progress()
	errType := callErrorType(err, r.status, r.apiErr, u.StreamError, bodyErr)
	ttfc := ct.timeToFirstChunk(r.status, firstByte, headersAt)

	span := ct.span
	// A span nobody records (the no-op provider, the default) is not worth
	// its attributes: this runs once per call.
	if span.IsRecording() {
		ct.annotate(now, err, errType, r, attempts, waits, u, ttfc, acct)
	}
	span.End(trace.WithTimestamp(now))

	ct.recordMetrics(u, errType, now.Sub(c.start), ttfc)
	if acct.known && acct.counted {
		sets := c.pool.metricSets()
		ct.tel.inst.estimate.Record(ct.ctx, acct.estInput-acct.countedInput, metric.WithAttributeSet(sets.estimate[0]))
		ct.tel.inst.estimate.Record(ct.ctx, acct.estOutput-acct.countedOutput, metric.WithAttributeSet(sets.estimate[1]))
	}
	if record := c.state.cfg.telemetry.recordUsage; record != nil {
		record(ct.ctx, c.usageRecord(now, r, u, errType, attempts, waits))
	}
}

// usageRecord is the record of the call, ended at now.
func (c *call) usageRecord(now time.Time, r response, u usage.Usage, errType string, attempts int, waits Waits) UsageRecord {
	return UsageRecord{
		Time:                     now,
		Duration:                 now.Sub(c.start),
		RequestID:                r.headers.RequestID,
		Provider:                 c.info.provider,
		Operation:                c.info.operation,
		Model:                    c.info.Model,
		ResponseModel:            u.ResponseModel,
		Stream:                   c.info.Stream,
		InputTokens:              u.InputTokens,
		OutputTokens:             u.OutputTokens,
		CacheReadInputTokens:     u.CacheReadInputTokens,
		CacheCreationInputTokens: u.CacheCreationInputTokens,
		Status:                   r.status,
		Error:                    errType,
		Attempts:                 attempts,
		Waits:                    waits,
		Priority:                 c.priority,
		Tenant:                   c.tenant,
	}
}

// timeToFirstChunk is, for a successful stream, the time from the call's
// start to when the first bytes reached the caller (to the response
// headers when the caller read none); -1 for other calls.
func (ct *callTrace) timeToFirstChunk(status int, firstByte, headersAt time.Time) time.Duration {
	c := ct.call
	if !c.info.Stream || status <= 0 || status >= 300 {
		return -1
	}
	switch {
	case !firstByte.IsZero():
		return firstByte.Sub(c.start)
	case !headersAt.IsZero():
		return headersAt.Sub(c.start)
	}
	return -1
}

// endRefused ends the span of an attempt that was never sent.
func endRefused(span trace.Span, now time.Time, err error) {
	if err != nil {
		typ := errorTypeOf(err)
		span.SetAttributes(semconv.ErrorTypeKey.String(typ))
		span.SetStatus(codes.Error, typ)
	}
	span.End(trace.WithTimestamp(now))
}

// annotate sets the attributes and the status of a finished call's span.
func (ct *callTrace) annotate(now time.Time, err error, errType string, r response, attempts int,
	waits Waits, u usage.Usage, ttfc time.Duration, acct accounting) {
	buf := getAttrs()
	defer putAttrs(buf)
	attrs := append(*buf,
		attemptsKey.Int(attempts),
		waitBudgetKey.Float64(waits.Budget.Seconds()),
		waitPauseKey.Float64(waits.Pause.Seconds()),
		waitBackoffKey.Float64(waits.Backoff.Seconds()))
	if r.status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(r.status))
	}
	if id := r.headers.RequestID; id != "" {
		attrs = append(attrs, requestIDKey.String(id))
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
	for d, rd := range r.headers.Limits {
		if rd.HasRemaining {
			attrs = append(attrs, dimensionAttrs[d].remaining.Int64(rd.Remaining))
		}
		if rd.HasLimit {
			attrs = append(attrs, dimensionAttrs[d].limit.Int64(rd.Limit))
		}
	}
	attrs = append(attrs, tierKey.String(ct.call.pool.tier()))
	attrs = acct.appendAttrs(attrs)
	span := ct.span
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errType)
		if err != nil {
			span.RecordError(redactedError{err}, trace.WithTimestamp(now))
		}
	}
	span.SetAttributes(attrs...)
	*buf = attrs
}

// appendAttrs appends the span attributes of what the budget estimated and
// what the server counted.
func (a accounting) appendAttrs(attrs []attribute.KeyValue) []attribute.KeyValue {
	if a.known {
		attrs = append(attrs, estInputKey.Int64(a.estInput), estCachedKey.Int64(a.estCachedInput),
			estOutputKey.Int64(a.estOutput), outputAccountKey.String(a.output.String()))
	}
	if a.counted {
		attrs = append(attrs, countedInputKey.Int64(a.countedInput), countedOutputKey.Int64(a.countedOutput))
	}
	return attrs
}

// recordMetrics records the GenAI client metrics of a finished call; ttfc
// is negative when the call was no successful stream.
func (ct *callTrace) recordMetrics(u usage.Usage, errType string, d, ttfc time.Duration) {
	info := &ct.call.info
	if info.operation == "" {
		return
	}
	sets := ct.tel.setsFor(callShape{
		operation: info.operation, provider: string(info.provider), address: ct.address, port: ct.port,
		model: info.Model, responseModel: u.ResponseModel, errorType: errType,
	})
	in := &ct.tel.inst
	if u.Reported {
		in.tokenUsage.RecordSet(ct.ctx, u.TotalInputTokens(), sets.input)
		in.tokenUsage.RecordSet(ct.ctx, u.OutputTokens, sets.output)
	}
	if ttfc >= 0 {
		in.firstChunk.RecordSet(ct.ctx, ttfc.Seconds(), sets.firstChunk)
	}
	in.duration.RecordSet(ct.ctx, d.Seconds(), sets.duration)
}

// tier names the tier p's limits match.
func (p *pool) tier() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return tierOf(p.key.Provider, limitsOf(p.budget.limits))
}

// callErrorType is the error.type of a call: the chain's error, else the
// provider's error type (or the status) of an error response, else an error
// event in the body, else the error that ended the body. Empty on success.
func callErrorType(err error, status int, apiErr *APIError, streamErr *usage.Error, bodyErr error) string {
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
	case errors.Is(err, ErrQueueWait):
		return "queue_wait"
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

// serverOf returns server.address and server.port of u.
func serverOf(u *url.URL) (string, int) {
	if u == nil {
		return "", 0
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		port = 443
		if u.Scheme == "http" {
			port = 80
		}
	}
	return u.Hostname(), port
}
