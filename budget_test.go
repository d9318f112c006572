package tollgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

var sonnet = Key{Provider: ProviderAnthropic, Family: "claude-sonnet-4"}

// budgetRig is Chain(base, Budget, Observe) on a fake clock, with a base
// that answers through a replaceable function.
type budgetRig struct {
	t     *testing.T
	clk   *fakeclock.Clock
	s     *State
	rt    http.RoundTripper
	mu    sync.Mutex
	reply func(req *http.Request) (*http.Response, error)
	sent  []string // the X-Seq header of every request the base got, in order
}

func newBudgetRig(t *testing.T, opts ...Option) *budgetRig {
	t.Helper()
	rig := &budgetRig{t: t, clk: fakeclock.New(testEpoch)}
	rig.reply = func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 10, 10), nil }
	rig.s = NewState(append([]Option{WithClock(rig.clk)}, opts...)...)
	base := budgetBase(func(req *http.Request) (*http.Response, error) {
		rig.mu.Lock()
		rig.sent = append(rig.sent, req.Header.Get("X-Seq"))
		reply := rig.reply
		rig.mu.Unlock()
		return reply(req)
	})
	rig.rt = Chain(base, Budget(rig.s), Observe(rig.s))
	return rig
}

type budgetBase func(*http.Request) (*http.Response, error)

func (f budgetBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return f(req)
}

func (rig *budgetRig) setReply(f func(*http.Request) (*http.Response, error)) {
	rig.mu.Lock()
	rig.reply = f
	rig.mu.Unlock()
}

func (rig *budgetRig) sentOrder() []string {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return append([]string(nil), rig.sent...)
}

// snap is the budget's view of the Sonnet key now.
func (rig *budgetRig) snap() BudgetSnapshot { return rig.s.budget.snapshot(sonnet, rig.clk.Now()) }

func (rig *budgetRig) level(d Dimension) float64 { return rig.snap().Dimensions[d].Level }

// do sends one attempt and reads its body to the end, which settles it.
func (rig *budgetRig) do(req *http.Request) (*http.Response, error) {
	rig.t.Helper()
	resp, err := rig.rt.RoundTrip(req)
	if resp != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	return resp, err
}

type budgetResult struct {
	resp *http.Response
	err  error
}

// start sends req on its own goroutine; the response body is left unread.
func (rig *budgetRig) start(req *http.Request) <-chan budgetResult {
	done := make(chan budgetResult, 1)
	go func() {
		resp, err := rig.rt.RoundTrip(req)
		done <- budgetResult{resp, err}
	}()
	return done
}

// waitFor polls cond; it guards against a broken test hanging, it does not
// time anything.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, 100*time.Microsecond, what)
}

func (rig *budgetRig) waitQueued(n int) {
	rig.t.Helper()
	waitFor(rig.t, fmt.Sprintf("%d queued", n), func() bool { return rig.snap().Waiting == n })
}

func (rig *budgetRig) waitSent(n int) {
	rig.t.Helper()
	waitFor(rig.t, fmt.Sprintf("%d sent", n), func() bool { return len(rig.sentOrder()) == n })
}

func receive(t *testing.T, ch <-chan budgetResult) budgetResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("attempt did not return")
		return budgetResult{}
	}
}

func settle(r budgetResult) {
	if r.resp != nil {
		_, _ = io.Copy(io.Discard, r.resp.Body)
		_ = r.resp.Body.Close()
	}
}

