package tollgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

const (
	brkURL  = "http://api.test/v1/messages"
	brkBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}`
	brkOK   = `{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`
)

var brkKey = Key{Provider: ProviderAnthropic, Family: "claude-sonnet-4"}

// brkAPI is an in-memory API: script answers the n-th request (1-based). It
// logs when each request arrives and when it is answered, and keeps the call
// record each request carried.
type brkAPI struct {
	script func(n int, req *http.Request) (*http.Response, error)

	mu    sync.Mutex
	n     int
	log   []string
	calls []*call
}

func (a *brkAPI) RoundTrip(req *http.Request) (*http.Response, error) {
	a.mu.Lock()
	a.n++
	n := a.n
	a.log = append(a.log, fmt.Sprint("arrive ", n))
	a.calls = append(a.calls, callFrom(req.Context()))
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

// respond builds a response; kv are header names and values.
func respond(status int, body string, kv ...string) *http.Response {
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

func apiError(typ string) string {
	return `{"type":"error","error":{"type":"` + typ + `","message":"` + typ + `"}}`
}

const spendLimitBody = `{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.",` +
	`"details":{"error_code":"enforced_spend_limit_reached"}}}`

// brkEvents records BreakerEvents as "from→to +until reason".
type brkEvents struct {
	mu   sync.Mutex
	list []string
}

func (e *brkEvents) add(ev BreakerEvent) {
	s := fmt.Sprintf("%s→%s", ev.From, ev.To)
	if !ev.Until.IsZero() {
		s += fmt.Sprintf(" +%s", ev.Until.Sub(testEpoch))
	}
	if ev.Reason != "" {
		s += " " + ev.Reason
	}
	e.mu.Lock()
	e.list = append(e.list, s)
	e.mu.Unlock()
}

func (e *brkEvents) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

// brkSetup returns a State on a fake clock and a client that sends through
// Breaker and Observe (with Retry outside when retry is set) to api.
func brkSetup(api http.RoundTripper, retry bool, opts ...Option) (*State, *fakeclock.Clock, *http.Client) {
	clk := fakeclock.New(testEpoch)
	s := NewState(append([]Option{WithClock(clk), withJitter(fullCeiling)}, opts...)...)
	layers := []Middleware{Breaker(s), Observe(s)}
	if retry {
		layers = append([]Middleware{Retry(s)}, layers...)
	}
	return s, clk, &http.Client{Transport: Chain(api, layers...)}
}

// brkDo sends one call and reads its body; it returns the status, or the
// error (unwrapped from the client's *url.Error).
func brkDo(ctx context.Context, client *http.Client) (int, error) {
	return brkSend(ctx, client, brkURL)
}

func brkSend(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(brkBody))
	if err != nil {
		return 0, err
	}
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, unwrapURLError(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func breakerOf(t *testing.T, s *State) BreakerSnapshot {
	t.Helper()
	ks, ok := s.Snapshot().Key(brkKey)
	require.True(t, ok, "the key is known")
	return ks.Breaker
}

func requireOpenError(t *testing.T, err error) *OpenError {
	t.Helper()
	require.ErrorIs(t, err, ErrOpen)
	var oe *OpenError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, brkKey, oe.Key)
	return oe
}

func TestBreakerRefillPause(t *testing.T) {
	now := testEpoch
	reading := func(limit, remaining int64, reset time.Duration) Reading {
		return Reading{Limit: limit, HasLimit: limit > 0, Remaining: remaining, HasRemaining: true, Reset: now.Add(reset)}
	}
	typical := typicalCost{input: 2000, output: 1500, seen: true}
	for _, tt := range []struct {
		name     string
		provider Provider
		sent     time.Duration // how long before now the attempt was sent
		limits   map[Dimension]Reading
		typical  typicalCost
		want     time.Duration
		short    Dimension
	}{
		{"enough everywhere", ProviderAnthropic, 0, map[Dimension]Reading{
			Requests: reading(60, 5, time.Minute), InputTokens: reading(30000, 1000, time.Minute)}, typical, 0, 0},
		{"no request left: the refill of one request, not the reset", ProviderAnthropic, 0, map[Dimension]Reading{
			Requests: reading(60, 0, 60*time.Second)}, typical, time.Second, Requests},
		{"input tokens short: the deficit, less the rounding, at the limit's rate", ProviderAnthropic, 0, map[Dimension]Reading{
			InputTokens: reading(30000, 200, time.Minute)}, typical, 1600 * time.Millisecond, InputTokens},
		{"the refill since the attempt was sent is no deficit", ProviderAnthropic, time.Second, map[Dimension]Reading{
			Requests: reading(60, 0, time.Minute), InputTokens: reading(30000, 200, time.Minute)}, typical,
			600 * time.Millisecond, InputTokens},
		{"a fleet at its limit, answered after two seconds, need not pause", ProviderAnthropic, 2 * time.Second, map[Dimension]Reading{
			Requests: reading(50, 0, time.Minute), InputTokens: reading(30000, 0, time.Minute)}, typical, 0, 0},
		{"never past the reset", ProviderAnthropic, 0, map[Dimension]Reading{
			InputTokens: reading(30000, 200, 100*time.Millisecond)}, typical, 100 * time.Millisecond, InputTokens},
		{"a reset in the past: the bucket is full", ProviderAnthropic, 0, map[Dimension]Reading{
			Requests: reading(60, 0, -time.Second)}, typical, 0, 0},
		{"no limit known: until the reset", ProviderAnthropic, 0, map[Dimension]Reading{
			OutputTokens: reading(0, 10, 3*time.Second)}, typical, 3 * time.Second, OutputTokens},
		{"the longest wait wins", ProviderAnthropic, 0, map[Dimension]Reading{
			Requests: reading(60, 0, time.Minute), OutputTokens: reading(4000, 0, time.Minute)}, typical,
			7500 * time.Millisecond, OutputTokens},
		{"before any usage one token is needed", ProviderOpenAI, 0, map[Dimension]Reading{
			Tokens: reading(60000, 0, time.Minute)}, typicalCost{}, time.Millisecond, Tokens},
		{"anthropic's tokens line repeats input or output: ignored", ProviderAnthropic, 0, map[Dimension]Reading{
			Tokens: reading(30000, 0, time.Minute), InputTokens: reading(30000, 1000, time.Minute)}, typical, 0, 0},
		{"openai's tokens are input plus output, exact", ProviderOpenAI, 0, map[Dimension]Reading{
			Tokens: reading(60000, 0, time.Minute)}, typical, 3500 * time.Millisecond, Tokens},
		{"unknown remaining is no reason to wait", ProviderOpenAI, 0, map[Dimension]Reading{
			Requests: {Limit: 60, HasLimit: true, Reset: now.Add(time.Minute)}}, typical, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := RateLimitHeaders{Provider: tt.provider, Observed: now}
			for d, r := range tt.limits {
				h.Limits[d] = r
			}
			got, short := refillPause(h, tt.typical, now.Add(-tt.sent), now)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.short, short)
		})
	}
}

