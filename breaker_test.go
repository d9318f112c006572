package tollgate_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// brkEpoch is where the fake clocks of these tests start.
var brkEpoch = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

const (
	brkURL  = "http://api.test/v1/messages"
	brkBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}`
	brkOK   = `{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`
)

var brkKey = tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}

// brkAPI is an in-memory API: script answers the n-th request (1-based). It
// logs when each request arrives and when it is answered.
type brkAPI struct {
	script func(n int, req *http.Request) (*http.Response, error)

	mu  sync.Mutex
	n   int
	log []string
}

func (a *brkAPI) RoundTrip(req *http.Request) (*http.Response, error) {
	a.mu.Lock()
	a.n++
	n := a.n
	a.log = append(a.log, fmt.Sprint("arrive ", n))
	a.mu.Unlock()
	resp, err := a.script(n, req)
	a.mu.Lock()
	a.log = append(a.log, fmt.Sprint("answer ", n))
	a.mu.Unlock()
	if resp != nil {
		resp.Request = req
	}
	return resp, err
}

func (a *brkAPI) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

func (a *brkAPI) logged() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.log...)
}

// brkRespond builds a response; kv are header names and values.
func brkRespond(status int, body string, kv ...string) *http.Response {
	h := http.Header{"Content-Type": {"application/json"}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)),
	}
}

func brkAPIError(typ string) string {
	return `{"type":"error","error":{"type":"` + typ + `","message":"` + typ + `"}}`
}

const brkSpendLimitBody = `{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.",` +
	`"details":{"error_code":"enforced_spend_limit_reached"}}}`

// Server-sent events of an Anthropic stream.
const (
	brkMessageStart = "event: message_start\n" +
		`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":10,"output_tokens":1}}}` + "\n\n"
	brkBlockStart = "event: content_block_start\n" +
		`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}` + "\n\n"
	brkBlockDelta = "event: content_block_delta\n" +
		`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}` + "\n\n"
	brkStreamEnd = "event: content_block_stop\n" + `data: {"type":"content_block_stop","index":0}` + "\n\n" +
		"event: message_delta\n" +
		`data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}` + "\n\n" +
		"event: message_stop\n" + `data: {"type":"message_stop"}` + "\n\n"
	brkOverloadedEvent = "event: error\n" +
		`data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}` + "\n\n"
)

// brkStream is a 200 event stream whose events the test writes as it goes.
type brkStream struct {
	w *io.PipeWriter
	r *io.PipeReader
}

func brkNewStream() *brkStream {
	r, w := io.Pipe()
	return &brkStream{w: w, r: r}
}

func (s *brkStream) response() *http.Response {
	return &http.Response{
		StatusCode: 200, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: s.r, ContentLength: -1,
	}
}

// send writes events; it returns once the caller has read them.
func (s *brkStream) send(t *testing.T, events ...string) {
	t.Helper()
	brkWithin(t, "the caller reads the stream", func() {
		_, err := io.WriteString(s.w, strings.Join(events, ""))
		assert.NoError(t, err)
	})
}

// end ends the stream: the caller's next read gets EOF.
func (s *brkStream) end() { _ = s.w.Close() }

// brkGuard bounds every wait of these tests on another goroutine: a guard
// against a broken test hanging, not a timing assumption.
const brkGuard = 5 * time.Second

// brkWithin runs f and fails the test if it does not return within brkGuard.
func brkWithin(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(brkGuard):
		t.Fatalf("stalled: %s", what)
	}
}

// brkRecv receives from ch and fails the test if nothing comes within
// brkGuard.
func brkRecv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(brkGuard):
		t.Fatalf("stalled: %s", what)
	}
	panic("unreachable")
}

// brkRig is a State on a fake clock and a client that sends through Trace,
// Retry (when asked for) and Breaker. It keeps the usage record of every
// call and receives the breaker's state changes on a channel.
type brkRig struct {
	state  *tollgate.State
	clk    *fakeclock.Clock
	client *http.Client
	events chan tollgate.BreakerEvent

	mu      sync.Mutex
	records []tollgate.UsageRecord
}

func brkSetup(api http.RoundTripper, retry bool, opts ...tollgate.Option) *brkRig {
	r := &brkRig{clk: fakeclock.New(brkEpoch), events: make(chan tollgate.BreakerEvent, 1024)}
	own := []tollgate.Option{
		tollgate.WithClock(r.clk),
		tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
			r.mu.Lock()
			r.records = append(r.records, rec)
			r.mu.Unlock()
		}),
		tollgate.WithBreakerStateChange(func(ev tollgate.BreakerEvent) { r.events <- ev }),
	}
	r.state = tollgate.NewState(append(own, opts...)...)
	layers := []tollgate.Middleware{tollgate.Trace(r.state)}
	if retry {
		layers = append(layers, tollgate.Retry(r.state))
	}
	layers = append(layers, tollgate.Breaker(r.state))
	r.client = &http.Client{Transport: tollgate.Chain(api, layers...)}
	return r
}

// usage returns the usage records of the calls that ended, in the order
// they ended.
func (r *brkRig) usage() []tollgate.UsageRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]tollgate.UsageRecord(nil), r.records...)
}

// breaker returns the breaker's snapshot of brkKey.
func (r *brkRig) breaker(t *testing.T) tollgate.BreakerSnapshot {
	t.Helper()
	return brkBreakerOf(t, r.state, brkKey)
}

func brkBreakerOf(t *testing.T, s *tollgate.State, k tollgate.Key) tollgate.BreakerSnapshot {
	t.Helper()
	ks, ok := s.Snapshot().Key(k)
	require.True(t, ok, "the key is known")
	return ks.Breaker
}

// nextEvents waits for the next n state changes, which the State hands to
// the callback on a goroutine of its own, and returns them as "from→to
// +until reason".
func (r *brkRig) nextEvents(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		out[i] = brkEventString(brkRecv(t, r.events, fmt.Sprintf("breaker event %d of %d", i+1, n)))
	}
	return out
}

// noMoreEvents checks that no further state change has been delivered.
func (r *brkRig) noMoreEvents(t *testing.T) {
	t.Helper()
	select {
	case ev := <-r.events:
		t.Errorf("unexpected breaker event %s", brkEventString(ev))
	default:
	}
}

func brkEventString(ev tollgate.BreakerEvent) string {
	s := fmt.Sprintf("%s→%s", ev.From, ev.To)
	if !ev.Until.IsZero() {
		s += fmt.Sprintf(" +%s", ev.Until.Sub(brkEpoch))
	}
	if ev.Reason != "" {
		s += " " + ev.Reason
	}
	return s
}

// brkDo sends one call and reads its body; it returns the status, or the
// error (without the client's *url.Error).
func brkDo(ctx context.Context, client *http.Client) (int, error) {
	return brkSend(ctx, client, brkURL)
}

func brkSend(ctx context.Context, client *http.Client, url string) (int, error) {
	a := brkCallTo(ctx, client, url)
	return a.status, a.err
}

// brkAnswer is what one call got: the response's status, headers and body,
// or an error.
type brkAnswer struct {
	status int
	header http.Header
	body   string
	err    error
}

// brkCall sends one call and reads its answer whole; it is safe to run on
// any goroutine.
func brkCall(ctx context.Context, client *http.Client) brkAnswer {
	return brkCallTo(ctx, client, brkURL)
}

func brkCallTo(ctx context.Context, client *http.Client, target string) brkAnswer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(brkBody))
	if err != nil {
		return brkAnswer{err: err}
	}
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return brkAnswer{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return brkAnswer{status: resp.StatusCode, header: resp.Header, body: string(body), err: err}
}

func brkRequireOpenError(t *testing.T, err error) *tollgate.OpenError {
	t.Helper()
	require.ErrorIs(t, err, tollgate.ErrOpen)
	var oe *tollgate.OpenError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, brkKey, oe.Key)
	return oe
}

// brkReading is one dimension of a response's rate-limit headers, relative
// to the moment the response is answered.
type brkReading struct {
	limit     int64 // 0: no limit header
	remaining int64
	unknown   bool // no remaining header
	reset     time.Duration
}