// budgetReq is an Anthropic Messages request with the given prompt and
// max_tokens (none when zero), tagged with seq.
func budgetReq(ctx context.Context, seq, prompt string, maxTokens int) *http.Request {
	mt := ""
	if maxTokens > 0 {
		mt = `"max_tokens":` + strconv.Itoa(maxTokens) + `,`
	}
	body := `{"model":"claude-sonnet-4-5",` + mt + `"messages":[{"role":"user","content":` + strconv.Quote(prompt) + `}]}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.anthropic.com/v1/messages", strings.NewReader(body))
	req.Header.Set("Anthropic-Version", "2023-06-01")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Seq", seq)
	return req
}

// producesMaxTokens answers with as much output as the request allowed.
func producesMaxTokens(req *http.Request) (*http.Response, error) {
	return anthropicReply(200, nil, 0, readRequestInfo(req).MaxTokens), nil
}

// anthropicReply is a JSON Messages response with the given usage.
func anthropicReply(status int, h http.Header, in, out int64) *http.Response {
	return anthropicUsageReply(status, h, fmt.Sprintf(`"input_tokens":%d,"output_tokens":%d`, in, out))
}

func anthropicUsageReply(status int, h http.Header, usage string) *http.Response {
	if h == nil {
		h = http.Header{}
	}
	h.Set("Content-Type", "application/json")
	body := `{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{` + usage + `}}`
	if status >= 400 {
		body = `{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}`
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)), ContentLength: -1}
}

// anthropicLimits is the Anthropic rate-limit headers: limit and remaining
// per requests, input tokens and output tokens (a negative value omits it).
func anthropicLimits(rpm, rpmLeft, itpm, itpmLeft, otpm, otpmLeft int64) http.Header {
	h := http.Header{}
	set := func(dim string, limit, left int64) {
		if limit >= 0 {
			h.Set("anthropic-ratelimit-"+dim+"-limit", strconv.FormatInt(limit, 10))
		}
		if left >= 0 {
			h.Set("anthropic-ratelimit-"+dim+"-remaining", strconv.FormatInt(left, 10))
		}
	}
	set("requests", rpm, rpmLeft)
	set("input-tokens", itpm, itpmLeft)
	set("output-tokens", otpm, otpmLeft)
	// The most restrictive token limit, which the budget must not mistake
	// for a combined limit.
	set("tokens", min(itpm, otpm), min(itpmLeft, otpmLeft))
	return h
}

func TestBudgetWaitsExactlyForRefill(t *testing.T) {
	cases := []struct {
		name      string
		limits    Limits
		drain     int // requests of drainTokens max_tokens, each producing that much output
		drainOut  int
		maxTokens int
		want      time.Duration
	}{
		{"requests: 1/s", Limits{RequestsPerMinute: 60}, 60, 1, 1, time.Second},
		{"requests: 1 per 1.2s", Limits{RequestsPerMinute: 50}, 50, 1, 1, 1200 * time.Millisecond},
		{"output: 100/s", Limits{OutputTokensPerMinute: 6000}, 1, 6000, 1000, 10 * time.Second},
		{"output: partial level", Limits{OutputTokensPerMinute: 6000}, 1, 5000, 1500, 5 * time.Second},
		{"output above capacity waits for a full bucket", Limits{OutputTokensPerMinute: 600}, 1, 600, 5000, time.Minute},
		{"combined tokens", Limits{TokensPerMinute: 6000}, 1, 5990, 1000, 9*time.Second + 900*time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBudgetRig(t, WithLimits(tc.limits))
			rig.setReply(func(*http.Request) (*http.Response, error) {
				return anthropicReply(200, nil, 0, int64(tc.drainOut)), nil
			})
			for i := range tc.drain {
				_, err := rig.do(budgetReq(context.Background(), strconv.Itoa(i), "", tc.drainOut))
				require.NoError(t, err)
			}
			require.Empty(t, rig.clk.Pending(), "draining never waits")
			rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 0, 1), nil })

			req, c := rig.s.callFor(budgetReq(context.Background(), "last", "", tc.maxTokens))
			done := rig.start(req)
			require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
			assert.Equal(t, []time.Duration{tc.want}, rig.clk.Pending())
			rig.clk.Advance(tc.want - time.Nanosecond)
			assert.Len(t, rig.sentOrder(), tc.drain, "not admitted before its time")
			rig.clk.Advance(time.Nanosecond)
			r := receive(t, done)
			require.NoError(t, r.err)
			settle(r)
			assert.Equal(t, tc.want, c.waits.Budget)
		})
	}
}

func TestBudgetFIFO(t *testing.T) {
	// Output refills at 100 tokens a second. A big attempt queued first
	// holds back small ones queued after it, even though they would fit
	// sooner.
	rig := newBudgetRig(t, WithLimits(Limits{OutputTokensPerMinute: 6000}))
	rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 0, 6000), nil })
	_, err := rig.do(budgetReq(context.Background(), "drain", "", 6000))
	require.NoError(t, err)
	rig.setReply(producesMaxTokens)

	sizes := []int{3000, 100, 100, 500, 100}
	var dones []<-chan budgetResult
	for i, n := range sizes {
		dones = append(dones, rig.start(budgetReq(context.Background(), strconv.Itoa(i), "", n)))
		rig.waitQueued(i + 1)
	}
	rig.clk.Advance(29 * time.Second)
	assert.Equal(t, []string{"drain"}, rig.sentOrder(), "the small ones wait behind the big one")
	// Each is admitted when refill covers it, in order: 30 s, +1 s, +1 s, +5 s, +1 s.
	for i, step := range []time.Duration{time.Second, time.Second, time.Second, 5 * time.Second, time.Second} {
		// The new head sets its timer once the one before it is admitted.
		require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second), "attempt %d set no timer", i)
		rig.clk.Advance(step)
		r := receive(t, dones[i])
		require.NoError(t, r.err)
		settle(r)
	}
	assert.Equal(t, []string{"drain", "0", "1", "2", "3", "4"}, rig.sentOrder())
	assert.Zero(t, rig.snap().Waiting)
}

func TestBudgetSettleFreesOutput(t *testing.T) {
	rig := newBudgetRig(t, WithLimits(Limits{OutputTokensPerMinute: 1000}))
	rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 5, 100), nil })
	first := receive(t, rig.start(budgetReq(context.Background(), "first", "", 1000)))
	require.NoError(t, first.err)
	assert.InDelta(t, 0, rig.level(OutputTokens), 1e-6, "max_tokens reserved")

	second := rig.start(budgetReq(context.Background(), "second", "", 500))
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{30 * time.Second}, rig.clk.Pending())

	settle(first) // the body ends: 100 of the 1000 reserved were produced
	r := receive(t, second)
	require.NoError(t, r.err, "admitted without the clock moving")
	assert.InDelta(t, 400, rig.level(OutputTokens), 1e-6)
	settle(r)
	assert.InDelta(t, 800, rig.level(OutputTokens), 1e-6)
	assert.Zero(t, rig.snap().InFlight)
}

func TestBudgetGivesBack(t *testing.T) {
	// Limits big enough that nothing waits; the prompt is empty, so input is
	// estimated at zero and the usage sets it.
	limits := Limits{RequestsPerMinute: 100, InputTokensPerMinute: 10_000, OutputTokensPerMinute: 10_000}
	cases := []struct {
		name  string
		reply func(*http.Request) (*http.Response, error)
		// levels after the attempt: requests, input, output
		want [3]float64
	}{
		{"success settles to usage", func(*http.Request) (*http.Response, error) {
			return anthropicReply(200, nil, 300, 200), nil
		}, [3]float64{99, 9_700, 9_800}},
		{"cache reads do not count, cache creation does", func(*http.Request) (*http.Response, error) {
			return anthropicUsageReply(200, nil, `"input_tokens":300,"cache_read_input_tokens":5000,"cache_creation_input_tokens":700,"output_tokens":200`), nil
		}, [3]float64{99, 9_000, 9_800}},
		{"a stream settles to its last usage", func(*http.Request) (*http.Response, error) {
			h := http.Header{"Content-Type": {"text/event-stream"}}
			body := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":300,\"output_tokens\":1}}}\n\n" +
				"event: ping\ndata: {\"type\":\"ping\"}\n\n" +
				"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":200}}\n\n" +
				"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
			return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(body))}, nil
		}, [3]float64{99, 9_700, 9_800}},
		{"429 gives everything back", func(*http.Request) (*http.Response, error) {
			return anthropicReply(429, nil, 0, 0), nil
		}, [3]float64{100, 10_000, 10_000}},
		{"transport error gives tokens back, keeps the request", func(*http.Request) (*http.Response, error) {
			return nil, errors.New("connection reset")
		}, [3]float64{99, 10_000, 10_000}},
		{"error response gives output back", func(*http.Request) (*http.Response, error) {
			return anthropicReply(500, nil, 0, 0), nil
		}, [3]float64{99, 10_000, 10_000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBudgetRig(t, WithLimits(limits))
			rig.setReply(tc.reply)
			_, _ = rig.do(budgetReq(context.Background(), "1", "", 2000))
			assert.InDelta(t, tc.want[0], rig.level(Requests), 1e-6, "requests")
			assert.InDelta(t, tc.want[1], rig.level(InputTokens), 1e-6, "input")
			assert.InDelta(t, tc.want[2], rig.level(OutputTokens), 1e-6, "output")
			assert.Zero(t, rig.snap().InFlight)
		})
	}
}

func TestBudget429GivesBackAtHeaders(t *testing.T) {
	rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 10, OutputTokensPerMinute: 1000}))
	rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(429, nil, 0, 0), nil })
	r := receive(t, rig.start(budgetReq(context.Background(), "1", "", 1000)))
	require.NoError(t, r.err)
	assert.InDelta(t, 1000, rig.level(OutputTokens), 1e-6, "refunded before the body is read")
	assert.InDelta(t, 10, rig.level(Requests), 1e-6)
	assert.Equal(t, 1, rig.snap().InFlight, "in flight until the body ends")
	settle(r)
	assert.InDelta(t, 1000, rig.level(OutputTokens), 1e-6, "not refunded twice")
	assert.Zero(t, rig.snap().InFlight)
}

func TestBudgetCancelWhileWaiting(t *testing.T) {
	t.Run("tokens", func(t *testing.T) {
		rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 60, OutputTokensPerMinute: 6000}))
		rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 0, 6000), nil })
		_, err := rig.do(budgetReq(context.Background(), "drain", "", 6000))
		require.NoError(t, err)
		rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 0, 10), nil })
		levels := rig.snap().Dimensions

		ctx, cancel := context.WithCancel(context.Background())
		big := rig.start(budgetReq(ctx, "big", "", 5000))
		rig.waitQueued(1)
		small := rig.start(budgetReq(context.Background(), "small", "", 100))
		rig.waitQueued(2)
		rig.clk.Advance(time.Second) // enough for small, not for big
		assert.Equal(t, []string{"drain"}, rig.sentOrder())

		levels[OutputTokens].Level += 100 // refilled in that second
		levels[Requests].Level = 60
		cancel()
		r := receive(t, big)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Nil(t, r.resp)
		r = receive(t, small)
		require.NoError(t, r.err, "the cancelled head no longer holds back the next")
		assert.Equal(t, []string{"drain", "small"}, rig.sentOrder())
		settle(r)
		snap := rig.snap()
		assert.Zero(t, snap.Waiting)
		assert.Zero(t, snap.InFlight)
		assert.InDelta(t, levels[OutputTokens].Level-10, snap.Dimensions[OutputTokens].Level, 1e-6)
		assert.InDelta(t, levels[Requests].Level-1, snap.Dimensions[Requests].Level, 1e-6)
	})
	t.Run("slot", func(t *testing.T) {
		rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 100}), WithMaxConcurrency(1))
		first := receive(t, rig.start(budgetReq(context.Background(), "first", "", 10)))
		require.NoError(t, first.err)
		ctx, cancel := context.WithCancel(context.Background())
		req, c := rig.s.callFor(budgetReq(ctx, "second", "", 10))
		second := rig.start(req)
		rig.waitQueued(1)
		assert.Empty(t, rig.clk.Pending(), "a wait for a slot needs no timer")
		rig.clk.Advance(300 * time.Millisecond)
		cancel()
		r := receive(t, second)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Equal(t, 300*time.Millisecond, c.waits.Budget)
		snap := rig.snap()
		assert.Equal(t, 1, snap.InFlight)
		assert.Zero(t, snap.Waiting)
		assert.InDelta(t, 99.5, snap.Dimensions[Requests].Level, 1e-6, "the first took one, the cancelled none; 0.5 refilled")
		settle(first)
		assert.Zero(t, rig.snap().InFlight)
		_, err := rig.do(budgetReq(context.Background(), "third", "", 10))
		require.NoError(t, err)
	})
	t.Run("already cancelled", func(t *testing.T) {
		rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 100}))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := rig.do(budgetReq(ctx, "1", "", 10))
		assert.ErrorIs(t, err, context.Canceled)
		assert.Empty(t, rig.sentOrder())
		assert.InDelta(t, 100, rig.level(Requests), 1e-6)
	})
}

func TestBudgetColdStart(t *testing.T) {
	rig := newBudgetRig(t)
	release := make(chan *http.Response)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	assert.True(t, rig.snap().ColdStart)
	assert.Equal(t, TierUnknown, rig.snap().Tier)

	a := rig.start(budgetReq(context.Background(), "a", "hello", 10))
	rig.waitSent(1)
	b := rig.start(budgetReq(context.Background(), "b", "hello", 10))
	c := rig.start(budgetReq(context.Background(), "c", "hello", 10))
	rig.waitQueued(2)
	assert.Empty(t, rig.clk.Pending())
	assert.Equal(t, []string{"a"}, rig.sentOrder(), "one at a time before the limits are known")

	// a's headers tell the limits: b and c go at once, together, while a's
	// body is still unread.
	release <- anthropicReply(200, anthropicLimits(50, 49, 30_000, 29_000, 8_000, 8_000), 2, 5)
	ra := receive(t, a)
	require.NoError(t, ra.err)
	rig.waitSent(3)
	assert.False(t, rig.snap().ColdStart)
	release <- anthropicReply(200, nil, 2, 5)
	release <- anthropicReply(200, nil, 2, 5)
	for _, ch := range []<-chan budgetResult{b, c} {
		r := receive(t, ch)
		require.NoError(t, r.err)
		settle(r)
	}
	settle(ra)
	snap := rig.snap()
	assert.Equal(t, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, snap.Limits)
	assert.Equal(t, "Tier 1", snap.Tier)
	assert.Equal(t, LimitFromHeaders, snap.Dimensions[Requests].Source)
	assert.Equal(t, LimitUnknown, snap.Dimensions[Tokens].Source, "Anthropic's tokens-* is not a limit of its own")
	assert.Zero(t, snap.InFlight)
}

func TestBudgetColdStartWithoutLimitHeaders(t *testing.T) {
	// An error response without limit headers opens the gate for the next
	// attempt only; a successful one without them says this server (a
	// gateway) will never tell its limits, so the cold start ends.
	rig := newBudgetRig(t)
	release := make(chan *http.Response)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	a := rig.start(budgetReq(context.Background(), "a", "", 10))
	rig.waitSent(1)
	b := rig.start(budgetReq(context.Background(), "b", "", 10))
	rig.waitQueued(1)
	c := rig.start(budgetReq(context.Background(), "c", "", 10))
	d := rig.start(budgetReq(context.Background(), "d", "", 10))
	rig.waitQueued(3)
	release <- anthropicReply(529, nil, 1, 1)
	rig.waitSent(2)
	rig.waitQueued(2)
	assert.True(t, rig.snap().ColdStart, "an error says nothing about the limits")
	release <- anthropicReply(200, nil, 1, 1)
	rig.waitSent(4)
	assert.False(t, rig.snap().ColdStart, "a success without limit headers ends the cold start")
	release <- anthropicReply(200, nil, 1, 1)
	release <- anthropicReply(200, nil, 1, 1)
	for _, ch := range []<-chan budgetResult{a, b, c, d} {
		r := receive(t, ch)
		require.NoError(t, r.err)
		settle(r)
	}
	assert.Equal(t, []string{"a", "b"}, rig.sentOrder()[:2])
	assert.ElementsMatch(t, []string{"c", "d"}, rig.sentOrder()[2:])
}

func TestBudgetLimitsPrecedence(t *testing.T) {
	cases := []struct {
		name    string
		opts    []Option
		headers http.Header
		want    Limits
		sources [numDimensions]LimitSource
		tier    string
	}{
		{"option only", []Option{WithLimits(Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})}, nil,
			Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000},
			[numDimensions]LimitSource{Requests: LimitFromOption, InputTokens: LimitFromOption, OutputTokens: LimitFromOption}, "Tier 1"},
		{"headers only", nil, anthropicLimits(1_000, 1_000, 2_000_000, 2_000_000, 400_000, 400_000),
			Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000},
			[numDimensions]LimitSource{Requests: LimitFromHeaders, InputTokens: LimitFromHeaders, OutputTokens: LimitFromHeaders}, "Start"},
		{"headers win", []Option{WithLimits(Limits{RequestsPerMinute: 10, InputTokensPerMinute: 1_000, OutputTokensPerMinute: 1_000})},
			anthropicLimits(4_000, 4_000, 2_000_000, 2_000_000, 400_000, 400_000),
			Limits{RequestsPerMinute: 4_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000},
			[numDimensions]LimitSource{Requests: LimitFromHeaders, InputTokens: LimitFromHeaders, OutputTokens: LimitFromHeaders}, "Tier 4"},
		{"option keeps what headers do not say", []Option{WithLimits(Limits{RequestsPerMinute: 10, OutputTokensPerMinute: 1_000, TokensPerMinute: 5_000})},
			anthropicLimits(-1, -1, 30_000, 30_000, -1, -1),
			Limits{RequestsPerMinute: 10, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 1_000, TokensPerMinute: 5_000},
			[numDimensions]LimitSource{Requests: LimitFromOption, InputTokens: LimitFromHeaders, OutputTokens: LimitFromOption, Tokens: LimitFromOption}, TierCustom},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBudgetRig(t, tc.opts...)
			rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, tc.headers, 1, 1), nil })
			_, err := rig.do(budgetReq(context.Background(), "1", "", 1))
			require.NoError(t, err)
			snap := rig.snap()
			assert.Equal(t, tc.want, snap.Limits)
			for d := range numDimensions {
				assert.Equal(t, tc.sources[d], snap.Dimensions[d].Source, d.String())
			}
			assert.Equal(t, tc.tier, snap.Tier)
		})
	}
}

func TestBudgetOpenAIDialect(t *testing.T) {
	rig := newBudgetRig(t)
	rig.setReply(func(*http.Request) (*http.Response, error) {
		h := http.Header{}
		h.Set("x-ratelimit-limit-requests", "500")
		h.Set("x-ratelimit-remaining-requests", "499")
		h.Set("x-ratelimit-limit-tokens", "30000")
		h.Set("x-ratelimit-remaining-tokens", "20000")
		h.Set("Content-Type", "application/json")
		body := `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[],` +
			`"usage":{"prompt_tokens":1000,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":800}}}`
		return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(body))}, nil
	})
	req, _ := http.NewRequest(http.MethodPost, "https://api.openai.com/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
	_, err := rig.do(req)
	require.NoError(t, err)
	snap := rig.s.budget.snapshot(Key{Provider: ProviderOpenAI, Family: "gpt-4o"}, rig.clk.Now())
	assert.Equal(t, Limits{RequestsPerMinute: 500, TokensPerMinute: 30_000}, snap.Limits)
	assert.Equal(t, TierCustom, snap.Tier)
	// The level was pulled down to the 20000 remaining while the attempt
	// held DefaultOutputTokens plus a one-token input estimate; cached tokens
	// count for OpenAI, so it settled at 1050 and gave back the rest.
	assert.InDelta(t, 20_000+(DefaultOutputTokens+1)-1050, snap.Dimensions[Tokens].Level, 1e-6)
	assert.Equal(t, minBytesPerToken, snap.BytesPerToken, "2 bytes for 1000 counted tokens is clamped")
}