func TestBreakerTypicalCostIsAMovingAverage(t *testing.T) {
	var tc typicalCost
	assert.Equal(t, 1.0, tc.need(InputTokens), "at least one token before any usage")
	assert.Equal(t, 1.0, tc.need(Requests))
	tc.add(Usage{InputTokens: 400, CacheCreationInputTokens: 100, CacheReadInputTokens: 9000, OutputTokens: 100, Reported: true})
	assert.Equal(t, 500.0, tc.need(InputTokens), "cache reads do not count against the input limit")
	assert.Equal(t, 100.0, tc.need(OutputTokens))
	assert.Equal(t, 600.0, tc.need(Tokens))
	tc.add(Usage{InputTokens: 1500, OutputTokens: 100, Reported: true})
	assert.InDelta(t, 700.0, tc.need(InputTokens), 1e-9)
}

func TestBreakerRetryAfterPausesEveryoneAndOneProbeGoesFirst(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return respond(429, apiError("rate_limit_error"), "retry-after", "10"), nil
		}
		return respond(200, brkOK), nil
	}}
	var events brkEvents
	s, clk, client := brkSetup(api, false, WithBreakerStateChange(events.add))
	ctx := context.Background()

	status, err := brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 429, status, "the caller that drew the 429 gets it")
	b := breakerOf(t, s)
	assert.Equal(t, BreakerOpen, b.State)
	assert.Equal(t, testEpoch.Add(10*time.Second), b.OpenUntil)
	assert.Equal(t, "retry-after", b.Reason)
	assert.Equal(t, 1, b.ConsecutiveTrips)

	const callers = 8
	statuses := make(chan int, callers)
	for range callers {
		go func() {
			status, err := brkDo(ctx, client)
			assert.NoError(t, err)
			statuses <- status
		}()
	}
	require.True(t, clk.WaitForWaiters(callers, 5*time.Second))
	assert.Equal(t, 1, api.count(), "nobody was sent while open")
	for _, d := range clk.Pending() {
		assert.Equal(t, 10*time.Second, d, "everyone waits until the retry-after")
	}
	clk.Advance(10 * time.Second)
	for range callers {
		assert.Equal(t, 200, <-statuses)
	}

	assert.Equal(t, 1+callers, api.count())
	assert.Equal(t, []string{"arrive 1", "answer 1", "arrive 2", "answer 2"}, api.log[:4],
		"the probe is answered before anyone else is sent")
	for _, c := range api.calls[1:] {
		assert.Equal(t, 10*time.Second, c.waits.Pause, "the pause is recorded in the call")
	}
	assert.Equal(t, []string{
		"closed→open +10s retry-after",
		"open→half-open retry-after",
		"half-open→closed",
	}, events.get())
	b = breakerOf(t, s)
	assert.Equal(t, BreakerClosed, b.State)
	assert.Zero(t, b.ConsecutiveTrips)
	assert.Empty(t, b.Reason)
}