// brkLimitHeaders returns the rate-limit headers of readings in provider's
// dialect, resets as times relative to now.
func brkLimitHeaders(provider tollgate.Provider, now time.Time, readings map[tollgate.Dimension]brkReading) []string {
	name := func(d tollgate.Dimension, field string) string {
		if provider == tollgate.ProviderOpenAI {
			return "x-ratelimit-" + field + "-" + d.String()
		}
		return "anthropic-ratelimit-" + d.String() + "-" + field
	}
	var kv []string
	for d, r := range readings {
		if r.limit > 0 {
			kv = append(kv, name(d, "limit"), strconv.FormatInt(r.limit, 10))
		}
		if !r.unknown {
			kv = append(kv, name(d, "remaining"), strconv.FormatInt(r.remaining, 10))
		}
		kv = append(kv, name(d, "reset"), now.Add(r.reset).Format(time.RFC3339Nano))
	}
	return kv
}

// The pause after a response is the refill the next typical request needs
// of the dimension shortest of it, never past that dimension's reset: the
// breaker opens until then, for that reason.
func TestBreakerRefillPause(t *testing.T) {
	const (
		anthropic = tollgate.ProviderAnthropic
		openai    = tollgate.ProviderOpenAI
	)
	type readings = map[tollgate.Dimension]brkReading
	for _, tt := range []struct {
		name     string
		provider tollgate.Provider
		untaught bool          // no call has told the typical cost yet (else 2000 input, 1500 output tokens)
		sent     time.Duration // how long before the answer the attempt was sent
		limits   readings
		want     time.Duration
		short    tollgate.Dimension
	}{
		{"enough everywhere", anthropic, false, 0, readings{
			tollgate.Requests: {60, 5, false, time.Minute}, tollgate.InputTokens: {30000, 1000, false, time.Minute}}, 0, 0},
		{"no request left: the refill of one request, not the reset", anthropic, false, 0, readings{
			tollgate.Requests: {60, 0, false, 60 * time.Second}}, time.Second, tollgate.Requests},
		{"input tokens short: the deficit, less the rounding, at the limit's rate", anthropic, false, 0, readings{
			tollgate.InputTokens: {30000, 200, false, time.Minute}}, 1600 * time.Millisecond, tollgate.InputTokens},
		{"the refill since the attempt was sent is no deficit", anthropic, false, time.Second, readings{
			tollgate.Requests: {60, 0, false, time.Minute}, tollgate.InputTokens: {30000, 200, false, time.Minute}},
			600 * time.Millisecond, tollgate.InputTokens},
		{"a fleet at its limit, answered after two seconds, need not pause", anthropic, false, 2 * time.Second, readings{
			tollgate.Requests: {50, 0, false, time.Minute}, tollgate.InputTokens: {30000, 0, false, time.Minute}}, 0, 0},
		{"never past the reset", anthropic, false, 0, readings{
			tollgate.InputTokens: {30000, 200, false, 100 * time.Millisecond}}, 100 * time.Millisecond, tollgate.InputTokens},
		{"a reset in the past: the bucket is full", anthropic, false, 0, readings{
			tollgate.Requests: {60, 0, false, -time.Second}}, 0, 0},
		{"no limit known: until the reset", anthropic, false, 0, readings{
			tollgate.OutputTokens: {0, 10, false, 3 * time.Second}}, 3 * time.Second, tollgate.OutputTokens},
		{"the longest wait wins", anthropic, false, 0, readings{
			tollgate.Requests: {60, 0, false, time.Minute}, tollgate.OutputTokens: {4000, 0, false, time.Minute}},
			7500 * time.Millisecond, tollgate.OutputTokens},
		{"before any usage one token is needed", openai, true, 0, readings{
			tollgate.Tokens: {60000, 0, false, time.Minute}}, time.Millisecond, tollgate.Tokens},
		{"anthropic's tokens line repeats input or output: ignored", anthropic, false, 0, readings{
			tollgate.Tokens: {30000, 0, false, time.Minute}, tollgate.InputTokens: {30000, 1000, false, time.Minute}}, 0, 0},
		{"openai's tokens are input plus output, exact", openai, false, 0, readings{
			tollgate.Tokens: {60000, 0, false, time.Minute}}, 3500 * time.Millisecond, tollgate.Tokens},
		{"unknown remaining is no reason to wait", openai, false, 0, readings{
			tollgate.Requests: {60, 0, true, time.Minute}}, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			target, body := brkURL, brkBody
			taught := `{"type":"message","usage":{"input_tokens":2000,"output_tokens":1500}}`
			if tt.provider == openai {
				target = "http://api.test/v1/chat/completions"
				body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}`
				taught = `{"object":"chat.completion","usage":{"prompt_tokens":2000,"completion_tokens":1500}}`
			}
			var clk *fakeclock.Clock
			api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
				if n == 1 && !tt.untaught {
					return brkRespond(200, taught), nil // plenty left: no headers
				}
				clk.Advance(tt.sent)
				return brkRespond(200, `{}`, brkLimitHeaders(tt.provider, clk.Now(), tt.limits)...), nil
			}}
			rig := brkSetup(api, false)
			clk = rig.clk
			send := func() {
				req, err := http.NewRequest(http.MethodPost, target, strings.NewReader(body))
				require.NoError(t, err)
				resp, err := rig.client.Do(req)
				require.NoError(t, err)
				_, _ = io.Copy(io.Discard, resp.Body)
				require.NoError(t, resp.Body.Close())
			}
			if !tt.untaught {
				send()
			}
			send()
			snap := rig.state.Snapshot()
			require.Len(t, snap.Keys, 1)
			b := snap.Keys[0].Breaker
			if tt.want == 0 {
				assert.Equal(t, tollgate.BreakerClosed, b.State)
				assert.Empty(t, b.Reason)
				return
			}
			assert.Equal(t, tollgate.BreakerOpen, b.State)
			assert.Equal(t, tt.want, b.OpenUntil.Sub(clk.Now()))
			assert.Equal(t, tt.short.String()+" refill", b.Reason)
		})
	}
}

// What the next request is expected to cost is an exponentially weighted
// moving average of the rate-limited tokens of recent calls.
func TestBreakerTypicalCostIsAMovingAverage(t *testing.T) {
	bodies := []string{
		`{"type":"message","usage":{"input_tokens":400,"cache_creation_input_tokens":100,"cache_read_input_tokens":9000,"output_tokens":100}}`,
		`{"type":"message","usage":{"input_tokens":1500,"output_tokens":100}}`,
	}
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		return brkRespond(200, bodies[n-1]), nil
	}}
	rig := brkSetup(api, false)
	_, err := brkDo(context.Background(), rig.client)
	require.NoError(t, err)
	b := rig.breaker(t)
	assert.Equal(t, 500.0, b.TypicalInputTokens, "cache reads do not count against the input limit")
	assert.Equal(t, 100.0, b.TypicalOutputTokens)
	_, err = brkDo(context.Background(), rig.client)
	require.NoError(t, err)
	assert.InDelta(t, 700.0, rig.breaker(t).TypicalInputTokens, 1e-9, "500 + 0.2 × (1500 − 500)")
}

func TestBreakerRetryAfterPausesEveryoneAndOneProbeGoesFirst(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "10"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false)
	ctx := context.Background()

	status, err := brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 429, status, "the caller that drew the 429 gets it")
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State)
	assert.Equal(t, brkEpoch.Add(10*time.Second), b.OpenUntil)
	assert.Equal(t, "retry-after", b.Reason)
	assert.Equal(t, 1, b.ConsecutiveTrips)

	const callers = 8
	statuses := make(chan int, callers)
	for range callers {
		go func() {
			status, err := brkDo(ctx, rig.client)
			assert.NoError(t, err)
			statuses <- status
		}()
	}
	require.True(t, rig.clk.WaitForWaiters(callers, brkGuard))
	assert.Equal(t, 1, api.count(), "nobody was sent while open")
	assert.Equal(t, callers, rig.breaker(t).Waiting)
	for _, d := range rig.clk.Pending() {
		assert.Equal(t, 10*time.Second, d, "everyone waits until the retry-after")
	}
	rig.clk.Advance(10 * time.Second)
	for range callers {
		assert.Equal(t, 200, brkRecv(t, statuses, "a caller"))
	}

	assert.Equal(t, 1+callers, api.count())
	assert.Equal(t, []string{"arrive 1", "answer 1", "arrive 2", "answer 2"}, api.logged()[:4],
		"the probe is answered before anyone else is sent")
	records := rig.usage()
	require.Len(t, records, 1+callers)
	assert.Zero(t, records[0].Waits.Pause)
	for _, rec := range records[1:] {
		assert.Equal(t, 10*time.Second, rec.Waits.Pause, "the pause is recorded in the call")
	}
	assert.Equal(t, []string{
		"closed→open +10s retry-after",
		"open→half-open retry-after",
		"half-open→closed",
	}, rig.nextEvents(t, 3))
	b = rig.breaker(t)
	assert.Equal(t, tollgate.BreakerClosed, b.State)
	assert.Zero(t, b.ConsecutiveTrips)
	assert.Empty(t, b.Reason)
	assert.Zero(t, b.Waiting)
	rig.noMoreEvents(t)
}

func TestBreakerFailFast(t *testing.T) {
	probeSent, releaseProbe := make(chan struct{}), make(chan struct{})
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "10"), nil
		case 2:
			close(probeSent)
			<-releaseProbe
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, true, tollgate.WithFailFast(), tollgate.WithMaxWait(5*time.Second))
	ctx := context.Background()

	// The retry-after exceeds the maximum wait: the caller gets the 429 at once.
	status, err := brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 429, status)

	_, err = brkDo(ctx, rig.client)
	oe := brkRequireOpenError(t, err)
	assert.Equal(t, brkEpoch.Add(10*time.Second), oe.Until)
	assert.Equal(t, "retry-after", oe.Reason)
	assert.Contains(t, err.Error(), "circuit open for anthropic/claude-sonnet-4 until 2026-11-26T12:00:10Z (retry-after)")
	assert.Equal(t, 1, api.count(), "an open breaker sends nothing")
	assert.Empty(t, rig.clk.Pending(), "fail-fast never waits")
	records := rig.usage()
	require.Len(t, records, 2)
	assert.Equal(t, 1, records[1].Attempts, "Retry does not retry an OpenError")
	assert.Equal(t, "circuit_open", records[1].Error)

	rig.clk.Advance(10 * time.Second)
	probe := make(chan int)
	go func() {
		status, err := brkDo(ctx, rig.client)
		assert.NoError(t, err)
		probe <- status
	}()
	brkRecv(t, probeSent, "the probe")
	_, err = brkDo(ctx, rig.client)
	oe = brkRequireOpenError(t, err)
	assert.True(t, oe.Until.IsZero(), "while the probe is in flight the reopening time is unknown")
	close(releaseProbe)
	assert.Equal(t, 200, brkRecv(t, probe, "the probe's answer"))

	status, err = brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
}

func TestBreakerSpendLimitFailsFastEvenWhenWaiting(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkSpendLimitBody), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, true)
	ctx := context.Background()

	status, err := brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 429, status, "the caller that drew it gets the server's answer, not retried")

	_, err = brkDo(ctx, rig.client)
	oe := brkRequireOpenError(t, err)
	assert.Equal(t, "spend limit reached", oe.Reason)
	assert.Equal(t, brkEpoch.Add(tollgate.DefaultSpendLimitPause), oe.Until)
	var apiErr *tollgate.APIError
	require.ErrorAs(t, err, &apiErr, "the server's error is wrapped")
	assert.Equal(t, "enforced_spend_limit_reached", apiErr.Code)
	assert.Contains(t, err.Error(), "You have reached your specified API usage limits.")
	assert.Empty(t, rig.clk.Pending(), "waiting cannot help: no wait")
	assert.Equal(t, 1, api.count())
	assert.Equal(t, "spend limit reached", rig.breaker(t).Reason)

	// When the pause is over one probe finds out whether the cap was lifted.
	rig.clk.Advance(tollgate.DefaultSpendLimitPause)
	status, err = brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	assert.Equal(t, []string{
		"closed→open +10m0s spend limit reached",
		"open→half-open spend limit reached",
		"half-open→closed",
	}, rig.nextEvents(t, 3))
	rig.noMoreEvents(t)
}

// brkRequireReplayed checks that the breaker answered a call with the
// server's 429 again, with sent requests at the server; it returns the
// answer's retry-after.
func brkRequireReplayed(t *testing.T, a brkAnswer, api *brkAPI, sent int) string {
	t.Helper()
	require.NoError(t, a.err, "the caller gets the server's answer, not an error of ours")
	assert.Equal(t, 429, a.status)
	assert.Equal(t, "true", a.header.Get(tollgate.ReplayedHeader))
	assert.Equal(t, brkAPIError("rate_limit_error"), a.body, "the server's own error body")
	assert.Equal(t, sent, api.count(), "nothing was sent")
	return a.header.Get("Retry-After")
}

// brkReplayed sends one call and checks it was answered with the server's
// 429 again.
func brkReplayed(t *testing.T, ctx context.Context, client *http.Client, api *brkAPI) string {
	t.Helper()
	sent := api.count()
	return brkRequireReplayed(t, brkCall(ctx, client), api, sent)
}

func TestBreakerHopelessWaitsReturnAtOnce(t *testing.T) {
	retryAfter := func(seconds string) *brkAPI {
		return &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
			if n == 1 {
				return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", seconds), nil
			}
			return brkRespond(200, brkOK), nil
		}}
	}
	t.Run("longer than the maximum pause: the server's 429 again", func(t *testing.T) {
		api := retryAfter("30")
		rig := brkSetup(api, false, tollgate.WithMaxPause(20*time.Second))
		_, _ = brkDo(context.Background(), rig.client)
		rig.clk.Advance(2500 * time.Millisecond)
		assert.Equal(t, "28", brkReplayed(t, context.Background(), rig.client, api), "the wait that is left, rounded up")
		assert.Empty(t, rig.clk.Pending())
		assert.Equal(t, 1, api.count())
	})
	t.Run("longer than the context deadline: the server's 429 again", func(t *testing.T) {
		api := retryAfter("30")
		rig := brkSetup(api, false)
		_, _ = brkDo(context.Background(), rig.client)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.Equal(t, "30", brkReplayed(t, ctx, rig.client, api))
		assert.Empty(t, rig.clk.Pending())
	})
	t.Run("fail-fast mode: an OpenError", func(t *testing.T) {
		api := retryAfter("30")
		rig := brkSetup(api, false, tollgate.WithFailFast())
		_, _ = brkDo(context.Background(), rig.client)
		_, err := brkDo(context.Background(), rig.client)
		oe := brkRequireOpenError(t, err)
		assert.Equal(t, brkEpoch.Add(30*time.Second), oe.Until)
		assert.Empty(t, rig.clk.Pending())
		assert.Equal(t, 1, api.count())
	})
	t.Run("a pause no server asked for: an OpenError", func(t *testing.T) {
		api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
			return brkRespond(529, brkAPIError("overloaded_error")), nil
		}}
		rig := brkSetup(api, false, tollgate.WithMaxPause(100*time.Millisecond))
		for range tollgate.DefaultBreakerThreshold {
			_, _ = brkDo(context.Background(), rig.client)
		}
		_, err := brkDo(context.Background(), rig.client)
		oe := brkRequireOpenError(t, err)
		assert.Equal(t, "overloaded", oe.Reason)
		assert.Equal(t, tollgate.DefaultBreakerThreshold, api.count())
	})
	t.Run("the pause is extended past the cap while waiting", func(t *testing.T) {
		api := &brkAPI{}
		release := make(chan struct{})
		api.script = func(n int, _ *http.Request) (*http.Response, error) {
			switch n {
			case 1:
				<-release
				return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "15"), nil
			case 2:
				return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "10"), nil
			}
			return brkRespond(200, brkOK), nil
		}
		rig := brkSetup(api, false, tollgate.WithMaxPause(20*time.Second))
		first := make(chan struct{})
		go func() { _, _ = brkDo(context.Background(), rig.client); close(first) }()
		require.Eventually(t, func() bool { return api.count() == 1 }, brkGuard, time.Millisecond)
		_, _ = brkDo(context.Background(), rig.client) // opens for 10s
		waiter := make(chan brkAnswer)
		go func() { waiter <- brkCall(context.Background(), rig.client) }()
		require.True(t, rig.clk.WaitForWaiters(1, brkGuard))
		rig.clk.Advance(9 * time.Second)
		close(release) // retry-after 15s, 9s later: open until 24s, 24s after the waiter came
		brkRecv(t, first, "the first call")
		rig.clk.Advance(time.Second)
		assert.Equal(t, "14", brkRequireReplayed(t, brkRecv(t, waiter, "the waiter"), api, 2), "open until 24 s, 10 s in")
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		api := retryAfter("30")
		rig := brkSetup(api, false)
		_, _ = brkDo(context.Background(), rig.client)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { _, err := brkDo(ctx, rig.client); done <- err }()
		require.True(t, rig.clk.WaitForWaiters(1, brkGuard))
		cancel()
		assert.ErrorIs(t, brkRecv(t, done, "the cancelled call"), context.Canceled)
		assert.Equal(t, 1, api.count())
		assert.Zero(t, rig.breaker(t).Waiting)
		assert.Empty(t, rig.clk.Pending(), "the wait was given up")
	})
}

func TestBreakerTripsOnConsecutiveFailures(t *testing.T) {
	type answer struct {
		status int
		err    error
	}
	answers := []answer{
		{status: 529},
		{status: 400}, // a client error does not count
		{err: context.Canceled},
		{err: syscall.ECONNRESET},
		{status: 503}, // the third failure: trip
		{status: 529}, // the first probe
		{status: 529}, // the second probe
		{status: 200}, // the third probe
	}
	api := &brkAPI{script: func(n int, req *http.Request) (*http.Response, error) {
		a := answers[min(n, len(answers))-1]
		if a.err == context.Canceled {
			return nil, req.Context().Err()
		}
		if a.err != nil {
			return nil, a.err
		}
		body := brkOK
		if a.status >= 400 {
			body = brkAPIError("overloaded_error")
		}
		return brkRespond(a.status, body), nil
	}}
	rig := brkSetup(api, false, tollgate.WithFailFast(), tollgate.WithBreakerThreshold(3),
		tollgate.WithBackoff(time.Second, 3*time.Second))
	ctx := context.Background()

	for i := range 5 {
		callCtx := ctx
		if i == 2 {
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			callCtx = cancelled
		}
		_, _ = brkDo(callCtx, rig.client)
		if i == 3 {
			b := rig.breaker(t)
			assert.Equal(t, tollgate.BreakerClosed, b.State)
			assert.Equal(t, uint32(2), b.Counts.ConsecutiveFailures)
			assert.Equal(t, uint32(2), b.Counts.Excluded, "the 400 and the cancelled attempt")
		}
	}
	require.Equal(t, 5, api.count())

	_, err := brkDo(ctx, rig.client)
	oe := brkRequireOpenError(t, err)
	assert.Equal(t, brkEpoch.Add(time.Second), oe.Until, "open for the backoff base")
	assert.Equal(t, "server error", oe.Reason)

	for _, open := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		rig.clk.Advance(open)
		_, _ = brkDo(ctx, rig.client) // the probe
	}
	assert.Equal(t, 8, api.count(), "one probe per opening")
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerClosed, b.State)
	assert.Equal(t, []string{
		"closed→open +1s server error",
		"open→half-open server error",
		"half-open→open +3s overloaded", // 1s + 2s
		"open→half-open overloaded",
		"half-open→open +6s overloaded", // 3s + 3s (capped)
		"open→half-open overloaded",
		"half-open→closed",
	}, rig.nextEvents(t, 7))
	rig.noMoreEvents(t)
}

func TestBreakerStaleResults(t *testing.T) {
	arrived := make(chan int, 3)
	release := [3]chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{})}
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1: // admitted while closed, answered after the breaker tripped
			arrived <- n
			<-release[0]
			return brkRespond(200, brkOK), nil
		case 2: // admitted while closed, answered after it closed again
			arrived <- n
			<-release[1]
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "20"), nil
		case 3:
			return brkRespond(529, brkAPIError("overloaded_error")), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false, tollgate.WithFailFast(), tollgate.WithBreakerThreshold(1))
	ctx := context.Background()
	done := make(chan struct{}, 2)
	for range 2 {
		go func() { _, _ = brkDo(ctx, rig.client); done <- struct{}{} }()
		brkRecv(t, arrived, "a slow request")
	}
	_, _ = brkDo(ctx, rig.client) // 529: trips
	assert.Equal(t, tollgate.BreakerOpen, rig.breaker(t).State)

	close(release[0])
	brkRecv(t, done, "the first slow call")
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State, "a success admitted before the trip does not count")
	assert.Zero(t, b.Counts.Successes)

	rig.clk.Advance(tollgate.DefaultBackoffBase)
	status, err := brkDo(ctx, rig.client) // the probe
	require.NoError(t, err)
	require.Equal(t, 200, status)
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State)

	close(release[1])
	brkRecv(t, done, "the second slow call")
	b = rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State, "a wait the server asked for holds whenever it arrives")
	assert.Equal(t, rig.clk.Now().Add(20*time.Second), b.OpenUntil)
}

func TestBreakerExtendingKeepsTheLaterDeadline(t *testing.T) {
	retryAfter := []string{"10", "5", "20"}
	arrived := make(chan int, len(retryAfter))
	var release [3]chan struct{}
	for i := range release {
		release[i] = make(chan struct{})
	}
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		arrived <- n
		<-release[n-1]
		return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", retryAfter[n-1]), nil
	}}
	rig := brkSetup(api, false)
	done := make(chan struct{})
	for range 3 {
		go func() { _, _ = brkDo(context.Background(), rig.client); done <- struct{}{} }()
		brkRecv(t, arrived, "a request")
	}
	for i, want := range []time.Duration{10 * time.Second, 10 * time.Second, 20 * time.Second} {
		close(release[i])
		brkRecv(t, done, "a call")
		assert.Equal(t, brkEpoch.Add(want), rig.breaker(t).OpenUntil)
	}
	assert.Equal(t, []string{"closed→open +10s retry-after", "open→open +20s retry-after"}, rig.nextEvents(t, 2))
	rig.noMoreEvents(t)
}

func TestBreakerPausesForTheRefillOfTheNextRequest(t *testing.T) {
	reset := brkEpoch.Add(time.Minute).Format(time.RFC3339)
	limits := func(requestsRemaining, inputRemaining string) []string {
		return []string{
			"anthropic-ratelimit-requests-limit", "60",
			"anthropic-ratelimit-requests-remaining", requestsRemaining,
			"anthropic-ratelimit-requests-reset", reset,
			"anthropic-ratelimit-input-tokens-limit", "30000",
			"anthropic-ratelimit-input-tokens-remaining", inputRemaining,
			"anthropic-ratelimit-input-tokens-reset", reset,
			// the most restrictive token limit, rounded down to thousands
			"anthropic-ratelimit-tokens-limit", "30000",
			"anthropic-ratelimit-tokens-remaining", "0",
			"anthropic-ratelimit-tokens-reset", reset,
		}
	}
	const used = `{"id":"msg_1","type":"message","usage":{"input_tokens":2000,"output_tokens":100}}`
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1: // plenty left; teaches what a request costs
			return brkRespond(200, used, limits("10", "20000")...), nil
		case 2: // 200 input tokens left, read as up to 1200 (rounded), 2000 needed: 800 to refill at 500/s
			return brkRespond(200, used, limits("10", "200")...), nil
		case 3: // no request left: one to refill at one a second
			return brkRespond(200, used, limits("0", "20000")...), nil
		}
		return brkRespond(200, used, limits("10", "20000")...), nil
	}}
	rig := brkSetup(api, false)
	ctx := context.Background()

	_, err := brkDo(ctx, rig.client)
	require.NoError(t, err)
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerClosed, b.State)
	assert.Equal(t, 2000.0, b.TypicalInputTokens)
	assert.Equal(t, 100.0, b.TypicalOutputTokens)

	_, err = brkDo(ctx, rig.client)
	require.NoError(t, err)
	b = rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State)
	assert.Equal(t, brkEpoch.Add(1600*time.Millisecond), b.OpenUntil, "the refill of one request, not the reset a minute away")

	wait := func(want time.Duration) {
		t.Helper()
		done := make(chan struct{})
		go func() { _, _ = brkDo(ctx, rig.client); close(done) }()
		require.True(t, rig.clk.WaitForWaiters(1, brkGuard))
		assert.Equal(t, []time.Duration{want}, rig.clk.Pending())
		rig.clk.Advance(want)
		brkRecv(t, done, "the waiting call")
	}
	wait(1600 * time.Millisecond) // the probe, answered with no request left
	assert.Equal(t, rig.clk.Now().Add(time.Second), rig.breaker(t).OpenUntil)
	wait(time.Second)
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State)
	records := rig.usage()
	require.Len(t, records, 4)
	assert.Equal(t, 1600*time.Millisecond, records[2].Waits.Pause)
	assert.Equal(t, time.Second, records[3].Waits.Pause)
	assert.Equal(t, []string{
		"closed→open +1.6s input-tokens refill",
		"open→half-open input-tokens refill",
		"half-open→open +2.6s requests refill",
		"open→half-open requests refill",
		"half-open→closed",
	}, rig.nextEvents(t, 5))
	rig.noMoreEvents(t)
}

func TestBreakerCountsAnOverloadedErrorMidStream(t *testing.T) {
	stream := brkMessageStart + brkOverloadedEvent
	api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
		return brkRespond(200, stream, "content-type", "text/event-stream"), nil
	}}
	rig := brkSetup(api, false, tollgate.WithFailFast(), tollgate.WithBreakerThreshold(2))
	ctx := context.Background()
	for range 2 {
		a := brkCall(ctx, rig.client)
		require.NoError(t, a.err)
		assert.Equal(t, 200, a.status)
		assert.Equal(t, stream, a.body, "the stream reaches the caller unchanged")
	}
	_, err := brkDo(ctx, rig.client)
	oe := brkRequireOpenError(t, err)
	assert.Equal(t, "overloaded", oe.Reason)
	assert.Equal(t, 2, api.count())
	assert.Equal(t, 1, rig.breaker(t).ConsecutiveTrips)
}

// A half-open breaker's probe that answers 200 and then says, before any
// content, that the server is overloaded has failed: the breaker opens
// again, and the callers that waited for the probe's verdict wait for the
// next opening instead of going to the overloaded server. A probe whose
// stream delivers content closes the breaker at once, while the stream
// still runs.
func TestBreakerProbeIsJudgedByItsStreamsFirstOutput(t *testing.T) {
	probes := []*brkStream{brkNewStream(), brkNewStream()}
	probeSent := make(chan int, len(probes))
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "1"), nil
		case 2, 3:
			probeSent <- n
			return probes[n-2].response(), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false)
	ctx := context.Background()
	_, err := brkDo(ctx, rig.client)
	require.NoError(t, err)

	const callers = 5
	answers := make(chan brkAnswer, callers)
	for range callers {
		go func() { answers <- brkCall(ctx, rig.client) }()
	}
	require.True(t, rig.clk.WaitForWaiters(callers, brkGuard))
	rig.clk.Advance(time.Second)
	assert.Equal(t, 2, brkRecv(t, probeSent, "the first probe"))
	require.Eventually(t, func() bool { return rig.breaker(t).Waiting == callers-1 || api.count() > 2 }, brkGuard, time.Millisecond)
	require.Equal(t, 2, api.count(), "the others wait for the probe's verdict")

	probes[0].send(t, brkMessageStart)
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerHalfOpen, b.State, "a 200 and a message_start are no verdict yet")
	assert.Equal(t, callers-1, b.Waiting)
	assert.Equal(t, 2, api.count())

	probes[0].send(t, brkOverloadedEvent)
	probes[0].end()
	a := brkRecv(t, answers, "the first probe's caller")
	require.NoError(t, a.err)
	assert.Equal(t, 200, a.status)
	assert.Equal(t, brkMessageStart+brkOverloadedEvent, a.body, "the stream reaches its caller unchanged")
	b = rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State, "the probe failed: open again")
	assert.Equal(t, "overloaded", b.Reason)
	assert.Equal(t, 2, b.ConsecutiveTrips)
	assert.Equal(t, rig.clk.Now().Add(2*tollgate.DefaultBackoffBase), b.OpenUntil, "the second opening lasts twice the backoff base")
	require.True(t, rig.clk.WaitForWaiters(callers-1, brkGuard), "those that waited for the probe wait for the next opening")
	for _, d := range rig.clk.Pending() {
		assert.Equal(t, 2*tollgate.DefaultBackoffBase, d)
	}
	assert.Equal(t, 2, api.count(), "nobody was released into the storm")

	rig.clk.Advance(2 * tollgate.DefaultBackoffBase)
	assert.Equal(t, 3, brkRecv(t, probeSent, "the second probe"))
	require.Eventually(t, func() bool { return rig.breaker(t).Waiting == callers-2 || api.count() > 3 }, brkGuard, time.Millisecond)
	require.Equal(t, 3, api.count(), "the others wait for the second probe's verdict")
	probes[1].send(t, brkMessageStart, brkBlockStart)
	assert.Equal(t, tollgate.BreakerHalfOpen, rig.breaker(t).State)
	assert.Equal(t, 3, api.count())
	probes[1].send(t, brkBlockDelta)
	for range callers - 2 {
		a := brkRecv(t, answers, "a caller that waited for the second probe")
		require.NoError(t, a.err)
		assert.Equal(t, 200, a.status)
	}
	assert.Equal(t, 1+callers, api.count(), "released by the probe's first output, before its stream ended")
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State)
	probes[1].send(t, brkStreamEnd)
	probes[1].end()
	a = brkRecv(t, answers, "the second probe's caller")
	require.NoError(t, a.err)
	assert.Equal(t, brkMessageStart+brkBlockStart+brkBlockDelta+brkStreamEnd, a.body)

	assert.Equal(t, []string{
		"closed→open +1s retry-after",
		"open→half-open retry-after",
		"half-open→open +2s overloaded",
		"open→half-open overloaded",
		"half-open→closed",
	}, rig.nextEvents(t, 5))
	rig.noMoreEvents(t)
}

// A probe that answers JSON is judged at its headers: the breaker closes
// before its caller reads the body.
func TestBreakerJSONProbeIsJudgedAtItsHeaders(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "1"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false, tollgate.WithFailFast())
	_, err := brkDo(context.Background(), rig.client)
	require.NoError(t, err)
	rig.clk.Advance(time.Second)
	req, err := http.NewRequest(http.MethodPost, brkURL, strings.NewReader(brkBody))
	require.NoError(t, err)
	resp, err := rig.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State, "closed before the body was read")
	status, err := brkDo(context.Background(), rig.client)
	require.NoError(t, err, "another call goes while the probe's body is unread")
	assert.Equal(t, 200, status)
}

func TestBreakerProbeThatIsNoVerdictLetsTheNextProbe(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "1"), nil
		case 2:
			return brkRespond(400, brkAPIError("invalid_request_error")), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false, tollgate.WithFailFast())
	ctx := context.Background()
	_, _ = brkDo(ctx, rig.client)
	rig.clk.Advance(time.Second)
	status, _ := brkDo(ctx, rig.client)
	assert.Equal(t, 400, status)
	assert.Equal(t, tollgate.BreakerHalfOpen, rig.breaker(t).State)
	status, err := brkDo(ctx, rig.client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State)
}

func TestBreakerManyWaitersAllResume(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "3"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	rig := brkSetup(api, false)
	ctx := context.Background()
	_, _ = brkDo(ctx, rig.client)

	const waiters = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range waiters {
		wg.Go(func() {
			status, err := brkDo(ctx, rig.client)
			assert.NoError(t, err)
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		})
	}
	require.True(t, rig.clk.WaitForWaiters(waiters, brkGuard))
	rig.clk.Advance(3 * time.Second)
	brkWithin(t, "the waiters", wg.Wait)
	assert.Equal(t, map[int]int{200: waiters}, statuses)
	assert.Equal(t, 1+waiters, api.count())
	// goleak (TestMain) checks that no goroutine is left behind.
}

// A Breaker layer alone in a chain gets an Observe layer under it, so it
// judges responses by their headers and learns from their usage.
func TestBreakerAloneJudgesTheResponse(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "2"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	clk := fakeclock.New(brkEpoch)
	s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithFailFast())
	client := &http.Client{Transport: tollgate.Chain(api, tollgate.Breaker(s))}
	_, _ = brkDo(context.Background(), client)
	_, err := brkDo(context.Background(), client)
	oe := brkRequireOpenError(t, err)
	assert.Equal(t, brkEpoch.Add(2*time.Second), oe.Until)
	clk.Advance(2 * time.Second)
	status, err := brkDo(context.Background(), client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	b := brkBreakerOf(t, s, brkKey)
	assert.Equal(t, tollgate.BreakerClosed, b.State)
	assert.Equal(t, 12.0, b.TypicalInputTokens, "the usage was read")
}

func TestBreakerOpenErrorIsErrOpen(t *testing.T) {
	assert.ErrorIs(t, fmt.Errorf("wrapped: %w", &tollgate.OpenError{}), tollgate.ErrOpen)
}

// A callback that blocks holds up the callbacks after it, which run in
// order, one at a time: never a call, its body read or a breaker verdict.
func TestBreakerBlockingStateChangeCallbackStallsNoCall(t *testing.T) {
	entered := make(chan tollgate.BreakerEvent, 16)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	stream := brkNewStream()
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "1"), nil
		case 2: // the probe
			return stream.response(), nil
		case 4: // trips the breaker (threshold 1) while its body is read
			return brkRespond(200, brkMessageStart+brkOverloadedEvent, "content-type", "text/event-stream"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	var rig *brkRig
	rig = brkSetup(api, false, tollgate.WithBreakerThreshold(1), tollgate.WithBreakerStateChange(func(ev tollgate.BreakerEvent) {
		_ = rig.state.Snapshot() // no lock is held
		entered <- ev
		<-release
	}))
	ctx := context.Background()

	var status int
	brkWithin(t, "a call whose answer opens the breaker", func() { status, _ = brkDo(ctx, rig.client) })
	assert.Equal(t, 429, status)
	assert.Equal(t, "closed→open +1s retry-after", brkEventString(brkRecv(t, entered, "the first callback")))
	// The callback now blocks until release.

	rig.clk.Advance(time.Second)
	probe := make(chan brkAnswer, 1)
	go func() { probe <- brkCall(ctx, rig.client) }()
	stream.send(t, brkMessageStart, brkBlockStart, brkBlockDelta) // the verdict: closed
	stream.send(t, brkStreamEnd)
	stream.end()
	a := brkRecv(t, probe, "the probe's body read")
	require.NoError(t, a.err)
	assert.Equal(t, brkMessageStart+brkBlockStart+brkBlockDelta+brkStreamEnd, a.body)
	assert.Equal(t, tollgate.BreakerClosed, rig.breaker(t).State)

	brkWithin(t, "a call through the closed breaker", func() { status, _ = brkDo(ctx, rig.client) })
	assert.Equal(t, 200, status)
	var mid brkAnswer
	brkWithin(t, "a call whose body read opens the breaker", func() { mid = brkCall(ctx, rig.client) })
	require.NoError(t, mid.err)
	assert.Equal(t, brkMessageStart+brkOverloadedEvent, mid.body)
	assert.Equal(t, tollgate.BreakerOpen, rig.breaker(t).State)

	select {
	case ev := <-entered:
		t.Fatalf("a second callback ran while the first blocked: %s", brkEventString(ev))
	default:
	}
	unblock()
	var got []string
	for range 3 {
		got = append(got, brkEventString(brkRecv(t, entered, "the queued callbacks")))
	}
	assert.Equal(t, []string{
		"open→half-open retry-after",
		"half-open→closed",
		"closed→open +1.5s overloaded",
	}, got, "the changes held up come in order")
}

// brkSpans records the spans of a Trace layer.
type brkSpans struct {
	rec *tracetest.SpanRecorder
	tp  *sdktrace.TracerProvider
}

func brkTracing(t *testing.T) *brkSpans {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &brkSpans{rec: rec, tp: tp}
}

// call returns the ended span of the n-th call (1-based) and the ended
// spans of its attempts, first attempt first.
func (s *brkSpans) call(t *testing.T, n int) (sdktrace.ReadOnlySpan, []sdktrace.ReadOnlySpan) {
	t.Helper()
	var calls []sdktrace.ReadOnlySpan
	for _, span := range s.rec.Ended() {
		if !span.Parent().IsValid() {
			calls = append(calls, span)
		}
	}
	require.GreaterOrEqual(t, len(calls), n, "the call's span ended")
	call := calls[n-1]
	var attempts []sdktrace.ReadOnlySpan
	for _, span := range s.rec.Ended() {
		if span.Parent().SpanID() == call.SpanContext().SpanID() {
			attempts = append(attempts, span)
		}
	}
	slices.SortFunc(attempts, func(a, b sdktrace.ReadOnlySpan) int {
		return cmp.Compare(brkAttr(a.Attributes(), "tollgate.attempt").AsInt64(), brkAttr(b.Attributes(), "tollgate.attempt").AsInt64())
	})
	return call, attempts
}

// brkAttr returns the value of key among attrs.
func brkAttr(attrs []attribute.KeyValue, key string) attribute.Value {
	for _, kv := range attrs {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// brkChanges returns the breaker changes recorded on span, as
// "from→to reason".
func brkChanges(span sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, ev := range span.Events() {
		if ev.Name == "tollgate.breaker.state_change" {
			out = append(out, strings.TrimSpace(fmt.Sprintf("%s→%s %s",
				brkAttr(ev.Attributes, "tollgate.breaker.from").AsString(),
				brkAttr(ev.Attributes, "tollgate.breaker.to").AsString(),
				brkAttr(ev.Attributes, "tollgate.breaker.reason").AsString())))
		}
	}
	return out
}

// A breaker change is recorded on the span of the attempt that caused or
// noticed it, by the time that attempt is over.
func TestBreakerRecordsItsChangesOnTheAttemptSpan(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "1"), nil
		}
		return brkRespond(200, brkOK), nil
	}}
	spans := brkTracing(t)
	rig := brkSetup(api, false, tollgate.WithTracerProvider(spans.tp), tollgate.WithFailFast())
	status, err := brkDo(context.Background(), rig.client)
	require.NoError(t, err)
	require.Equal(t, 429, status)
	call, attempts := spans.call(t, 1)
	require.Len(t, attempts, 1)
	assert.Equal(t, []string{"closed→open retry-after"}, brkChanges(attempts[0]), "the attempt that drew the 429")
	assert.Empty(t, brkChanges(call))

	rig.clk.Advance(time.Second)
	status, err = brkDo(context.Background(), rig.client)
	require.NoError(t, err)
	require.Equal(t, 200, status)
	_, attempts = spans.call(t, 2)
	require.Len(t, attempts, 1)
	assert.Equal(t, []string{"open→half-open retry-after", "half-open→closed"}, brkChanges(attempts[0]), "the probe")
}

// brkTickingClock is a fake clock whose every reading is a microsecond
// after the last, as a real clock's would be.
type brkTickingClock struct {
	*fakeclock.Clock
}

func (c brkTickingClock) Now() time.Time {
	c.Advance(time.Microsecond)
	return c.Clock.Now()
}

// An attempt the breaker refuses without sending it is complete at once:
// its span ends when it is refused, whatever the call does next, and a call
// that ends with the refusal ends too.
func TestBreakerRefusedAttemptCompletes(t *testing.T) {
	tooMany := func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return brkRespond(429, brkAPIError("rate_limit_error"), "retry-after", "10"), nil
		}
		return brkRespond(200, brkOK), nil
	}
	t.Run("an OpenError", func(t *testing.T) {
		// Each reading of the clock is later than the last, so that the
		// span of an attempt that ended with the call would end when the
		// call's did, not before.
		clk := brkTickingClock{fakeclock.New(brkEpoch)}
		spans := brkTracing(t)
		s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithTracerProvider(spans.tp), tollgate.WithFailFast(),
			tollgate.WithMaxWait(5*time.Second)) // shorter than the retry-after: no retry
		client := &http.Client{Transport: tollgate.Chain(&brkAPI{script: tooMany},
			tollgate.Trace(s), tollgate.Retry(s), tollgate.Breaker(s))}
		status, err := brkDo(context.Background(), client)
		require.NoError(t, err)
		require.Equal(t, 429, status)

		_, err = brkDo(context.Background(), client)
		brkRequireOpenError(t, err)
		call, attempts := spans.call(t, 2)
		require.Len(t, attempts, 1)
		refused := attempts[0]
		assert.Equal(t, "circuit_open", brkAttr(refused.Attributes(), "error.type").AsString())
		assert.True(t, refused.EndTime().Before(call.EndTime()), "the attempt ended when it was refused (%s), before its call (%s)",
			refused.EndTime().Sub(brkEpoch), call.EndTime().Sub(brkEpoch))
	})
	t.Run("the server's 429 replayed", func(t *testing.T) {
		clk := fakeclock.New(brkEpoch)
		spans := brkTracing(t)
		api := &brkAPI{script: tooMany}
		s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithTracerProvider(spans.tp),
			tollgate.WithMaxPause(5*time.Second)) // shorter than the retry-after: replayed
		client := &http.Client{Transport: tollgate.Chain(api, tollgate.Trace(s), tollgate.Retry(s), tollgate.Breaker(s))}
		// The first call cannot wait for a retry: it gets the 429.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		status, err := brkDo(ctx, client)
		require.NoError(t, err)
		require.Equal(t, 429, status)

		// The second is answered with the 429 again, retries when its
		// retry-after is over, and gets through.
		done := make(chan brkAnswer, 1)
		go func() { done <- brkCall(context.Background(), client) }()
		require.True(t, clk.WaitForWaiters(1, brkGuard))
		assert.Equal(t, []time.Duration{10 * time.Second}, clk.Pending(), "Retry waits out the replayed retry-after")
		assert.Equal(t, 1, api.count())
		clk.Advance(10 * time.Second)
		a := brkRecv(t, done, "the second call")
		require.NoError(t, a.err)
		assert.Equal(t, 200, a.status)

		call, attempts := spans.call(t, 2)
		require.Len(t, attempts, 2)
		refused := attempts[0]
		assert.Equal(t, int64(429), brkAttr(refused.Attributes(), "http.response.status_code").AsInt64())
		assert.Equal(t, brkEpoch, refused.EndTime(), "the refused attempt ended when it was refused")
		assert.Equal(t, brkEpoch.Add(10*time.Second), attempts[1].EndTime())
		assert.Equal(t, brkEpoch.Add(10*time.Second), call.EndTime())
	})
	t.Run("the server's 429 replayed ends the call", func(t *testing.T) {
		clk := fakeclock.New(brkEpoch)
		spans := brkTracing(t)
		s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithTracerProvider(spans.tp),
			tollgate.WithMaxWait(5*time.Second)) // shorter than the retry-after: replayed, not retried
		client := &http.Client{Transport: tollgate.Chain(&brkAPI{script: tooMany},
			tollgate.Trace(s), tollgate.Retry(s), tollgate.Breaker(s))}
		_, _ = brkDo(context.Background(), client)
		a := brkCall(context.Background(), client)
		require.NoError(t, a.err)
		require.Equal(t, "true", a.header.Get(tollgate.ReplayedHeader))
		call, attempts := spans.call(t, 2)
		require.Len(t, attempts, 1)
		assert.Equal(t, int64(429), brkAttr(call.Attributes(), "http.response.status_code").AsInt64())
		assert.Equal(t, int64(429), brkAttr(attempts[0].Attributes(), "http.response.status_code").AsInt64())
	})
}

// brkFleet runs work(0) … work(n-1) in goroutines on s while playing the
// fake clock: when every goroutine still running waits, the clock moves on
// to the next wait. Time moves only then, so no test sleeps and the
// simulated minutes take milliseconds.
//
// A goroutine waits on the clock (a think time, a backoff, an open breaker,
// the head of the Budget layer's queue waiting for a refill), for a probe's
// verdict, or behind the head of the Budget layer's queue. The last two are
// read from the snapshot: when the breaker is half-open with its probe
// admitted, every attempt the breaker counts as waiting waits for the
// probe's verdict (or is about to, without reading the clock); every
// attempt queued behind the Budget layer's head waits for it.
func brkFleet(t *testing.T, clk *fakeclock.Clock, s *tollgate.State, n int, work func(i int)) {
	t.Helper()
	var live atomic.Int32
	live.Store(int32(n))
	ended := make(chan struct{}, n)
	for i := range n {
		go func() {
			defer func() { live.Add(-1); ended <- struct{}{} }()
			work(i)
		}()
	}
	offTheClock := func() int {
		ks, ok := s.Snapshot().Key(brkKey)
		if !ok {
			return 0
		}
		waiting := max(ks.Budget.Waiting-1, 0)
		if b := ks.Breaker; b.State == tollgate.BreakerHalfOpen && b.Counts.Requests > 0 {
			waiting += b.Waiting
		}
		return waiting
	}
	stuck := time.NewTimer(20 * time.Second) // a guard against a broken test, not a timing assumption
	defer stuck.Stop()
	for finished := 0; finished < n; {
		changed := clk.Changed()
		if running := live.Load(); running > 0 && len(clk.Pending())+offTheClock() >= int(running) {
			select {
			case <-changed: // a wait was added or dropped meanwhile: look again
			default:
				clk.AdvanceToNext()
			}
			continue
		}
		select {
		case <-ended:
			finished++
		case <-changed:
		case <-time.After(time.Millisecond): // a goroutine may have started waiting off the clock
		case <-stuck.C:
			t.Fatalf("the fleet is stuck: %d running, waits pending %v, %d off the clock", live.Load(), clk.Pending(), offTheClock())
		}
	}
}

// brkFleetRun is what a fleet run saw, on both sides.
type brkFleetRun struct {
	server   tollgatetest.Stats
	wire     []brkWireAnswer // every answer, as the base transport saw it
	failed   int             // calls that did not end in a 200
	events   []tollgate.BreakerEvent
	breaker  tollgate.BreakerSnapshot
	duration time.Duration // on the fake clock
}

type brkWireAnswer struct {
	at         time.Duration // since brkEpoch
	status     int
	retryAfter time.Duration
}

// brkWire is a base transport that records every answer.
type brkWire struct {
	next http.RoundTripper
	clk  *fakeclock.Clock
	mu   sync.Mutex
	log  []brkWireAnswer
}

func (w *brkWire) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := w.next.RoundTrip(req)
	if err == nil {
		var ra time.Duration
		if ms, err := strconv.ParseFloat(resp.Header.Get("Retry-After-Ms"), 64); err == nil {
			ra = time.Duration(ms * float64(time.Millisecond))
		} else if s, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil {
			ra = time.Duration(s * float64(time.Second))
		}
		w.mu.Lock()
		w.log = append(w.log, brkWireAnswer{w.clk.Now().Sub(brkEpoch), resp.StatusCode, ra})
		w.mu.Unlock()
	}
	return resp, err
}

func (w *brkWire) answers() []brkWireAnswer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]brkWireAnswer(nil), w.log...)
}

// brkFleetClient is the tollgate chain (Trace left out) over a recording
// base, with or without the breaker. events returns the state changes
// delivered so far.
func brkFleetClient(t *testing.T, clk *fakeclock.Clock, breaker bool) (*tollgate.State, *http.Client, *brkWire, func() []tollgate.BreakerEvent) {
	var mu sync.Mutex
	var events []tollgate.BreakerEvent
	s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithBreakerStateChange(func(ev tollgate.BreakerEvent) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	layers := []tollgate.Middleware{tollgate.Retry(s), tollgate.Breaker(s), tollgate.Budget(s)}
	if !breaker {
		layers = []tollgate.Middleware{tollgate.Retry(s), tollgate.Budget(s)}
	}
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	wire := &brkWire{next: base, clk: clk}
	return s, &http.Client{Transport: tollgate.Chain(wire, layers...)}, wire, func() []tollgate.BreakerEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]tollgate.BreakerEvent(nil), events...)
	}
}

func brkFleetBreaker(s *tollgate.State) tollgate.BreakerSnapshot {
	ks, _ := s.Snapshot().Key(brkKey)
	return ks.Breaker
}

// A fleet of agents shares one key with another consumer that now and then
// drains the requests bucket below zero. Through the breaker the first
// request to meet a drain draws a 429 and the others pause with it for its
// retry-after, then go one probe at a time at the bucket's refill rate; no
// call fails. Without the breaker more agents meet each drain on their own.
func TestBreakerFleetBesideADrainingNeighbour(t *testing.T) {
	const (
		agents = 4
		calls  = 16
		think  = 4 * time.Second // between an agent's calls: the fleet wants 1 request/s of the 2/s
		drains = 3
	)
	run := func(t *testing.T, breaker bool) brkFleetRun {
		clk := fakeclock.New(brkEpoch)
		srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 120, Now: clk.Now})
		t.Cleanup(srv.Close)
		s, client, wire, events := brkFleetClient(t, clk, breaker)
		var failed atomic.Int32
		brkFleet(t, clk, s, agents+1, func(i int) {
			if i == agents { // the neighbour: every 30s, what is left and 30 requests more
				for range drains {
					// Off the round instants the agents' waits end at, so
					// that a drain never ties with a request on the fake
					// clock.
					<-clk.After(30*time.Second + 7*time.Millisecond)
					srv.Consume(srv.Limits().Requests.Remaining+30, 0, 0)
				}
				return
			}
			<-clk.After(time.Duration(i) * time.Second)
			for range calls {
				if status, err := brkSend(context.Background(), client, srv.URL+"/v1/messages"); err != nil || status != 200 {
					failed.Add(1)
				}
				<-clk.After(think + time.Duration(i)*111*time.Millisecond)
			}
		})
		return brkFleetRun{server: srv.Stats(), wire: wire.answers(), failed: int(failed.Load()), events: events(),
			breaker: brkFleetBreaker(s), duration: clk.Now().Sub(brkEpoch)}
	}

	with := run(t, true)
	without := run(t, false)
	t.Logf("with the breaker: %d requests, %d 429s, %d failed calls, %s", with.server.Requests, with.server.RateLimited, with.failed, with.duration)
	t.Logf("without: %d requests, %d 429s, %d failed calls, %s", without.server.Requests, without.server.RateLimited, without.failed, without.duration)

	assert.Zero(t, with.failed, "no call fails")
	assert.Equal(t, agents*calls, with.server.OK)
	assert.Greater(t, without.server.RateLimited, with.server.RateLimited,
		"without the breaker more agents meet each drain than the one whose 429 pauses the others")
	// The breaker's part: after a 429 nothing reaches the server until its
	// retry-after is over, and then one probe goes first. (Those let through
	// together when the probe closes the breaker are the Budget layer's to
	// pace, against the remaining the probe saw: without it, a drain costs a
	// 429 or two more.)
	for i, a := range with.wire {
		for _, later := range with.wire[i+1:] {
			if a.status == 429 && later.at > a.at {
				assert.GreaterOrEqual(t, later.at, a.at+a.retryAfter, "a request was sent at %s, inside the retry-after of the 429 at %s", later.at, a.at)
			}
		}
	}
	if !assert.LessOrEqual(t, with.server.RateLimited, drains, "at most one 429 per drain") {
		for _, a := range with.wire {
			t.Logf("at %s: %d (retry-after %s)", a.at, a.status, a.retryAfter)
		}
	}
	assert.NotEqual(t, tollgate.BreakerOpen, with.breaker.State)
}

// A 529 storm: the breaker trips after the threshold, lets one probe through
// per opening (the openings growing), and closes when the storm is over;
// the overloaded server sees a fraction of what the retries alone send.
func TestBreakerOverloadStorm(t *testing.T) {
	const (
		agents    = 8
		successes = 2 // each agent calls until it has this many answers
		storm     = 30 * time.Second
	)
	run := func(t *testing.T, breaker bool) brkFleetRun {
		clk := fakeclock.New(brkEpoch)
		stormEnd := brkEpoch.Add(storm)
		srv := tollgatetest.NewServer(tollgatetest.Config{Now: clk.Now, FaultFunc: func(*http.Request, int) *tollgatetest.Fault {
			if clk.Now().Before(stormEnd) {
				return &tollgatetest.Fault{Status: 529}
			}
			return nil
		}})
		t.Cleanup(srv.Close)
		s, client, wire, events := brkFleetClient(t, clk, breaker)
		var failed atomic.Int32
		brkFleet(t, clk, s, agents, func(i int) {
			<-clk.After(time.Duration(i) * 100 * time.Millisecond)
			for ok := 0; ok < successes; {
				if status, err := brkSend(context.Background(), client, srv.URL+"/v1/messages"); err == nil && status == 200 {
					ok++
				} else {
					failed.Add(1)
				}
				<-clk.After(time.Second)
			}
		})
		if breaker {
			// The state changes reach the callback on a goroutine of their
			// own, in order: the closing is the last.
			require.Eventually(t, func() bool {
				evs := events()
				return len(evs) > 0 && evs[len(evs)-1].To == tollgate.BreakerClosed
			}, brkGuard, time.Millisecond, "the breaker's closing is reported")
		}
		return brkFleetRun{server: srv.Stats(), wire: wire.answers(), failed: int(failed.Load()), events: events(),
			breaker: brkFleetBreaker(s), duration: clk.Now().Sub(brkEpoch)}
	}

	with := run(t, true)
	without := run(t, false)
	t.Logf("with the breaker: %d requests, %d overloaded, %d failed calls, done after %s", with.server.Requests, with.server.Status[529], with.failed, with.duration)
	t.Logf("without: %d requests, %d overloaded, %d failed calls, done after %s", without.server.Requests, without.server.Status[529], without.failed, without.duration)

	// The agents start 100ms apart: nothing is in flight when it trips, so
	// the server sees the threshold's 529s, then one probe per opening (0.5,
	// 1, 2, 4, 8, 8 s… each failed probe doubling it) until one succeeds.
	require.NotEmpty(t, with.events)
	trip := with.events[0]
	assert.Equal(t, tollgate.BreakerOpen, trip.To)
	assert.Equal(t, "overloaded", trip.Reason)
	var beforeTrip, failedProbes int
	for _, a := range with.wire {
		if a.status == 529 && !brkEpoch.Add(a.at).After(trip.At) {
			beforeTrip++
		}
	}
	for _, ev := range with.events {
		if ev.From == tollgate.BreakerHalfOpen && ev.To == tollgate.BreakerOpen {
			failedProbes++
			assert.Equal(t, "overloaded", ev.Reason)
		}
	}
	assert.Equal(t, tollgate.DefaultBreakerThreshold, beforeTrip, "it trips on the threshold-th consecutive overload")
	assert.Equal(t, tollgate.DefaultBreakerThreshold+failedProbes, with.server.Status[529], "one probe per opening")
	assert.Equal(t, tollgate.BreakerClosed, with.events[len(with.events)-1].To)
	assert.GreaterOrEqual(t, without.server.Status[529], 5*with.server.Status[529], "far fewer requests reach the overloaded server")
	assert.Equal(t, agents*successes, with.server.OK)
	assert.Equal(t, tollgate.BreakerClosed, with.breaker.State, "it recovers when the storm ends")
	assert.Zero(t, with.breaker.ConsecutiveTrips)
	assert.Less(t, with.duration, storm+tollgate.DefaultBackoffMax+10*time.Second, "recovered within one opening of the storm's end")
}

func TestBreakerTripHonoursTheServersWait(t *testing.T) {
	// Five 529s, each asking for 5 ms: the trip pauses for what the server
	// asked, not for the breaker's own backoff (500 ms and growing).
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		return brkRespond(529, brkAPIError("overloaded_error"), "retry-after-ms", "5"), nil
	}}
	rig := brkSetup(api, false)
	for range tollgate.DefaultBreakerThreshold {
		status, err := brkDo(context.Background(), rig.client)
		require.NoError(t, err)
		require.Equal(t, 529, status)
	}
	b := rig.breaker(t)
	assert.Equal(t, tollgate.BreakerOpen, b.State)
	assert.Equal(t, brkEpoch.Add(5*time.Millisecond), b.OpenUntil)
}

func TestBreakerClosedRecordsNoPause(t *testing.T) {
	api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
		return brkRespond(200, `{"type":"message","usage":{"input_tokens":5,"output_tokens":1}}`), nil
	}}
	var mu sync.Mutex
	var records []tollgate.UsageRecord
	s := tollgate.NewState(tollgate.WithClock(brkTickingClock{fakeclock.New(brkEpoch)}),
		tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
			mu.Lock()
			records = append(records, rec)
			mu.Unlock()
		}))
	client := &http.Client{Transport: tollgate.Chain(api, tollgate.Trace(s), tollgate.Breaker(s))}
	for range 3 {
		status, err := brkDo(context.Background(), client)
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, records, 3)
	for i, rec := range records {
		assert.Zero(t, rec.Waits.Pause, "call %d passed a closed breaker: no pause", i)
		assert.Positive(t, rec.Duration, "the clock ticked")
	}
}