func TestBudgetPullsDownToRemaining(t *testing.T) {
	cases := []struct {
		name   string
		opts   []Option
		before int // attempts sent (and left in flight) before the observed one
		after  int // attempts sent after it, before its headers arrive
		wait   time.Duration
		header http.Header
		dim    Dimension
		want   float64
	}{
		{"requests, exact", nil, 0, 0, 0, anthropicLimits(50, 10, -1, -1, -1, -1), Requests, 10},
		{"tokens are rounded to the thousand: allow a whole one", nil, 0, 0, 0,
			anthropicLimits(-1, -1, 30_000, 5_000, -1, -1), InputTokens, 6_000},
		{"never raised", []Option{WithLimits(Limits{RequestsPerMinute: 50})}, 0, 0, 0,
			anthropicLimits(-1, 50, -1, -1, -1, -1), Requests, 49},
		{"attempts sent before were counted by the server", []Option{WithLimits(Limits{RequestsPerMinute: 50})}, 3, 0, 0,
			anthropicLimits(-1, 40, -1, -1, -1, -1), Requests, 40},
		{"attempts sent after may have been counted too: not subtracted twice", []Option{WithLimits(Limits{RequestsPerMinute: 50})}, 0, 3, 0,
			anthropicLimits(-1, 40, -1, -1, -1, -1), Requests, 40},
		{"a reading above the level changes nothing", []Option{WithLimits(Limits{RequestsPerMinute: 50})}, 0, 3, 0,
			anthropicLimits(-1, 48, -1, -1, -1, -1), Requests, 46},
		{"refill since the server counted", []Option{WithLimits(Limits{RequestsPerMinute: 60})}, 0, 0, 10 * time.Second,
			anthropicLimits(-1, 20, -1, -1, -1, -1), Requests, 30},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBudgetRig(t, tc.opts...)
			release := make(chan *http.Response, 1)
			rig.setReply(func(req *http.Request) (*http.Response, error) {
				if req.Header.Get("X-Seq") == "observed" {
					return <-release, nil
				}
				return anthropicReply(200, nil, 0, 0), nil
			})
			var others []<-chan budgetResult
			for i := range tc.before {
				others = append(others, rig.start(budgetReq(context.Background(), "before", "", 1)))
				rig.waitSent(i + 1)
			}
			observed := rig.start(budgetReq(context.Background(), "observed", "", 1))
			rig.waitSent(tc.before + 1)
			for i := range tc.after {
				others = append(others, rig.start(budgetReq(context.Background(), "after", "", 1)))
				rig.waitSent(tc.before + 1 + i + 1)
			}
			for _, ch := range others {
				r := receive(t, ch) // headers arrived; bodies unread, so still in flight
				require.NoError(t, r.err)
				defer settle(r)
			}
			rig.clk.Advance(tc.wait)
			release <- anthropicReply(200, tc.header, 0, 0)
			r := receive(t, observed)
			require.NoError(t, r.err)
			assert.InDelta(t, tc.want, rig.level(tc.dim), 1e-6)
			settle(r)
		})
	}
}