func TestBreakerFailFast(t *testing.T) {
	probeSent, releaseProbe := make(chan struct{}), make(chan struct{})
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return respond(429, apiError("rate_limit_error"), "retry-after", "10"), nil
		case 2:
			close(probeSent)
			<-releaseProbe
		}
		return respond(200, brkOK), nil
	}}
	_, clk, client := brkSetup(api, true, WithFailFast(), WithMaxWait(5*time.Second))
	ctx := context.Background()

	// The retry-after exceeds the maximum wait: the caller gets the 429 at once.
	status, err := brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 429, status)

	_, err = brkDo(ctx, client)
	oe := requireOpenError(t, err)
	assert.Equal(t, testEpoch.Add(10*time.Second), oe.Until)
	assert.Equal(t, "retry-after", oe.Reason)
	assert.Contains(t, err.Error(), "circuit open for anthropic/claude-sonnet-4 until 2026-11-26T12:00:10Z (retry-after)")
	assert.Equal(t, 1, api.count(), "an open breaker sends nothing, and Retry does not retry ErrOpen")
	assert.Empty(t, clk.Pending(), "fail-fast never waits")

	clk.Advance(10 * time.Second)
	probe := make(chan int)
	go func() {
		status, err := brkDo(ctx, client)
		assert.NoError(t, err)
		probe <- status
	}()
	<-probeSent
	_, err = brkDo(ctx, client)
	oe = requireOpenError(t, err)
	assert.True(t, oe.Until.IsZero(), "while the probe is in flight the reopening time is unknown")
	close(releaseProbe)
	assert.Equal(t, 200, <-probe)

	status, err = brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
}

func TestBreakerSpendLimitFailsFastEvenWhenWaiting(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return respond(429, spendLimitBody), nil
		}
		return respond(200, brkOK), nil
	}}
	var events brkEvents
	s, clk, client := brkSetup(api, true, WithBreakerStateChange(events.add))
	ctx := context.Background()

	status, err := brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 429, status, "the caller that drew it gets the server's answer, not retried")

	_, err = brkDo(ctx, client)
	oe := requireOpenError(t, err)
	assert.Equal(t, "spend limit reached", oe.Reason)
	assert.Equal(t, testEpoch.Add(DefaultSpendLimitPause), oe.Until)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr, "the server's error is wrapped")
	assert.Equal(t, "enforced_spend_limit_reached", apiErr.Code)
	assert.Contains(t, err.Error(), "You have reached your specified API usage limits.")
	assert.Empty(t, clk.Pending(), "waiting cannot help: no wait")
	assert.Equal(t, 1, api.count())
	assert.Equal(t, "spend limit reached", breakerOf(t, s).Reason)

	// When the pause is over one probe finds out whether the cap was lifted.
	clk.Advance(DefaultSpendLimitPause)
	status, err = brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	assert.Equal(t, []string{
		"closed→open +10m0s spend limit reached",
		"open→half-open spend limit reached",
		"half-open→closed",
	}, events.get())
}

// callAnswer is what one call got: the response's status, headers and
// body, or an error.
type callAnswer struct {
	status int
	header http.Header
	body   string
	err    error
}