func TestBudgetLearnsBytesPerToken(t *testing.T) {
	// The true tokenizer makes 3 bytes a token; the default guess is 4.
	rig := newBudgetRig(t, WithLimits(Limits{InputTokensPerMinute: 1_000_000}))
	prompt := strings.Repeat("abc ", 750)
	info := readRequestInfo(budgetReq(context.Background(), "", prompt, 10))
	require.Positive(t, info.PromptBytes)
	actual := info.PromptBytes / 3
	rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, actual, 1), nil })

	var errs []float64
	for i := range 5 {
		before := rig.level(InputTokens)
		resp, err := rig.rt.RoundTrip(budgetReq(context.Background(), strconv.Itoa(i), prompt, 10))
		require.NoError(t, err)
		estimate := before - rig.level(InputTokens)
		settle(budgetResult{resp: resp})
		errs = append(errs, (estimate-float64(actual))/float64(actual))
	}
	// 4 bytes a token, less three times a tenth of it while nothing is known.
	assert.InDelta(t, 3.0/2.8-1, errs[0], 0.01, "the first estimate uses 4 bytes a token, with a margin")
	for i, e := range errs {
		assert.GreaterOrEqual(t, e, -0.001, "estimate %d is short of the count", i)
	}
	assert.InDelta(t, 0, errs[4], 0.02, "corrected within a few calls")
	assert.InDelta(t, 3, rig.snap().BytesPerToken, 0.05)
}

func TestBudgetEstimatesCoverANoisyTokenizer(t *testing.T) {
	// Two kinds of prompt, the same length in bytes, counted as 2.8 and 3.2
	// bytes a token: the mean is 3, and an estimate at the mean would be
	// short for every other call, drawing a 429 whenever it is admitted with
	// the level just covering it.
	rig := newBudgetRig(t, WithLimits(Limits{InputTokensPerMinute: 1_000_000}))
	prompt := strings.Repeat("abc ", 750)
	info := readRequestInfo(budgetReq(context.Background(), "", prompt, 10))
	counts := []int64{int64(float64(info.PromptBytes) / 2.8), int64(float64(info.PromptBytes) / 3.2)}
	var n int
	rig.setReply(func(*http.Request) (*http.Response, error) {
		return anthropicReply(200, nil, counts[n%2], 1), nil
	})
	for ; n < 40; n++ {
		before := rig.level(InputTokens)
		resp, err := rig.rt.RoundTrip(budgetReq(context.Background(), strconv.Itoa(n), prompt, 10))
		require.NoError(t, err)
		estimate := before - rig.level(InputTokens)
		settle(budgetResult{resp: resp})
		if n >= 10 {
			assert.GreaterOrEqual(t, estimate, float64(counts[n%2]), "call %d: the estimate is short", n)
			// mean less 3 deviations: 3 - 3·0.2 = 2.4 bytes a token, about 4/3 of the smaller count
			assert.Less(t, estimate, 1.4*float64(counts[n%2]), "call %d: the margin is out of proportion", n)
		}
	}
	assert.InDelta(t, 3, rig.snap().BytesPerToken, 0.1)
}