// brkCall sends one call and reads its answer whole; it is safe to run on
// any goroutine.
func brkCall(ctx context.Context, client *http.Client) callAnswer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, brkURL, strings.NewReader(brkBody))
	if err != nil {
		return callAnswer{err: err}
	}
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := client.Do(req)
	if err != nil {
		return callAnswer{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return callAnswer{status: resp.StatusCode, header: resp.Header, body: string(body), err: err}
}

// requireReplayed checks that the breaker answered a call with the
// server's 429 again, with sent requests at the server; it returns the
// answer's retry-after.
func requireReplayed(t *testing.T, a callAnswer, api *brkAPI, sent int) string {
	t.Helper()
	require.NoError(t, a.err, "the caller gets the server's answer, not an error of ours")
	assert.Equal(t, 429, a.status)
	assert.Equal(t, "true", a.header.Get(ReplayedHeader))
	assert.Equal(t, apiError("rate_limit_error"), a.body, "the server's own error body")
	assert.Equal(t, sent, api.count(), "nothing was sent")
	return a.header.Get("Retry-After")
}

// brkReplayed sends one call and checks it was answered with the server's
// 429 again.
func brkReplayed(t *testing.T, ctx context.Context, client *http.Client, api *brkAPI) string {
	t.Helper()
	sent := api.count()
	return requireReplayed(t, brkCall(ctx, client), api, sent)
}

func TestBreakerHopelessWaitsReturnAtOnce(t *testing.T) {
	retryAfter := func(seconds string) *brkAPI {
		return &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
			if n == 1 {
				return respond(429, apiError("rate_limit_error"), "retry-after", seconds), nil
			}
			return respond(200, brkOK), nil
		}}
	}
	t.Run("longer than the maximum pause: the server's 429 again", func(t *testing.T) {
		api := retryAfter("30")
		_, clk, client := brkSetup(api, false, WithMaxPause(20*time.Second))
		_, _ = brkDo(context.Background(), client)
		clk.Advance(2500 * time.Millisecond)
		assert.Equal(t, "28", brkReplayed(t, context.Background(), client, api), "the wait that is left, rounded up")
		assert.Empty(t, clk.Pending())
		assert.Equal(t, 1, api.count())
	})
	t.Run("longer than the context deadline: the server's 429 again", func(t *testing.T) {
		api := retryAfter("30")
		_, clk, client := brkSetup(api, false)
		_, _ = brkDo(context.Background(), client)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.Equal(t, "30", brkReplayed(t, ctx, client, api))
		assert.Empty(t, clk.Pending())
	})
	t.Run("fail-fast mode: an OpenError", func(t *testing.T) {
		api := retryAfter("30")
		_, clk, client := brkSetup(api, false, WithFailFast())
		_, _ = brkDo(context.Background(), client)
		_, err := brkDo(context.Background(), client)
		oe := requireOpenError(t, err)
		assert.Equal(t, testEpoch.Add(30*time.Second), oe.Until)
		assert.Empty(t, clk.Pending())
		assert.Equal(t, 1, api.count())
	})
	t.Run("a pause no server asked for: an OpenError", func(t *testing.T) {
		api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
			return respond(529, apiError("overloaded_error")), nil
		}}
		_, _, client := brkSetup(api, false, WithMaxPause(100*time.Millisecond))
		for range DefaultBreakerThreshold {
			_, _ = brkDo(context.Background(), client)
		}
		_, err := brkDo(context.Background(), client)
		oe := requireOpenError(t, err)
		assert.Equal(t, "overloaded", oe.Reason)
		assert.Equal(t, DefaultBreakerThreshold, api.count())
	})
	t.Run("the pause is extended past the cap while waiting", func(t *testing.T) {
		api := &brkAPI{}
		release := make(chan struct{})
		api.script = func(n int, _ *http.Request) (*http.Response, error) {
			switch n {
			case 1:
				<-release
				return respond(429, apiError("rate_limit_error"), "retry-after", "15"), nil
			case 2:
				return respond(429, apiError("rate_limit_error"), "retry-after", "10"), nil
			}
			return respond(200, brkOK), nil
		}
		_, clk, client := brkSetup(api, false, WithMaxPause(20*time.Second))
		first := make(chan struct{})
		go func() { _, _ = brkDo(context.Background(), client); close(first) }()
		require.Eventually(t, func() bool { return api.count() == 1 }, 5*time.Second, time.Millisecond)
		_, _ = brkDo(context.Background(), client) // opens for 10s
		waiter := make(chan callAnswer)
		go func() { waiter <- brkCall(context.Background(), client) }()
		require.True(t, clk.WaitForWaiters(1, 5*time.Second))
		clk.Advance(9 * time.Second)
		close(release) // retry-after 15s, 9s later: open until 24s, 24s after the waiter came
		<-first
		clk.Advance(time.Second)
		assert.Equal(t, "14", requireReplayed(t, <-waiter, api, 2), "open until 24 s, 10 s in")
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		api := retryAfter("30")
		_, clk, client := brkSetup(api, false)
		_, _ = brkDo(context.Background(), client)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { _, err := brkDo(ctx, client); done <- err }()
		require.True(t, clk.WaitForWaiters(1, 5*time.Second))
		cancel()
		assert.ErrorIs(t, <-done, context.Canceled)
		assert.Equal(t, 1, api.count())
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
			body = apiError("overloaded_error")
		}
		return respond(a.status, body), nil
	}}
	var events brkEvents
	s, clk, client := brkSetup(api, false, WithFailFast(), WithBreakerThreshold(3),
		WithBackoff(time.Second, 3*time.Second), WithBreakerStateChange(events.add))
	ctx := context.Background()

	for i := range 5 {
		callCtx := ctx
		if i == 2 {
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			callCtx = cancelled
		}
		_, _ = brkDo(callCtx, client)
		if i == 3 {
			b := breakerOf(t, s)
			assert.Equal(t, BreakerClosed, b.State)
			assert.Equal(t, uint32(2), b.Counts.ConsecutiveFailures)
			assert.Equal(t, uint32(2), b.Counts.Excluded, "the 400 and the cancelled attempt")
		}
	}
	require.Equal(t, 5, api.count())

	_, err := brkDo(ctx, client)
	oe := requireOpenError(t, err)
	assert.Equal(t, testEpoch.Add(time.Second), oe.Until, "open for the backoff base")
	assert.Equal(t, "server error", oe.Reason)

	for _, open := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		clk.Advance(open)
		_, _ = brkDo(ctx, client) // the probe
	}
	assert.Equal(t, 8, api.count(), "one probe per opening")
	b := breakerOf(t, s)
	assert.Equal(t, BreakerClosed, b.State)
	assert.Equal(t, []string{
		"closed→open +1s server error",
		"open→half-open server error",
		"half-open→open +3s overloaded", // 1s + 2s
		"open→half-open overloaded",
		"half-open→open +6s overloaded", // 3s + 3s (capped)
		"open→half-open overloaded",
		"half-open→closed",
	}, events.get())
}