func TestBudgetBytesPerTokenStaysInRange(t *testing.T) {
	cases := []struct {
		name   string
		prompt int
		input  int64
		want   float64
	}{
		{"heavy caching", 40_000, 10, maxBytesPerToken},
		{"more tokens than bytes", 100, 1_000, minBytesPerToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 1000}))
			rig.setReply(func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, tc.input, 1), nil })
			for i := range 3 {
				_, err := rig.do(budgetReq(context.Background(), strconv.Itoa(i), strings.Repeat("x", tc.prompt), 1))
				require.NoError(t, err)
			}
			assert.Equal(t, tc.want, rig.snap().BytesPerToken)
		})
	}
}

func TestBudgetMaxConcurrencyFIFO(t *testing.T) {
	rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 1000}), WithMaxConcurrency(2))
	var held []budgetResult
	for _, seq := range []string{"a", "b"} {
		r := receive(t, rig.start(budgetReq(context.Background(), seq, "", 1)))
		require.NoError(t, r.err)
		held = append(held, r)
	}
	var queued []<-chan budgetResult
	for i, seq := range []string{"c", "d", "e"} {
		queued = append(queued, rig.start(budgetReq(context.Background(), seq, "", 1)))
		rig.waitQueued(i + 1)
	}
	assert.Equal(t, 2, rig.snap().InFlight)
	for i := range queued {
		settle(held[0]) // one body ends: the next in line goes
		held = held[1:]
		r := receive(t, queued[i])
		require.NoError(t, r.err)
		held = append(held, r)
		assert.Equal(t, 2, rig.snap().InFlight)
	}
	for _, r := range held {
		settle(r)
	}
	assert.Equal(t, []string{"a", "b", "c", "d", "e"}, rig.sentOrder())
	assert.Zero(t, rig.snap().InFlight)
}

func TestBudgetUtilizationAlert(t *testing.T) {
	var mu sync.Mutex
	var alerts []UtilizationAlert
	rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 10}),
		WithUtilizationAlert(0, func(a UtilizationAlert) {
			mu.Lock()
			alerts = append(alerts, a)
			mu.Unlock()
		}))
	got := func() []UtilizationAlert {
		mu.Lock()
		defer mu.Unlock()
		return append([]UtilizationAlert(nil), alerts...)
	}
	for i := range 7 {
		_, err := rig.do(budgetReq(context.Background(), strconv.Itoa(i), "", 1))
		require.NoError(t, err)
	}
	assert.Empty(t, got(), "70%")
	_, err := rig.do(budgetReq(context.Background(), "8", "", 1))
	require.NoError(t, err)
	_, err = rig.do(budgetReq(context.Background(), "9", "", 1))
	require.NoError(t, err)
	require.Len(t, got(), 1, "80% crosses 0.8 once")
	assert.Equal(t, UtilizationAlert{Key: sonnet, Dimension: Requests, Used: 8, Limit: 10,
		Utilization: 0.8, Above: true, At: testEpoch}, got()[0])
	assert.InDelta(t, 0.9, rig.snap().Dimensions[Requests].Utilization, 1e-9)

	rig.clk.Advance(time.Minute)
	_, err = rig.do(budgetReq(context.Background(), "10", "", 1))
	require.NoError(t, err)
	require.Len(t, got(), 2, "falls back below once")
	assert.Equal(t, UtilizationAlert{Key: sonnet, Dimension: Requests, Used: 0, Limit: 10,
		Utilization: 0, Above: false, At: testEpoch.Add(time.Minute)}, got()[1])
}