func TestBreakerStaleResults(t *testing.T) {
	arrived := make(chan int, 3)
	release := [3]chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{})}
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1: // admitted while closed, answered after the breaker tripped
			arrived <- n
			<-release[0]
			return respond(200, brkOK), nil
		case 2: // admitted while closed, answered after it closed again
			arrived <- n
			<-release[1]
			return respond(429, apiError("rate_limit_error"), "retry-after", "20"), nil
		case 3:
			return respond(529, apiError("overloaded_error")), nil
		}
		return respond(200, brkOK), nil
	}}
	s, clk, client := brkSetup(api, false, WithFailFast(), WithBreakerThreshold(1))
	ctx := context.Background()
	done := make(chan struct{}, 2)
	for range 2 {
		go func() { _, _ = brkDo(ctx, client); done <- struct{}{} }()
		<-arrived
	}
	_, _ = brkDo(ctx, client) // 529: trips
	assert.Equal(t, BreakerOpen, breakerOf(t, s).State)

	close(release[0])
	<-done
	b := breakerOf(t, s)
	assert.Equal(t, BreakerOpen, b.State, "a success admitted before the trip does not count")
	assert.Zero(t, b.Counts.Successes)

	clk.Advance(DefaultBackoffBase)
	status, err := brkDo(ctx, client) // the probe
	require.NoError(t, err)
	require.Equal(t, 200, status)
	assert.Equal(t, BreakerClosed, breakerOf(t, s).State)

	close(release[1])
	<-done
	b = breakerOf(t, s)
	assert.Equal(t, BreakerOpen, b.State, "a wait the server asked for holds whenever it arrives")
	assert.Equal(t, clk.Now().Add(20*time.Second), b.OpenUntil)
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
		return respond(429, apiError("rate_limit_error"), "retry-after", retryAfter[n-1]), nil
	}}
	var events brkEvents
	s, _, client := brkSetup(api, false, WithBreakerStateChange(events.add))
	done := make(chan struct{})
	for range 3 {
		go func() { _, _ = brkDo(context.Background(), client); done <- struct{}{} }()
		<-arrived
	}
	for i, want := range []time.Duration{10 * time.Second, 10 * time.Second, 20 * time.Second} {
		close(release[i])
		<-done
		assert.Equal(t, testEpoch.Add(want), breakerOf(t, s).OpenUntil)
	}
	assert.Equal(t, []string{"closed→open +10s retry-after", "open→open +20s retry-after"}, events.get())
}

func TestBreakerPausesForTheRefillOfTheNextRequest(t *testing.T) {
	reset := testEpoch.Add(time.Minute).Format(time.RFC3339)
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
			return respond(200, used, limits("10", "20000")...), nil
		case 2: // 200 input tokens left, read as up to 1200 (rounded), 2000 needed: 800 to refill at 500/s
			return respond(200, used, limits("10", "200")...), nil
		case 3: // no request left: one to refill at one a second
			return respond(200, used, limits("0", "20000")...), nil
		}
		return respond(200, used, limits("10", "20000")...), nil
	}}
	var events brkEvents
	s, clk, client := brkSetup(api, false, WithBreakerStateChange(events.add))
	ctx := context.Background()

	_, err := brkDo(ctx, client)
	require.NoError(t, err)
	b := breakerOf(t, s)
	assert.Equal(t, BreakerClosed, b.State)
	assert.Equal(t, 2000.0, b.TypicalInputTokens)
	assert.Equal(t, 100.0, b.TypicalOutputTokens)

	_, err = brkDo(ctx, client)
	require.NoError(t, err)
	b = breakerOf(t, s)
	assert.Equal(t, BreakerOpen, b.State)
	assert.Equal(t, testEpoch.Add(1600*time.Millisecond), b.OpenUntil, "the refill of one request, not the reset a minute away")

	wait := func(want time.Duration) {
		t.Helper()
		done := make(chan struct{})
		go func() { _, _ = brkDo(ctx, client); close(done) }()
		require.True(t, clk.WaitForWaiters(1, 5*time.Second))
		assert.Equal(t, []time.Duration{want}, clk.Pending())
		clk.Advance(want)
		<-done
	}
	wait(1600 * time.Millisecond) // the probe, answered with no request left
	assert.Equal(t, clk.Now().Add(time.Second), breakerOf(t, s).OpenUntil)
	wait(time.Second)
	assert.Equal(t, BreakerClosed, breakerOf(t, s).State)
	assert.Equal(t, 1600*time.Millisecond, api.calls[2].waits.Pause)
	assert.Equal(t, []string{
		"closed→open +1.6s input-tokens refill",
		"open→half-open input-tokens refill",
		"half-open→open +2.6s requests refill",
		"open→half-open requests refill",
		"half-open→closed",
	}, events.get())
}