func TestBudgetWithoutObserve(t *testing.T) {
	// Alone, the layer learns from the headers and ends each attempt when
	// they arrive.
	clk := fakeclock.New(testEpoch)
	s := NewState(WithClock(clk), WithMaxConcurrency(1))
	rt := Chain(budgetBase(func(*http.Request) (*http.Response, error) {
		return anthropicReply(200, anthropicLimits(50, 40, 30_000, 20_000, 8_000, 8_000), 1, 1), nil
	}), Budget(s))
	for i := range 3 {
		resp, err := rt.RoundTrip(budgetReq(context.Background(), strconv.Itoa(i), "", 1))
		require.NoError(t, err)
		_ = resp.Body.Close()
	}
	snap := s.budget.snapshot(sonnet, clk.Now())
	assert.Zero(t, snap.InFlight)
	assert.Equal(t, 50, snap.Limits.RequestsPerMinute)
	// Pulled down to 40 at the first response; the server's reading never
	// raises it, so each later attempt takes one more.
	assert.InDelta(t, 38, snap.Dimensions[Requests].Level, 1e-6)
}

func TestBudgetManyGoroutines(t *testing.T) {
	rig := newBudgetRig(t, WithLimits(Limits{RequestsPerMinute: 120, InputTokensPerMinute: 20_000, OutputTokensPerMinute: 6_000}),
		WithMaxConcurrency(8), WithUtilizationAlert(0.5, func(UtilizationAlert) {}))
	var n atomic.Int64
	rig.setReply(func(req *http.Request) (*http.Response, error) {
		switch i := n.Add(1); {
		case i%13 == 0:
			return nil, errors.New("connection reset")
		case i%7 == 0:
			return anthropicReply(429, anthropicLimits(120, 3, 20_000, 1_000, 6_000, 0), 0, 0), nil
		default:
			return anthropicReply(200, anthropicLimits(120, 60, 20_000, 9_000, 6_000, 3_000), int64(i%50), int64(i%300)), nil
		}
	})

	const workers, each = 32, 20
	var wg sync.WaitGroup
	var ok, cancelled atomic.Int64
	for w := range workers {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range each {
				ctx, cancel := context.WithCancel(context.Background())
				if rnd.IntN(5) == 0 {
					cancel()
				}
				resp, err := rig.rt.RoundTrip(budgetReq(ctx, strconv.Itoa(w*each+i), strings.Repeat("y", rnd.IntN(2000)), 1+rnd.IntN(400)))
				switch {
				case err == nil:
					ok.Add(1)
					settle(budgetResult{resp: resp})
				case errors.Is(err, context.Canceled):
					cancelled.Add(1)
				}
				cancel()
			}
		})
	}
	stop := make(chan struct{})
	go func() { wg.Wait(); close(stop) }()
	for done := false; !done; {
		changed := rig.clk.Changed()
		if len(rig.clk.Pending()) > 0 {
			rig.clk.AdvanceToNext()
			continue
		}
		select {
		case <-stop:
			done = true
		case <-changed:
		}
	}
	assert.Positive(t, ok.Load())
	assert.Positive(t, cancelled.Load())
	snap := rig.snap()
	assert.Zero(t, snap.InFlight)
	assert.Zero(t, snap.Waiting)
	kb := rig.s.budget.forKey(sonnet)
	kb.mu.Lock()
	defer kb.mu.Unlock()
	for _, d := range []Dimension{Requests, InputTokens, OutputTokens} {
		assert.LessOrEqual(t, snap.Dimensions[d].Level, float64(snap.Dimensions[d].Limit), d.String())
		assert.InDelta(t, 0, kb.held[d], 1e-6, "the store holds nothing once all are settled: %s", d)
	}
}

func BenchmarkBudgetAdmit(b *testing.B) {
	const huge = 1 << 40 // never waits
	s := NewState(WithLimits(Limits{RequestsPerMinute: huge, InputTokensPerMinute: huge, OutputTokensPerMinute: huge}))
	info := RequestInfo{Provider: ProviderAnthropic, Model: "claude-sonnet-4-5", MaxTokens: 1024, PromptBytes: 4000}
	h := ParseRateLimitHeaders(http.Header(anthropicLimits(huge, huge, huge, huge, huge, huge)), time.Now())
	ex := &exchange{status: 200, headers: h, usage: Usage{InputTokens: 1000, OutputTokens: 200, Reported: true}}
	attempt := func(kb *keyBudget) {
		r := &reservation{kb: kb}
		if _, err := kb.admit(context.Background(), r, &info); err != nil {
			b.Fatal(err)
		}
		kb.responded(r, 200, h)
		r.settle(ex)
	}
	b.Run("uncontended", func(b *testing.B) {
		kb := s.budget.forKey(sonnet)
		b.ReportAllocs()
		for b.Loop() {
			attempt(kb)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		kb := s.budget.forKey(sonnet)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				attempt(kb)
			}
		})
	})
	b.Run("layer", func(b *testing.B) {
		rt := Chain(budgetBase(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil
		}), Budget(s))
		body := `{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`
		b.ReportAllocs()
		for b.Loop() {
			req, _ := http.NewRequest(http.MethodPost, "https://api.anthropic.com/v1/messages", strings.NewReader(body))
			resp, err := rt.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			_ = resp.Body.Close()
		}
	})
}