func TestBreakerCountsAnOverloadedErrorMidStream(t *testing.T) {
	stream := strings.Join([]string{
		`event: message_start`,
		`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":10,"output_tokens":1}}}`,
		``,
		`event: error`,
		`data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
		``, ``,
	}, "\n")
	api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
		return respond(200, stream, "content-type", "text/event-stream"), nil
	}}
	s, _, client := brkSetup(api, false, WithFailFast(), WithBreakerThreshold(2))
	ctx := context.Background()
	for range 2 {
		status, err := brkDo(ctx, client)
		require.NoError(t, err)
		assert.Equal(t, 200, status, "the stream reaches the caller unchanged")
	}
	_, err := brkDo(ctx, client)
	oe := requireOpenError(t, err)
	assert.Equal(t, "overloaded", oe.Reason)
	assert.Equal(t, 2, api.count())
	assert.Equal(t, 1, breakerOf(t, s).ConsecutiveTrips)
}

func TestBreakerProbeThatIsNoVerdictLetsTheNextProbe(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		switch n {
		case 1:
			return respond(429, apiError("rate_limit_error"), "retry-after", "1"), nil
		case 2:
			return respond(400, apiError("invalid_request_error")), nil
		}
		return respond(200, brkOK), nil
	}}
	s, clk, client := brkSetup(api, false, WithFailFast())
	ctx := context.Background()
	_, _ = brkDo(ctx, client)
	clk.Advance(time.Second)
	status, _ := brkDo(ctx, client)
	assert.Equal(t, 400, status)
	assert.Equal(t, BreakerHalfOpen, breakerOf(t, s).State)
	status, err := brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	assert.Equal(t, BreakerClosed, breakerOf(t, s).State)
}

func TestBreakerManyWaitersAllResume(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return respond(429, apiError("rate_limit_error"), "retry-after", "3"), nil
		}
		return respond(200, brkOK), nil
	}}
	_, clk, client := brkSetup(api, false)
	ctx := context.Background()
	_, _ = brkDo(ctx, client)

	const waiters = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range waiters {
		wg.Go(func() {
			status, err := brkDo(ctx, client)
			assert.NoError(t, err)
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		})
	}
	require.True(t, clk.WaitForWaiters(waiters, 5*time.Second))
	clk.Advance(3 * time.Second)
	wg.Wait()
	assert.Equal(t, map[int]int{200: waiters}, statuses)
	assert.Equal(t, 1+waiters, api.count())
	// goleak (TestMain) checks that no goroutine is left behind.
}

func TestBreakerWithoutObserveJudgesTheResponse(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			return respond(429, apiError("rate_limit_error"), "retry-after", "2"), nil
		}
		return respond(200, brkOK), nil
	}}
	clk := fakeclock.New(testEpoch)
	s := NewState(WithClock(clk), WithFailFast())
	client := &http.Client{Transport: Chain(api, Breaker(s))}
	_, _ = brkDo(context.Background(), client)
	_, err := brkDo(context.Background(), client)
	oe := requireOpenError(t, err)
	assert.Equal(t, testEpoch.Add(2*time.Second), oe.Until)
	clk.Advance(2 * time.Second)
	status, err := brkDo(context.Background(), client)
	require.NoError(t, err)
	assert.Equal(t, 200, status)
	assert.Equal(t, BreakerClosed, s.breakers.snapshot(brkKey, clk.Now()).State)
}

func TestBreakerErrorsAreNotRetried(t *testing.T) {
	assert.False(t, retryableError(&OpenError{Reason: "retry-after"}))
	assert.True(t, errors.Is(fmt.Errorf("wrapped: %w", &OpenError{}), ErrOpen))
}

// brkFleet runs work(0) … work(n-1) in goroutines on s while playing the
// fake clock: when every goroutine still running waits, on the clock or for
// a probe that waits on the clock, the clock moves on to the next wait. Time
// moves only then, so no test sleeps and the simulated minutes take
// milliseconds. (Should another layer wait on something else, the clock
// moves on after a few quiet real milliseconds.)
func brkFleet(t *testing.T, clk *fakeclock.Clock, s *State, n int, work func(i int)) {
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
	onProbe := func() int {
		c := s.breakers.circuit(brkKey)
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.onProbe
	}
	const quiet = 20 * time.Millisecond
	idle := time.NewTimer(quiet)
	defer idle.Stop()
	stuck := time.NewTimer(20 * time.Second) // a guard against a broken test, not a timing assumption
	defer stuck.Stop()
	for finished := 0; finished < n; {
		changed := clk.Changed()
		pending := len(clk.Pending())
		if running := live.Load(); running > 0 && pending+onProbe() >= int(running) {
			clk.AdvanceToNext()
			continue
		}
		idle.Reset(quiet)
		select {
		case <-ended:
			finished++
		case <-changed:
		case <-idle.C:
			if pending > 0 {
				clk.AdvanceToNext()
			}
		case <-stuck.C:
			t.Fatalf("the fleet is stuck: %d running, waits pending %v", live.Load(), clk.Pending())
		}
	}
}

// brkFleetRun is what a fleet run saw, on both sides.
type brkFleetRun struct {
	server   tollgatetest.Stats
	wire     []brkAnswer // every answer, as the base transport saw it
	failed   int         // calls that did not end in a 200
	events   []BreakerEvent
	breaker  BreakerSnapshot
	duration time.Duration // on the fake clock
}

type brkAnswer struct {
	at         time.Duration // since testEpoch
	status     int
	retryAfter time.Duration
}

// brkWire is a base transport that records every answer.
type brkWire struct {
	next http.RoundTripper
	clk  *fakeclock.Clock
	mu   sync.Mutex
	log  []brkAnswer
}

func (w *brkWire) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := w.next.RoundTrip(req)
	if err == nil {
		ra, _ := parseRetryAfter(resp.Header.Get("Retry-After"), w.clk.Now())
		w.mu.Lock()
		w.log = append(w.log, brkAnswer{w.clk.Now().Sub(testEpoch), resp.StatusCode, ra})
		w.mu.Unlock()
	}
	return resp, err
}

// brkFleetClient is the tollgate chain (Trace left out) over a recording
// base, with or without the breaker.
func brkFleetClient(t *testing.T, clk *fakeclock.Clock, breaker bool, events *[]BreakerEvent) (*State, *http.Client, *brkWire) {
	var mu sync.Mutex
	s := NewState(WithClock(clk), withJitter(fullCeiling), WithBreakerStateChange(func(ev BreakerEvent) {
		mu.Lock()
		*events = append(*events, ev)
		mu.Unlock()
	}))
	layers := []Middleware{Retry(s), Breaker(s), Budget(s), Observe(s)}
	if !breaker {
		layers = []Middleware{Retry(s), Budget(s), Observe(s)}
	}
	wire := &brkWire{next: newBase(t), clk: clk}
	return s, &http.Client{Transport: Chain(wire, layers...)}, wire
}

// A fleet of agents shares one key with another consumer that now and then
// drains the requests bucket below zero. Through the breaker the first
// request to meet a drain draws a 429 and the others pause with it for its
// retry-after, then go one probe at a time at the bucket's refill rate; no
// call fails. Without the breaker every agent meets the drain on its own.
func TestBreakerFleetBesideADrainingNeighbour(t *testing.T) {
	const (
		agents = 4
		calls  = 16
		think  = 4 * time.Second // between an agent's calls: the fleet wants 1 request/s of the 2/s
		drains = 3
	)
	run := func(t *testing.T, breaker bool) brkFleetRun {
		clk := fakeclock.New(testEpoch)
		srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 120, Now: clk.Now})
		t.Cleanup(srv.Close)
		var events []BreakerEvent
		s, client, wire := brkFleetClient(t, clk, breaker, &events)
		var failed atomic.Int32
		brkFleet(t, clk, s, agents+1, func(i int) {
			if i == agents { // the neighbour: every 30s, what is left and 30 requests more
				for range drains {
					<-clk.After(30 * time.Second)
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
		return brkFleetRun{server: srv.Stats(), wire: wire.log, failed: int(failed.Load()), events: events,
			breaker: s.breakers.snapshot(brkKey, clk.Now()), duration: clk.Now().Sub(testEpoch)}
	}

	with := run(t, true)
	without := run(t, false)
	t.Logf("with the breaker: %d requests, %d 429s, %d failed calls, %s", with.server.Requests, with.server.RateLimited, with.failed, with.duration)
	t.Logf("without: %d requests, %d 429s, %d failed calls, %s", without.server.Requests, without.server.RateLimited, without.failed, without.duration)

	assert.Zero(t, with.failed, "no call fails")
	assert.Equal(t, agents*calls, with.server.OK)
	assert.GreaterOrEqual(t, without.server.RateLimited, (agents-1)*drains, "without the breaker every agent meets the drain")
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
	assert.LessOrEqual(t, with.server.RateLimited, drains, "at most one 429 per drain")
	assert.NotEqual(t, BreakerOpen, with.breaker.State)
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
		clk := fakeclock.New(testEpoch)
		stormEnd := testEpoch.Add(storm)
		srv := tollgatetest.NewServer(tollgatetest.Config{Now: clk.Now, FaultFunc: func(*http.Request, int) *tollgatetest.Fault {
			if clk.Now().Before(stormEnd) {
				return &tollgatetest.Fault{Status: 529}
			}
			return nil
		}})
		t.Cleanup(srv.Close)
		var events []BreakerEvent
		s, client, wire := brkFleetClient(t, clk, breaker, &events)
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
		return brkFleetRun{server: srv.Stats(), wire: wire.log, failed: int(failed.Load()), events: events,
			breaker: s.breakers.snapshot(brkKey, clk.Now()), duration: clk.Now().Sub(testEpoch)}
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
	assert.Equal(t, BreakerOpen, trip.To)
	assert.Equal(t, "overloaded", trip.Reason)
	var beforeTrip, failedProbes int
	for _, a := range with.wire {
		if a.status == 529 && !testEpoch.Add(a.at).After(trip.At) {
			beforeTrip++
		}
	}
	for _, ev := range with.events {
		if ev.From == BreakerHalfOpen && ev.To == BreakerOpen {
			failedProbes++
			assert.Equal(t, "overloaded", ev.Reason)
		}
	}
	assert.Equal(t, DefaultBreakerThreshold, beforeTrip, "it trips on the threshold-th consecutive overload")
	assert.Equal(t, DefaultBreakerThreshold+failedProbes, with.server.Status[529], "one probe per opening")
	assert.Equal(t, BreakerClosed, with.events[len(with.events)-1].To)
	assert.GreaterOrEqual(t, without.server.Status[529], 5*with.server.Status[529], "far fewer requests reach the overloaded server")
	assert.Equal(t, agents*successes, with.server.OK)
	assert.Equal(t, BreakerClosed, with.breaker.State, "it recovers when the storm ends")
	assert.Zero(t, with.breaker.ConsecutiveTrips)
	assert.Less(t, with.duration, storm+DefaultBackoffMax+10*time.Second, "recovered within one opening of the storm's end")
}

func TestBreakerTellsTheTraceLayer(t *testing.T) {
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		return respond(429, apiError("rate_limit_error"), "retry-after", "5"), nil
	}}
	s, _, client := brkSetup(api, false)
	type change struct{ from, to, reason, marker string }
	var got []change
	s.breakers.trace = func(ctx context.Context, k Key, from, to, reason string) {
		assert.Equal(t, brkKey, k)
		marker, _ := ctx.Value(brkMarker{}).(string)
		got = append(got, change{from, to, reason, marker})
	}
	ctx := context.WithValue(context.Background(), brkMarker{}, "the attempt's context")
	_, err := brkDo(ctx, client)
	require.NoError(t, err)
	assert.Equal(t, []change{{"closed", "open", "retry-after", "the attempt's context"}}, got)
}

type brkMarker struct{}

func TestBreakerTripHonoursTheServersWait(t *testing.T) {
	// Five 529s, each asking for 5 ms: the trip pauses for what the server
	// asked, not for the breaker's own backoff (500 ms and growing).
	api := &brkAPI{script: func(n int, _ *http.Request) (*http.Response, error) {
		return respond(529, apiError("overloaded_error"), "retry-after-ms", "5"), nil
	}}
	s, _, client := brkSetup(api, false)
	for range DefaultBreakerThreshold {
		status, err := brkDo(context.Background(), client)
		require.NoError(t, err)
		require.Equal(t, 529, status)
	}
	b := breakerOf(t, s)
	assert.Equal(t, BreakerOpen, b.State)
	assert.Equal(t, testEpoch.Add(5*time.Millisecond), b.OpenUntil)
}

// tickingClock is a fake clock whose every reading is a microsecond after
// the last, as a real clock's would be.
type tickingClock struct {
	*fakeclock.Clock
}

func (c tickingClock) Now() time.Time {
	c.Advance(time.Microsecond)
	return c.Clock.Now()
}

func TestBreakerClosedRecordsNoPause(t *testing.T) {
	api := &brkAPI{script: func(int, *http.Request) (*http.Response, error) {
		return respond(200, `{"type":"message","usage":{"input_tokens":5,"output_tokens":1}}`), nil
	}}
	s := NewState(WithClock(tickingClock{fakeclock.New(testEpoch)}))
	client := &http.Client{Transport: Chain(api, Breaker(s), Observe(s))}
	for range 3 {
		status, err := brkDo(context.Background(), client)
		require.NoError(t, err)
		require.Equal(t, 200, status)
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	for i, c := range api.calls {
		assert.Zero(t, c.waits.Pause, "call %d passed a closed breaker: no pause", i)
	}
}
