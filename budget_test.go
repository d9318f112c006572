package tollgate_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
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

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/internal/reqscan"
)

var (
	bgtSonnet = tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}
	bgtEpoch  = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// The range the learned prompt bytes per token is kept in.
const (
	bgtMinBytesPerToken = 1.0
	bgtMaxBytesPerToken = 16.0
)

// bgtSeqKey carries a request's X-Seq in its context, so that the usage
// recorder can tell the calls apart.
type bgtSeqKey struct{}

// bgtRig is Chain(base, Trace, Budget, Observe) on a fake clock, with a
// base that answers through a replaceable function. Trace is there for its
// usage records, which tell how long each call waited for the budget.
type bgtRig struct {
	t   *testing.T
	clk *fakeclock.Clock
	s   *tollgate.State
	rt  http.RoundTripper

	mu      sync.Mutex
	reply   func(req *http.Request) (*http.Response, error)
	sent    []string                        // the X-Seq header of every request the base got, in order
	records map[string]tollgate.UsageRecord // by X-Seq
}

func newBgtRig(t *testing.T, opts ...tollgate.Option) *bgtRig {
	t.Helper()
	return newBgtRigOn(t, fakeclock.New(bgtEpoch), opts...)
}

// newBgtRigOn is newBgtRig on clk, for a Store that must share it.
func newBgtRigOn(t *testing.T, clk *fakeclock.Clock, opts ...tollgate.Option) *bgtRig {
	t.Helper()
	rig := &bgtRig{t: t, clk: clk, records: map[string]tollgate.UsageRecord{}}
	rig.reply = func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 10, 10), nil }
	record := tollgate.WithUsageRecorder(func(ctx context.Context, rec tollgate.UsageRecord) {
		seq, _ := ctx.Value(bgtSeqKey{}).(string)
		rig.mu.Lock()
		rig.records[seq] = rec
		rig.mu.Unlock()
	})
	rig.s = tollgate.NewState(append([]tollgate.Option{tollgate.WithClock(rig.clk), record,
		// Each attempt holds its max_tokens of output: the figures below are
		// whole numbers of them. (Tests of the other rule say so.)
		tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens)}, opts...)...)
	base := bgtBase(func(req *http.Request) (*http.Response, error) {
		rig.mu.Lock()
		rig.sent = append(rig.sent, req.Header.Get("X-Seq"))
		reply := rig.reply
		rig.mu.Unlock()
		return reply(req)
	})
	rig.rt = tollgate.Chain(base, tollgate.Trace(rig.s), tollgate.Budget(rig.s), tollgate.Observe(rig.s))
	return rig
}

// bgtBase is a base transport that consumes the request body and answers
// through a function.
type bgtBase func(*http.Request) (*http.Response, error)

func (f bgtBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return f(req)
}

func (rig *bgtRig) setReply(f func(*http.Request) (*http.Response, error)) {
	rig.mu.Lock()
	rig.reply = f
	rig.mu.Unlock()
}

func (rig *bgtRig) sentOrder() []string {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return append([]string(nil), rig.sent...)
}

// record returns the usage record of the call tagged seq, which the Trace
// layer makes when the call ends.
func (rig *bgtRig) record(seq string) tollgate.UsageRecord {
	rig.t.Helper()
	rig.mu.Lock()
	defer rig.mu.Unlock()
	rec, ok := rig.records[seq]
	require.True(rig.t, ok, "no usage record for %q", seq)
	return rec
}

// snap is the budget's view of the Sonnet key now; zero before the key is
// known.
func (rig *bgtRig) snap() tollgate.BudgetSnapshot { return bgtBudgetOf(rig.s.Snapshot(), bgtSonnet) }

func bgtBudgetOf(s tollgate.Snapshot, k tollgate.Key) tollgate.BudgetSnapshot {
	ks, _ := s.Key(k)
	return ks.Budget
}

func (rig *bgtRig) level(d tollgate.Dimension) float64 { return rig.snap().Dimensions[d].Level }

// bgtLevels are levels by Dimension.
type bgtLevels map[tollgate.Dimension]float64

// waitLevels waits until the levels are want, all at once. Settlements
// reach the store on a goroutine of tollgate's when no admission is coming
// to carry them, so the levels a settlement leaves are seen once it
// arrived; one settlement changes every dimension together. The wait
// guards against a broken test hanging, it does not time anything.
func (rig *bgtRig) waitLevels(want bgtLevels, msg string) {
	rig.t.Helper()
	match := func() bool {
		dims := rig.snap().Dimensions
		for d, w := range want {
			if math.Abs(dims[d].Level-w) > 1e-6 {
				return false
			}
		}
		return true
	}
	bgtEventually(match)
	dims := rig.snap().Dimensions
	for d, w := range want {
		assert.InDelta(rig.t, w, dims[d].Level, 1e-6, "%s: %s", msg, d)
	}
}

// do sends one attempt and reads its body to the end, which settles it.
func (rig *bgtRig) do(req *http.Request) (*http.Response, error) {
	rig.t.Helper()
	resp, err := rig.rt.RoundTrip(req)
	bgtSettle(rtResult{resp, err})
	return resp, err
}

// start sends req on its own goroutine; the response body is left unread.
func (rig *bgtRig) start(req *http.Request) <-chan rtResult {
	return startRoundTrip(rig.rt, req)
}

// bgtEventually polls cond for up to 5 s and reports whether it came true:
// a guard against a broken test hanging, not a timing assumption.
func bgtEventually(cond func() bool) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
	return true
}

func bgtWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.True(t, bgtEventually(cond), what)
}

func (rig *bgtRig) waitQueued(n int) {
	rig.t.Helper()
	bgtWaitFor(rig.t, fmt.Sprintf("%d queued", n), func() bool { return rig.snap().Waiting == n })
}

func (rig *bgtRig) waitSent(n int) {
	rig.t.Helper()
	bgtWaitFor(rig.t, fmt.Sprintf("%d sent", n), func() bool { return len(rig.sentOrder()) == n })
}

func bgtReceive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("nothing came")
		var zero T
		return zero
	}
}

// bgtSettle reads the body of r to the end and closes it.
func bgtSettle(r rtResult) {
	if r.resp != nil {
		_, _ = io.Copy(io.Discard, r.resp.Body)
		_ = r.resp.Body.Close()
	}
}

// bgtReq is an Anthropic Messages request with the given prompt and
// max_tokens (none when zero), tagged with seq.
func bgtReq(ctx context.Context, seq, prompt string, maxTokens int) *http.Request {
	return bgtModelReq(ctx, seq, "claude-sonnet-4-5", prompt, maxTokens)
}

func bgtModelReq(ctx context.Context, seq, model, prompt string, maxTokens int) *http.Request {
	mt := ""
	if maxTokens > 0 {
		mt = `"max_tokens":` + strconv.Itoa(maxTokens) + `,`
	}
	body := `{"model":` + strconv.Quote(model) + `,` + mt + `"messages":[{"role":"user","content":` + strconv.Quote(prompt) + `}]}`
	ctx = context.WithValue(ctx, bgtSeqKey{}, seq)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.anthropic.com/v1/messages", strings.NewReader(body))
	req.Header.Set("Anthropic-Version", "2023-06-01")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Seq", seq)
	return req
}

// bgtProducesMaxTokens answers with as much output as the request allowed.
func bgtProducesMaxTokens(req *http.Request) (*http.Response, error) {
	return bgtReply(200, nil, 0, reqscan.Read(req).MaxTokens), nil
}

// bgtReply is a JSON Messages response with the given usage.
func bgtReply(status int, h http.Header, in, out int64) *http.Response {
	return bgtUsageReply(status, h, fmt.Sprintf(`"input_tokens":%d,"output_tokens":%d`, in, out))
}

func bgtUsageReply(status int, h http.Header, usage string) *http.Response {
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

// bgtLimits is the Anthropic rate-limit headers: limit and remaining per
// requests, input tokens and output tokens (a negative value omits it).
func bgtLimits(rpm, rpmLeft, itpm, itpmLeft, otpm, otpmLeft int64) http.Header {
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
		limits    tollgate.Limits
		drain     int // requests of drainOut max_tokens, each producing that much output
		drainOut  int
		maxTokens int
		want      time.Duration
	}{
		{"requests: 1/s", tollgate.Limits{RequestsPerMinute: 60}, 60, 1, 1, time.Second},
		{"requests: 1 per 1.2s", tollgate.Limits{RequestsPerMinute: 50}, 50, 1, 1, 1200 * time.Millisecond},
		// A bucket that takes max_tokens holds a quarter second's refill
		// besides (cushion): 25 tokens at 100 a second.
		{"output: 100/s", tollgate.Limits{OutputTokensPerMinute: 6000}, 1, 6000, 1000, 10*time.Second + 250*time.Millisecond},
		{"output: partial level", tollgate.Limits{OutputTokensPerMinute: 6000}, 1, 5000, 1500, 5*time.Second + 250*time.Millisecond},
		{"output above capacity waits for a full bucket", tollgate.Limits{OutputTokensPerMinute: 600}, 1, 600, 5000, time.Minute},
		{"combined tokens", tollgate.Limits{TokensPerMinute: 6000}, 1, 5990, 1000, 10*time.Second + 150*time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t, tollgate.WithLimits(tc.limits))
			rig.setReply(func(*http.Request) (*http.Response, error) {
				return bgtReply(200, nil, 0, int64(tc.drainOut)), nil
			})
			for i := range tc.drain {
				_, err := rig.do(bgtReq(context.Background(), strconv.Itoa(i), "", tc.drainOut))
				require.NoError(t, err)
			}
			require.Empty(t, rig.clk.Pending(), "draining never waits")
			rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 1), nil })

			done := rig.start(bgtReq(context.Background(), "last", "", tc.maxTokens))
			require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
			assert.Equal(t, []time.Duration{tc.want}, rig.clk.Pending())
			rig.clk.Advance(tc.want - time.Nanosecond)
			assert.Len(t, rig.sentOrder(), tc.drain, "not admitted before its time")
			rig.clk.Advance(time.Nanosecond)
			r := bgtReceive(t, done)
			require.NoError(t, r.err)
			bgtSettle(r)
			assert.Equal(t, tc.want, rig.record("last").Waits.Budget)
		})
	}
}

func TestBudgetFIFO(t *testing.T) {
	// Output refills at 100 tokens a second. A big attempt queued first
	// holds back small ones queued after it, even though they would fit
	// sooner.
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 6000}))
	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 6000), nil })
	_, err := rig.do(bgtReq(context.Background(), "drain", "", 6000))
	require.NoError(t, err)
	rig.setReply(bgtProducesMaxTokens)

	sizes := []int{3000, 100, 100, 500, 100}
	var dones []<-chan rtResult
	for i, n := range sizes {
		dones = append(dones, rig.start(bgtReq(context.Background(), strconv.Itoa(i), "", n)))
		rig.waitQueued(i + 1)
	}
	rig.clk.Advance(29 * time.Second)
	assert.Equal(t, []string{"drain"}, rig.sentOrder(), "the small ones wait behind the big one")
	// Each is admitted when refill covers it and the quarter second's refill
	// kept besides (cushion), in order: 30.25 s, then (the quarter
	// second kept from there) +1 s, +1 s, +5 s, +1 s.
	for i, step := range []time.Duration{1250 * time.Millisecond, time.Second, time.Second, 5 * time.Second, time.Second} {
		// The new head sets its timer once the one before it is admitted.
		require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second), "attempt %d set no timer", i)
		rig.clk.Advance(step)
		r := bgtReceive(t, dones[i])
		require.NoError(t, r.err)
		bgtSettle(r)
	}
	assert.Equal(t, []string{"drain", "0", "1", "2", "3", "4"}, rig.sentOrder())
	assert.Zero(t, rig.snap().Waiting)
}

func TestBudgetSettleFreesOutput(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 1000}))
	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 5, 100), nil })
	first := bgtReceive(t, rig.start(bgtReq(context.Background(), "first", "", 1000)))
	require.NoError(t, first.err)
	assert.InDelta(t, 0, rig.level(tollgate.OutputTokens), 1e-6, "max_tokens reserved")

	second := rig.start(bgtReq(context.Background(), "second", "", 500))
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
	// 500 and a quarter second's refill (cushion), at 1,000 a minute.
	assert.Equal(t, []time.Duration{30*time.Second + 250*time.Millisecond}, rig.clk.Pending())

	bgtSettle(first) // the body ends: 100 of the 1000 reserved were produced
	r := bgtReceive(t, second)
	require.NoError(t, r.err, "admitted without the clock moving")
	assert.InDelta(t, 400, rig.level(tollgate.OutputTokens), 1e-6)
	bgtSettle(r)
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 800}, "settled to the 100 produced")
	assert.Zero(t, rig.snap().InFlight)
}

func TestBudgetGivesBack(t *testing.T) {
	// Limits big enough that nothing waits; the prompt is empty, so input is
	// estimated at zero and the usage sets it.
	limits := tollgate.Limits{RequestsPerMinute: 100, InputTokensPerMinute: 10_000, OutputTokensPerMinute: 10_000}
	cases := []struct {
		name  string
		reply func(*http.Request) (*http.Response, error)
		// levels after the attempt: requests, input, output
		want [3]float64
	}{
		{"success settles to usage", func(*http.Request) (*http.Response, error) {
			return bgtReply(200, nil, 300, 200), nil
		}, [3]float64{99, 9_700, 9_800}},
		{"cache reads do not count, cache creation does", func(*http.Request) (*http.Response, error) {
			return bgtUsageReply(200, nil, `"input_tokens":300,"cache_read_input_tokens":5000,"cache_creation_input_tokens":700,"output_tokens":200`), nil
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
			return bgtReply(429, nil, 0, 0), nil
		}, [3]float64{100, 10_000, 10_000}},
		{"transport error gives tokens back, keeps the request", func(*http.Request) (*http.Response, error) {
			return nil, errors.New("connection reset")
		}, [3]float64{99, 10_000, 10_000}},
		{"error response gives output back", func(*http.Request) (*http.Response, error) {
			return bgtReply(500, nil, 0, 0), nil
		}, [3]float64{99, 10_000, 10_000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t, tollgate.WithLimits(limits))
			rig.setReply(tc.reply)
			_, _ = rig.do(bgtReq(context.Background(), "1", "", 2000))
			rig.waitLevels(bgtLevels{tollgate.Requests: tc.want[0], tollgate.InputTokens: tc.want[1], tollgate.OutputTokens: tc.want[2]},
				"settled")
			assert.Zero(t, rig.snap().InFlight)
		})
	}
}

func TestBudget429GivesBackAtHeaders(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 10, OutputTokensPerMinute: 1000}))
	rig.setReply(bgtProducesMaxTokens)
	_, err := rig.do(bgtReq(context.Background(), "0", "", 500)) // leaves the levels below their limits
	require.NoError(t, err)

	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(429, nil, 0, 0), nil })
	r := bgtReceive(t, rig.start(bgtReq(context.Background(), "1", "", 400)))
	require.NoError(t, r.err)
	rig.waitLevels(bgtLevels{tollgate.Requests: 9, tollgate.OutputTokens: 500}, "refunded before the body is read")
	snap := rig.snap()
	assert.Equal(t, 1, snap.InFlight, "in flight until the body ends")
	assert.Zero(t, snap.Dimensions[tollgate.OutputTokens].Reserved, "the 429 holds nothing any more")
	assert.Zero(t, snap.Dimensions[tollgate.Requests].Reserved)
	bgtSettle(r)
	snap = rig.snap()
	assert.Zero(t, snap.InFlight)
	assert.Equal(t, int64(1), snap.Dimensions[tollgate.Requests].Used, "a 429 costs nothing")
	assert.Equal(t, int64(500), snap.Dimensions[tollgate.OutputTokens].Used)

	// Not refunded twice: the next admission finds the levels the refund
	// left, less its own cost.
	release := make(chan struct{})
	rig.setReply(func(*http.Request) (*http.Response, error) {
		<-release
		return bgtReply(200, nil, 0, 100), nil
	})
	next := rig.start(bgtReq(context.Background(), "2", "", 100))
	rig.waitSent(3)
	assert.InDelta(t, 400, rig.level(tollgate.OutputTokens), 1e-6)
	assert.InDelta(t, 8, rig.level(tollgate.Requests), 1e-6)
	close(release)
	bgtSettle(bgtReceive(t, next))
}

func TestBudgetCancelWhileWaiting(t *testing.T) {
	t.Run("tokens", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 60, OutputTokensPerMinute: 6000}))
		rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 6000), nil })
		_, err := rig.do(bgtReq(context.Background(), "drain", "", 6000))
		require.NoError(t, err)
		rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 10), nil })
		levels := rig.snap().Dimensions

		ctx, cancel := context.WithCancel(context.Background())
		big := rig.start(bgtReq(ctx, "big", "", 5000))
		rig.waitQueued(1)
		small := rig.start(bgtReq(context.Background(), "small", "", 100))
		rig.waitQueued(2)
		// Enough for small and the quarter second's refill kept besides
		// (cushion), not for big.
		rig.clk.Advance(1250 * time.Millisecond)
		assert.Equal(t, []string{"drain"}, rig.sentOrder())

		levels[tollgate.OutputTokens].Level += 125 // refilled meanwhile
		levels[tollgate.Requests].Level = 60
		cancel()
		r := bgtReceive(t, big)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Nil(t, r.resp)
		r = bgtReceive(t, small)
		require.NoError(t, r.err, "the cancelled head no longer holds back the next")
		assert.Equal(t, []string{"drain", "small"}, rig.sentOrder())
		bgtSettle(r)
		snap := rig.snap()
		assert.Zero(t, snap.Waiting)
		assert.Zero(t, snap.InFlight)
		rig.waitLevels(bgtLevels{tollgate.OutputTokens: levels[tollgate.OutputTokens].Level - 10,
			tollgate.Requests: levels[tollgate.Requests].Level - 1}, "small settled")
	})
	t.Run("slot", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100}), tollgate.WithMaxConcurrency(1))
		first := bgtReceive(t, rig.start(bgtReq(context.Background(), "first", "", 10)))
		require.NoError(t, first.err)
		ctx, cancel := context.WithCancel(context.Background())
		second := rig.start(bgtReq(ctx, "second", "", 10))
		rig.waitQueued(1)
		assert.Empty(t, rig.clk.Pending(), "a wait for a slot needs no timer")
		rig.clk.Advance(300 * time.Millisecond)
		cancel()
		r := bgtReceive(t, second)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Equal(t, 300*time.Millisecond, rig.record("second").Waits.Budget)
		snap := rig.snap()
		assert.Equal(t, 1, snap.InFlight)
		assert.Zero(t, snap.Waiting)
		assert.InDelta(t, 99.5, snap.Dimensions[tollgate.Requests].Level, 1e-6, "the first took one, the cancelled none; 0.5 refilled")
		bgtSettle(first)
		assert.Zero(t, rig.snap().InFlight)
		_, err := rig.do(bgtReq(context.Background(), "third", "", 10))
		require.NoError(t, err)
	})
	t.Run("already cancelled", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100}))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := rig.do(bgtReq(ctx, "1", "", 10))
		assert.ErrorIs(t, err, context.Canceled)
		assert.Empty(t, rig.sentOrder())
		assert.InDelta(t, 100, rig.level(tollgate.Requests), 1e-6)
	})
}

func TestBudgetColdStart(t *testing.T) {
	rig := newBgtRig(t)
	release := make(chan *http.Response)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })

	a := rig.start(bgtReq(context.Background(), "a", "hello", 10))
	rig.waitSent(1)
	assert.True(t, rig.snap().ColdStart)
	assert.Equal(t, tollgate.TierUnknown, rig.snap().Tier)
	b := rig.start(bgtReq(context.Background(), "b", "hello", 10))
	c := rig.start(bgtReq(context.Background(), "c", "hello", 10))
	rig.waitQueued(2)
	assert.Empty(t, rig.clk.Pending())
	assert.Equal(t, []string{"a"}, rig.sentOrder(), "one at a time before the limits are known")

	// a's headers tell the limits: b and c go at once, together, while a's
	// body is still unread.
	release <- bgtReply(200, bgtLimits(50, 49, 30_000, 29_000, 8_000, 8_000), 2, 5)
	ra := bgtReceive(t, a)
	require.NoError(t, ra.err)
	rig.waitSent(3)
	assert.False(t, rig.snap().ColdStart)
	release <- bgtReply(200, nil, 2, 5)
	release <- bgtReply(200, nil, 2, 5)
	for _, ch := range []<-chan rtResult{b, c} {
		r := bgtReceive(t, ch)
		require.NoError(t, r.err)
		bgtSettle(r)
	}
	bgtSettle(ra)
	snap := rig.snap()
	assert.Equal(t, tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, snap.Limits)
	assert.Equal(t, "Tier 1", snap.Tier)
	assert.Equal(t, tollgate.LimitFromHeaders, snap.Dimensions[tollgate.Requests].Source)
	assert.Equal(t, tollgate.LimitUnknown, snap.Dimensions[tollgate.Tokens].Source, "Anthropic's tokens-* is not a limit of its own")
	assert.Zero(t, snap.InFlight)
}

func TestBudgetColdStartWithoutLimitHeaders(t *testing.T) {
	// An error response without limit headers opens the gate for the next
	// attempt only; a successful one without them says this server (a
	// gateway) will never tell its limits, so the cold start ends.
	rig := newBgtRig(t)
	release := make(chan *http.Response)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	a := rig.start(bgtReq(context.Background(), "a", "", 10))
	rig.waitSent(1)
	b := rig.start(bgtReq(context.Background(), "b", "", 10))
	rig.waitQueued(1)
	c := rig.start(bgtReq(context.Background(), "c", "", 10))
	d := rig.start(bgtReq(context.Background(), "d", "", 10))
	rig.waitQueued(3)
	release <- bgtReply(529, nil, 1, 1)
	rig.waitSent(2)
	rig.waitQueued(2)
	assert.True(t, rig.snap().ColdStart, "an error says nothing about the limits")
	release <- bgtReply(200, nil, 1, 1)
	rig.waitSent(4)
	assert.False(t, rig.snap().ColdStart, "a success without limit headers ends the cold start")
	release <- bgtReply(200, nil, 1, 1)
	release <- bgtReply(200, nil, 1, 1)
	for _, ch := range []<-chan rtResult{a, b, c, d} {
		r := bgtReceive(t, ch)
		require.NoError(t, r.err)
		bgtSettle(r)
	}
	assert.Equal(t, []string{"a", "b"}, rig.sentOrder()[:2])
	assert.ElementsMatch(t, []string{"c", "d"}, rig.sentOrder()[2:])
}

func TestBudgetLimitsPrecedence(t *testing.T) {
	type sources = [tollgate.NumDimensions]tollgate.LimitSource
	const opt, hdr = tollgate.LimitFromOption, tollgate.LimitFromHeaders
	cases := []struct {
		name    string
		opts    []tollgate.Option
		headers http.Header
		want    tollgate.Limits
		sources sources
		tier    string
	}{
		{"option only", []tollgate.Option{tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})}, nil,
			tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000},
			sources{tollgate.Requests: opt, tollgate.InputTokens: opt, tollgate.OutputTokens: opt}, "Tier 1"},
		{"headers only", nil, bgtLimits(1_000, 1_000, 2_000_000, 2_000_000, 400_000, 400_000),
			tollgate.Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000},
			sources{tollgate.Requests: hdr, tollgate.InputTokens: hdr, tollgate.OutputTokens: hdr}, "Start"},
		{"headers win", []tollgate.Option{tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 10, InputTokensPerMinute: 1_000, OutputTokensPerMinute: 1_000})},
			bgtLimits(4_000, 4_000, 2_000_000, 2_000_000, 400_000, 400_000),
			tollgate.Limits{RequestsPerMinute: 4_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000},
			sources{tollgate.Requests: hdr, tollgate.InputTokens: hdr, tollgate.OutputTokens: hdr}, "Tier 4"},
		{"option keeps what headers do not say", []tollgate.Option{tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 10, OutputTokensPerMinute: 1_000, TokensPerMinute: 5_000})},
			bgtLimits(-1, -1, 30_000, 30_000, -1, -1),
			tollgate.Limits{RequestsPerMinute: 10, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 1_000, TokensPerMinute: 5_000},
			sources{tollgate.Requests: opt, tollgate.InputTokens: hdr, tollgate.OutputTokens: opt, tollgate.Tokens: opt}, tollgate.TierCustom},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t, tc.opts...)
			rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, tc.headers, 1, 1), nil })
			_, err := rig.do(bgtReq(context.Background(), "1", "", 1))
			require.NoError(t, err)
			snap := rig.snap()
			assert.Equal(t, tc.want, snap.Limits)
			for d := range tollgate.Dimension(tollgate.NumDimensions) {
				assert.Equal(t, tc.sources[d], snap.Dimensions[d].Source, d.String())
			}
			assert.Equal(t, tc.tier, snap.Tier)
		})
	}
}

func TestBudgetOpenAIDialect(t *testing.T) {
	clk := fakeclock.New(bgtEpoch)
	store := newBgtRecordingStore(clk)
	rig := newBgtRigOn(t, clk, store.options()...)
	release := make(chan struct{}, 1)
	release <- struct{}{} // the first call is answered at once
	rig.setReply(func(*http.Request) (*http.Response, error) {
		<-release
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
	chat := func(seq string) *http.Request {
		req, _ := http.NewRequest(http.MethodPost, "https://api.openai.com/v1/chat/completions",
			strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("X-Seq", seq)
		return req
	}
	_, err := rig.do(chat("1"))
	require.NoError(t, err)
	gpt := tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"}
	snap := bgtBudgetOf(rig.s.Snapshot(), gpt)
	assert.Equal(t, tollgate.Limits{RequestsPerMinute: 500, TokensPerMinute: 30_000}, snap.Limits)
	assert.Equal(t, tollgate.TierCustom, snap.Tier)
	assert.Equal(t, bgtMinBytesPerToken, snap.BytesPerToken, "2 bytes for 1000 counted tokens is clamped")
	// The limits were learned from this response, so the store had no
	// bucket for them yet: the levels are what the response said remains,
	// and the next admission starts the buckets there and takes its cost.
	assert.InDelta(t, 20_000, snap.Dimensions[tollgate.Tokens].Level, 1e-6)
	assert.InDelta(t, 499, snap.Dimensions[tollgate.Requests].Level, 1e-6)
	// Its settlements (the charge at the headers, the usage at the end)
	// find no bucket: the bucket starts at the next admission.
	for range 2 {
		assert.True(t, math.IsNaN(bgtReceive(t, store.settled).Level[tollgate.Tokens]))
	}
	next := rig.start(chat("2"))
	rig.waitSent(2)
	snap = bgtBudgetOf(rig.s.Snapshot(), gpt)
	tokens := snap.Dimensions[tollgate.Tokens]
	assert.InDelta(t, float64(tollgate.DefaultOutputTokens+2), tokens.Reserved, 1e-6,
		"DefaultOutputTokens and 2 bytes at the clamped 1 byte a token")
	assert.InDelta(t, 20_000-tokens.Reserved, tokens.Level, 1e-6)
	assert.InDelta(t, 498, snap.Dimensions[tollgate.Requests].Level, 1e-6)
	release <- struct{}{}
	bgtSettle(bgtReceive(t, next))
}

// bgtRecordingStore passes every call to Store and sends what each Settle
// answered on settled, so that a test knows when a settlement has reached
// the store and what the store made of it.
type bgtRecordingStore struct {
	tollgate.Store
	settled chan tollgate.Levels
}

func newBgtRecordingStore(clk *fakeclock.Clock) *bgtRecordingStore {
	return &bgtRecordingStore{Store: tollgate.NewMemoryStore(clk), settled: make(chan tollgate.Levels, 64)}
}

func (s *bgtRecordingStore) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	l, err := s.Store.Settle(ctx, name, st)
	s.settled <- l
	return l, err
}

// options returns the options that make a Transport keep its levels in s.
func (s *bgtRecordingStore) options() []tollgate.Option {
	return []tollgate.Option{tollgate.WithStore(s), tollgate.WithStoreTimeout(time.Hour)}
}

func TestBudgetPullsDownToRemaining(t *testing.T) {
	withLimit := func(rpm int) []tollgate.Option {
		return []tollgate.Option{tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: rpm})}
	}
	cases := []struct {
		name   string
		opts   []tollgate.Option // none: the limit is learned from the observed response
		before int               // attempts sent (and left in flight) before the observed one
		after  int               // attempts sent after it, before its headers arrive
		wait   time.Duration
		header http.Header
		dim    tollgate.Dimension
		want   float64
	}{
		{"requests, exact", nil, 0, 0, 0, bgtLimits(50, 10, -1, -1, -1, -1), tollgate.Requests, 10},
		{"tokens are rounded to the thousand: allow a whole one", nil, 0, 0, 0,
			bgtLimits(-1, -1, 30_000, 5_000, -1, -1), tollgate.InputTokens, 6_000},
		{"never raised", withLimit(50), 0, 0, 0, bgtLimits(-1, 50, -1, -1, -1, -1), tollgate.Requests, 49},
		{"attempts sent before were counted by the server", withLimit(50), 3, 0, 0,
			bgtLimits(-1, 40, -1, -1, -1, -1), tollgate.Requests, 40},
		{"attempts sent after may have been counted too: not subtracted twice", withLimit(50), 0, 3, 0,
			bgtLimits(-1, 40, -1, -1, -1, -1), tollgate.Requests, 40},
		{"a reading above the level changes nothing", withLimit(50), 0, 3, 0,
			bgtLimits(-1, 48, -1, -1, -1, -1), tollgate.Requests, 46},
		{"refill since the server counted", withLimit(60), 0, 0, 10 * time.Second,
			bgtLimits(-1, 20, -1, -1, -1, -1), tollgate.Requests, 30},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := fakeclock.New(bgtEpoch)
			store := newBgtRecordingStore(clk)
			rig := newBgtRigOn(t, clk, append(tc.opts, store.options()...)...)
			release := make(chan *http.Response, 1)
			rig.setReply(func(req *http.Request) (*http.Response, error) {
				if req.Header.Get("X-Seq") == "observed" {
					return <-release, nil
				}
				return bgtReply(200, nil, 0, 0), nil
			})
			var others []<-chan rtResult
			for i := range tc.before {
				others = append(others, rig.start(bgtReq(context.Background(), "before", "", 1)))
				rig.waitSent(i + 1)
			}
			observed := rig.start(bgtReq(context.Background(), "observed", "", 1))
			rig.waitSent(tc.before + 1)
			for i := range tc.after {
				others = append(others, rig.start(bgtReq(context.Background(), "after", "", 1)))
				rig.waitSent(tc.before + 1 + i + 1)
			}
			for _, ch := range others {
				r := bgtReceive(t, ch) // headers arrived; bodies unread, so still in flight
				require.NoError(t, r.err)
				defer bgtSettle(r)
			}
			rig.clk.Advance(tc.wait)
			release <- bgtReply(200, tc.header, 0, 0)
			r := bgtReceive(t, observed)
			require.NoError(t, r.err)
			learned := tc.opts == nil
			if learned {
				assert.InDelta(t, tc.want, rig.level(tc.dim), 1e-6, "a limit just learned starts at the reading")
			}
			bgtSettle(r)
			// The reading reaches the store in one settlement, at the headers
			// or with the attempt's settlement.
			levels := bgtReceive(t, store.settled).Level
			if learned {
				assert.True(t, math.IsNaN(levels[tc.dim]), "the store has no bucket for a limit it was never asked to admit against")
			} else {
				assert.InDelta(t, tc.want, levels[tc.dim], 1e-6, "the store's level")
			}
			rig.waitLevels(bgtLevels{tc.dim: tc.want}, "the snapshot's level")
		})
	}
}

// The server reads what remains when it admits an attempt; the headers of
// a JSON response carry it when the body is done. What an attempt that was
// in flight then gives back meanwhile (the max_tokens it reserved and did
// not use) is on the server's side of the reading: the floor counts it.
func TestBudgetFloorCountsWhatOthersGaveBackAfterTheReading(t *testing.T) {
	rig, store, release := newBgtFloorRig(t, tollgate.Limits{OutputTokensPerMinute: 10_000}, 10, 100)
	before := rig.start(bgtReq(context.Background(), "before", "", 2000))
	rig.waitSent(1)
	rb := bgtReceive(t, before) // headers; the body, with the usage, unread
	require.NoError(t, rb.err)
	observed := rig.start(bgtReq(context.Background(), "observed", "", 2000))
	rig.waitSent(2)
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 6_000}, "both hold their max_tokens")

	bgtSettle(rb)
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 7_900}, "before gave back 1,900")

	// The server said 6,000 remained when it admitted observed: 10,000 less
	// the two reservations (rounded to the thousand, so up to 7,000).
	release <- bgtReply(200, bgtLimits(-1, -1, -1, -1, 10_000, 6_000), 10, 100)
	r := bgtReceive(t, observed)
	require.NoError(t, r.err)
	bgtSettle(r)
	// The server holds 6,000 + 1,900 + 1,900 now. A floor of the reading
	// and observed's own 1,900 alone would hold it at 8,900.
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 9_800}, "both gave back what they did not use")
	assert.True(t, settledTo(t, store, tollgate.OutputTokens, 9_800), "the store's level")
}

// What tollgate charged too much of its own (here an input estimate above
// what the server counted, at admission) the server never took, so it
// never gave it back: the floor does not count it.
func TestBudgetFloorCountsNoRefundTheServerDidNotMake(t *testing.T) {
	rig, store, release := newBgtFloorRig(t, tollgate.Limits{InputTokensPerMinute: 20_000}, 100, 10)
	before := rig.start(bgtReq(context.Background(), "before", strings.Repeat("word ", 600), 10))
	rig.waitSent(1)
	rb := bgtReceive(t, before)
	require.NoError(t, rb.err)
	level := rig.level(tollgate.InputTokens)
	observed := rig.start(bgtReq(context.Background(), "observed", "", 10))
	rig.waitSent(2)
	observedEstimate := level - rig.level(tollgate.InputTokens)
	level = rig.level(tollgate.InputTokens)
	bgtSettle(rb)
	rig.waitLevels(bgtLevels{tollgate.InputTokens: 20_000 - 100 - observedEstimate}, "before settled to the 100 the server counted")
	require.Greater(t, rig.level(tollgate.InputTokens), level+500, "before was charged much more input than that")

	// Something else took 4,800 tokens: the server says 15,000 remained
	// when it admitted observed (rounded, so up to 16,000), where tollgate
	// held 19,900 less observed. Observed's 100, counted then, settles after.
	release <- bgtReply(200, bgtLimits(-1, -1, 20_000, 15_000, -1, -1), 100, 10)
	r := bgtReceive(t, observed)
	require.NoError(t, r.err)
	bgtSettle(r)
	want := 16_000 - (100 - observedEstimate)
	rig.waitLevels(bgtLevels{tollgate.InputTokens: want}, "pulled down to the reading")
	assert.True(t, settledTo(t, store, tollgate.InputTokens, want), "the store's level")
}

// newBgtFloorRig is a rig told limits, on a recording store, whose attempts
// tagged "observed" are answered with what is sent on release and the
// others at once, with usage in and out.
func newBgtFloorRig(t *testing.T, limits tollgate.Limits, in, out int64) (*bgtRig, *bgtRecordingStore, chan<- *http.Response) {
	clk := fakeclock.New(bgtEpoch)
	store := newBgtRecordingStore(clk)
	rig := newBgtRigOn(t, clk, append(store.options(), tollgate.WithLimits(limits))...)
	release := make(chan *http.Response, 1)
	rig.setReply(func(req *http.Request) (*http.Response, error) {
		if req.Header.Get("X-Seq") == "observed" {
			return <-release, nil
		}
		return bgtReply(200, nil, in, out), nil
	})
	return rig, store, release
}

// settledTo waits until a settlement leaves the store's level of d at
// want, and reports whether one did (settlements go to the store on a
// goroutine of their own; the wait guards against a hang, it times
// nothing).
func settledTo(t *testing.T, s *bgtRecordingStore, d tollgate.Dimension, want float64) bool {
	t.Helper()
	for {
		select {
		case l := <-s.settled:
			if math.Abs(l.Level[d]-want) <= 1e-6 {
				return true
			}
		case <-time.After(5 * time.Second):
			return false
		}
	}
}

func TestBudgetKeepsASecondsRefillOfInputWhileOthersAreInFlight(t *testing.T) {
	// The input estimates of attempts in flight may fall short together:
	// while one is in flight, a bucket that counts input admits the next
	// once it holds the cost and a second's refill; alone, at the cost. (As
	// it counts max_tokens too, it keeps a quarter second's refill besides:
	// cushion.)
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{TokensPerMinute: 6000}),
		tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens))
	release := make(chan *http.Response, 2)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	first := rig.start(bgtReq(context.Background(), "first", "", 1000))
	rig.waitSent(1)
	second := rig.start(bgtReq(context.Background(), "second", "", 5000))
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{1250 * time.Millisecond}, rig.clk.Pending(), "5,000 left, 5,000 + 100 + 25 needed at 100 a second")
	rig.clk.Advance(1250 * time.Millisecond)
	rig.waitSent(2)
	release <- bgtReply(200, nil, 0, 1000)
	release <- bgtReply(200, nil, 0, 5000)
	for _, done := range []<-chan rtResult{first, second} {
		r := bgtReceive(t, done)
		require.NoError(t, r.err)
		bgtSettle(r)
	}
}

func TestBudgetLevelOfALimitJustLearned(t *testing.T) {
	// A limit learned from a response has no bucket in the store until the
	// next admission starts one, at what the response said remains, refilled
	// since. Meanwhile Snapshot shows that level, refilling, not a full
	// bucket.
	clk := fakeclock.New(bgtEpoch)
	store := newBgtRecordingStore(clk)
	// Each attempt reserves its max_tokens, so that the levels below are
	// whole numbers of them.
	rig := newBgtRigOn(t, clk, append(store.options(), tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens))...)
	release := make(chan *http.Response, 1)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })

	first := rig.start(bgtReq(context.Background(), "first", "", 100))
	rig.waitSent(1)
	clk.Advance(10 * time.Second) // the server counts, and its headers arrive, 10 s after the send
	release <- bgtReply(200, bgtLimits(60, 20, -1, -1, 6_000, 3_000), 0, 50)
	r := bgtReceive(t, first)
	require.NoError(t, r.err)
	// requests: 20 left; output: 3000 left, read as up to 4000 (rounded to
	// the thousand).
	rig.waitLevels(bgtLevels{tollgate.Requests: 20, tollgate.OutputTokens: 4_000}, "at the headers")
	bgtSettle(r)
	// The settlements of the first attempt (its charge at the headers, then
	// its usage) find no bucket in the store; the second one answering means
	// the first answer has been taken in. The reading counted its 100
	// tokens of max_tokens, of which the server gave 50 back when it ended.
	for range 2 {
		assert.True(t, math.IsNaN(bgtReceive(t, store.settled).Level[tollgate.Requests]))
	}
	rig.waitLevels(bgtLevels{tollgate.Requests: 20, tollgate.OutputTokens: 4_050}, "after the store's answers")
	clk.Advance(10 * time.Second)
	rig.waitLevels(bgtLevels{tollgate.Requests: 30, tollgate.OutputTokens: 5_050}, "refilling")

	release <- bgtReply(200, nil, 0, 100)
	next := rig.start(bgtReq(context.Background(), "next", "", 100))
	rig.waitSent(2)
	rig.waitLevels(bgtLevels{tollgate.Requests: 29, tollgate.OutputTokens: 4_950}, "the next admission starts the buckets there")
	bgtSettle(bgtReceive(t, next))
}

// A JSON response's headers come when its body is done, here 10 s after
// the send. What they say remains (20 of 60 requests) may have been read at
// the send or at the headers; the reset, when the bucket will be full,
// tells which, and the bucket is credited the refill since the send only
// where it shows it (less a second, for a reset rounded to the second).
func TestBudgetLimitJustLearnedIsCreditedTheRefillItsResetShows(t *testing.T) {
	sent := bgtEpoch
	headersAt := sent.Add(10 * time.Second)
	cases := []struct {
		name  string
		reset string // "": none
		want  float64
	}{
		{"read at the send: full 40 s after it", sent.Add(40 * time.Second).Format(time.RFC3339), 29},
		{"read at the headers: full 40 s after them", headersAt.Add(40 * time.Second).Format(time.RFC3339), 20},
		{"no reset", "", 20},
		{"a reset already past credits no more than the refill since the send", sent.Format(time.RFC3339), 30},
		{"a reset no bucket of a minute could have is ignored", headersAt.Add(10 * time.Minute).Format(time.RFC3339), 20},
		{"a malformed reset is ignored", "soon", 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t)
			release := make(chan *http.Response, 1)
			rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
			first := rig.start(bgtReq(context.Background(), "first", "", 10))
			rig.waitSent(1)
			rig.clk.Advance(headersAt.Sub(sent))
			h := bgtLimits(60, 20, -1, -1, -1, -1)
			if tc.reset != "" {
				h.Set("anthropic-ratelimit-requests-reset", tc.reset)
			}
			release <- bgtReply(200, h, 0, 5)
			r := bgtReceive(t, first)
			require.NoError(t, r.err)
			rig.waitLevels(bgtLevels{tollgate.Requests: tc.want}, "at the headers")
			bgtSettle(r)
		})
	}
}

// bgtAnsweredAfter sends req, the rig's first attempt, whose reply comes
// from release; lets out pass on the clock; answers it with resp; and reads
// the response to its end.
func bgtAnsweredAfter(rig *bgtRig, release chan<- *http.Response, req *http.Request, out time.Duration, resp *http.Response) {
	rig.t.Helper()
	done := rig.start(req)
	rig.waitSent(1)
	rig.clk.Advance(out)
	release <- resp
	r := bgtReceive(rig.t, done)
	require.NoError(rig.t, r.err)
	bgtSettle(r)
}

// bgtSecondAdmitted sends a second attempt through rig, with no prompt and
// a reply from release, and waits for the levels its admission leaves.
func bgtSecondAdmitted(rig *bgtRig, release chan<- *http.Response, want bgtLevels, msg string) {
	rig.t.Helper()
	release <- bgtReply(200, nil, 0, 5)
	next := rig.start(bgtReq(context.Background(), "next", "", 10))
	rig.waitSent(2)
	rig.waitLevels(want, msg)
	bgtSettle(bgtReceive(rig.t, next))
}

// A first call charged more input than the server counted is given the
// difference back when it ends, and the store's bucket, started by the next
// admission, starts there: what the response said remains bounds it as of
// the call's send, when the server may have read it, not as of the
// headers, which would hold the bucket 2,000 tokens under the server's (6 s
// of refill, less the thousand a rounded reading allows) for as long as the
// limit binds.
func TestBudgetLimitJustLearnedStartsTheStoreAtTheLevelTheCallLeft(t *testing.T) {
	rig := newBgtRig(t)
	release := make(chan *http.Response, 1)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	// The server counted 6,000 input tokens at the send and read its level
	// then: 24,000 left, full again 12 s later. The headers come 6 s after.
	h := bgtLimits(-1, -1, 30_000, 24_000, -1, -1)
	h.Set("anthropic-ratelimit-input-tokens-reset", rig.clk.Now().Add(12*time.Second).Format(time.RFC3339))
	bgtAnsweredAfter(rig, release, bgtReq(context.Background(), "first", strings.Repeat("word ", 12_000), 10),
		6*time.Second, bgtReply(200, h, 6_000, 5))
	rig.waitLevels(bgtLevels{tollgate.InputTokens: 27_000}, "settled")

	bgtSecondAdmitted(rig, release, bgtLevels{tollgate.InputTokens: 27_000}, "the next admission starts the store's bucket there")
}

// A store that lost its buckets starts them from what this process knows,
// held under the newest reading as of when the server is taken to have
// read it: at the headers. Taken as of the send, the 6 s a JSON call was
// out would be refill credited to a level that misses what others took
// meanwhile (here 16,000 tokens: the server had 10,000 left).
func TestBudgetStoreThatLostItsBucketsStartsUnderTheReadingAsOfItsHeaders(t *testing.T) {
	clk := fakeclock.New(bgtEpoch)
	store := &stoRestartable{clk: clk}
	store.restart()
	rig := newBgtRigOn(t, clk, tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour),
		tollgate.WithLimits(tollgate.Limits{InputTokensPerMinute: 30_000}))
	release := make(chan *http.Response, 1)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	bgtAnsweredAfter(rig, release, bgtReq(context.Background(), "first", "", 10),
		6*time.Second, bgtReply(200, bgtLimits(-1, -1, 30_000, 10_000, -1, -1), 0, 5))
	// The store's floor is the most the level can be: read at the send,
	// rounded, with the refill since.
	rig.waitLevels(bgtLevels{tollgate.InputTokens: 11_000 + 3_000}, "pulled down")

	store.restart()
	bgtSecondAdmitted(rig, release, bgtLevels{tollgate.InputTokens: 11_000}, "the restarted store starts under the reading as of its headers")
}

// Where a pool's first response shows that the server counts output as it
// is produced (its reading at the send, a full bucket, is more than the
// limit less max_tokens), the server's output bucket stayed full while the
// reply was generated and took the reply's output only after: the bucket
// starts at the limit less that output, with no refill credited for the
// time the attempt was out, though the attempt was charged max_tokens then.
func TestBudgetLimitJustLearnedCreditsNoRefillToABucketThatStayedFull(t *testing.T) {
	rig := newBgtRig(t)
	release := make(chan *http.Response, 1)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	first := rig.start(bgtReq(context.Background(), "first", "", 4096))
	rig.waitSent(1)
	sent := rig.clk.Now()
	rig.clk.Advance(5 * time.Second) // 667 output tokens of refill
	h := bgtLimits(60, 59, -1, -1, 8000, 8000)
	h.Set("anthropic-ratelimit-output-tokens-reset", sent.Format(time.RFC3339))
	release <- bgtReply(200, h, 10, 455)
	r := bgtReceive(t, first)
	require.NoError(t, r.err)
	bgtSettle(r)
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 8000 - 455}, "settled")
}

// The same told the limits: the first attempt goes alone, charged its
// max_tokens until a response shows how output is counted, and the bucket
// tollgate keeps refills meanwhile; the server's, which took nothing, did
// not. What the response proves brings the level down to the server's.
func TestBudgetToldLimitsCreditsNoRefillToABucketThatStayedFull(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 60, OutputTokensPerMinute: 8000}))
	release := make(chan *http.Response, 1)
	rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
	first := rig.start(bgtReq(context.Background(), "first", "", 4096))
	rig.waitSent(1)
	rig.clk.Advance(5 * time.Second)
	release <- bgtReply(200, bgtLimits(60, 59, -1, -1, 8000, 8000), 10, 455)
	r := bgtReceive(t, first)
	require.NoError(t, r.err)
	bgtSettle(r)
	rig.waitLevels(bgtLevels{tollgate.OutputTokens: 8000 - 455}, "settled")
}

// OpenAI's resets are durations, which say when the bucket will be full
// but not when they were read. A response whose requests remaining is the
// limit less the request itself, though the request was out longer than
// the server takes to refill one, was read when the server admitted it:
// the buckets it starts are credited the refill since the send (but for a
// second, as a reset is).
func TestBudgetLimitJustLearnedIsCreditedTheRefillSinceAReadingAtTheSend(t *testing.T) {
	cases := []struct {
		name         string
		out          time.Duration // from the send to the headers
		requestsLeft string
		want         float64 // the tokens level at the headers
	}{
		{"read at the send: 6 s of refill, less a second", 6 * time.Second, "499", 150_000 + 200_000.0*5/60},
		{"read at the headers: the request had come back", 6 * time.Second, "500", 150_000},
		{"others counted too: it does not tell", 6 * time.Second, "498", 150_000},
		{"out less than a request's refill: it does not tell", 100 * time.Millisecond, "499", 150_000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t)
			release := make(chan *http.Response, 1)
			rig.setReply(func(*http.Request) (*http.Response, error) { return <-release, nil })
			req, _ := http.NewRequest(http.MethodPost, "https://api.openai.com/v1/chat/completions",
				strings.NewReader(`{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`))
			first := rig.start(req)
			rig.waitSent(1)
			rig.clk.Advance(tc.out)
			h := http.Header{}
			h.Set("x-ratelimit-limit-requests", "500")
			h.Set("x-ratelimit-remaining-requests", tc.requestsLeft)
			h.Set("x-ratelimit-reset-requests", "120ms")
			h.Set("x-ratelimit-limit-tokens", "200000")
			h.Set("x-ratelimit-remaining-tokens", "150000")
			h.Set("x-ratelimit-reset-tokens", "15s")
			h.Set("Content-Type", "application/json")
			body := `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":5}}`
			release <- &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(body))}
			r := bgtReceive(t, first)
			require.NoError(t, r.err)
			gpt := tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"}
			level := func() float64 { return bgtBudgetOf(rig.s.Snapshot(), gpt).Dimensions[tollgate.Tokens].Level }
			bgtEventually(func() bool { return math.Abs(level()-tc.want) <= 1e-6 })
			assert.InDelta(t, tc.want, level(), 1e-6, "at the headers")
			bgtSettle(r)
		})
	}
}

func TestBudgetLearnsBytesPerToken(t *testing.T) {
	// The true tokenizer makes 3 bytes a token; the default guess is 4.
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{InputTokensPerMinute: 1_000_000}))
	prompt := strings.Repeat("abc ", 750)
	promptBytes := reqscan.Read(bgtReq(context.Background(), "", prompt, 10)).PromptBytes
	require.Positive(t, promptBytes)
	actual := promptBytes / 3
	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, actual, 1), nil })

	var errs []float64
	for i := range 5 {
		resp, err := rig.rt.RoundTrip(bgtReq(context.Background(), strconv.Itoa(i), prompt, 10))
		require.NoError(t, err)
		// In flight, the attempt holds its estimate of the bucket.
		estimate := rig.snap().Dimensions[tollgate.InputTokens].Reserved
		bgtSettle(rtResult{resp: resp})
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
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{InputTokensPerMinute: 1_000_000}))
	prompt := strings.Repeat("abc ", 750)
	promptBytes := reqscan.Read(bgtReq(context.Background(), "", prompt, 10)).PromptBytes
	counts := []int64{int64(float64(promptBytes) / 2.8), int64(float64(promptBytes) / 3.2)}
	var n int
	rig.setReply(func(*http.Request) (*http.Response, error) {
		return bgtReply(200, nil, counts[n%2], 1), nil
	})
	for ; n < 40; n++ {
		resp, err := rig.rt.RoundTrip(bgtReq(context.Background(), strconv.Itoa(n), prompt, 10))
		require.NoError(t, err)
		estimate := rig.snap().Dimensions[tollgate.InputTokens].Reserved
		bgtSettle(rtResult{resp: resp})
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
		{"heavy caching", 40_000, 10, bgtMaxBytesPerToken},
		{"more tokens than bytes", 100, 1_000, bgtMinBytesPerToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000}))
			rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, tc.input, 1), nil })
			for i := range 3 {
				_, err := rig.do(bgtReq(context.Background(), strconv.Itoa(i), strings.Repeat("x", tc.prompt), 1))
				require.NoError(t, err)
			}
			assert.Equal(t, tc.want, rig.snap().BytesPerToken)
		})
	}
}

func TestBudgetMaxConcurrencyFIFO(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000}), tollgate.WithMaxConcurrency(2))
	var held []rtResult
	for _, seq := range []string{"a", "b"} {
		r := bgtReceive(t, rig.start(bgtReq(context.Background(), seq, "", 1)))
		require.NoError(t, r.err)
		held = append(held, r)
	}
	var queued []<-chan rtResult
	for i, seq := range []string{"c", "d", "e"} {
		queued = append(queued, rig.start(bgtReq(context.Background(), seq, "", 1)))
		rig.waitQueued(i + 1)
	}
	assert.Equal(t, 2, rig.snap().InFlight)
	for i := range queued {
		bgtSettle(held[0]) // one body ends: the next in line goes
		held = held[1:]
		r := bgtReceive(t, queued[i])
		require.NoError(t, r.err)
		held = append(held, r)
		assert.Equal(t, 2, rig.snap().InFlight)
	}
	for _, r := range held {
		bgtSettle(r)
	}
	assert.Equal(t, []string{"a", "b", "c", "d", "e"}, rig.sentOrder())
	assert.Zero(t, rig.snap().InFlight)
}

func TestBudgetUtilizationAlert(t *testing.T) {
	// Alerts run on a goroutine of tollgate's, one at a time and in order:
	// the test receives them from a channel, and the order proves that none
	// came in between.
	alerts := make(chan tollgate.UtilizationAlert, 16)
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 10}),
		tollgate.WithUtilizationAlert(0, func(a tollgate.UtilizationAlert) { alerts <- a }))
	for i := range 9 {
		_, err := rig.do(bgtReq(context.Background(), strconv.Itoa(i), "", 1))
		require.NoError(t, err)
	}
	assert.Equal(t, tollgate.UtilizationAlert{Key: bgtSonnet, Dimension: tollgate.Requests, Used: 8, Limit: 10,
		Utilization: 0.8, Above: true, At: bgtEpoch}, bgtReceive(t, alerts), "the first alert is at 80%, not before")
	assert.InDelta(t, 0.9, rig.snap().Dimensions[tollgate.Requests].Utilization, 1e-9)

	rig.clk.Advance(time.Minute)
	_, err := rig.do(bgtReq(context.Background(), "10", "", 1))
	require.NoError(t, err)
	assert.Equal(t, tollgate.UtilizationAlert{Key: bgtSonnet, Dimension: tollgate.Requests, Used: 0, Limit: 10,
		Utilization: 0, Above: false, At: bgtEpoch.Add(time.Minute)}, bgtReceive(t, alerts),
		"the next alert is the fall back below: 90% crossed nothing")
}

func TestBudgetAloneReadsResponses(t *testing.T) {
	// Chain(base, Budget) has no Observe of its own: the layer puts one
	// under itself, so it learns the limits from the headers and settles
	// each attempt to the usage its body reports.
	clk := fakeclock.New(bgtEpoch)
	s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 1_000}))
	rt := tollgate.Chain(bgtBase(func(*http.Request) (*http.Response, error) {
		return bgtReply(200, bgtLimits(50, 40, 30_000, 20_000, -1, -1), 1, 100), nil
	}), tollgate.Budget(s))
	resp, err := rt.RoundTrip(bgtReq(context.Background(), "1", "", 500))
	require.NoError(t, err)
	snap := bgtBudgetOf(s.Snapshot(), bgtSonnet)
	assert.Equal(t, 1, snap.InFlight)
	assert.Equal(t, 50, snap.Limits.RequestsPerMinute, "learned from the headers")
	assert.InDelta(t, 500, snap.Dimensions[tollgate.OutputTokens].Level, 1e-6, "max_tokens reserved")
	bgtSettle(rtResult{resp: resp})
	assert.Zero(t, bgtBudgetOf(s.Snapshot(), bgtSonnet).InFlight)
	bgtWaitFor(t, "settled to the 100 produced", func() bool {
		return math.Abs(bgtBudgetOf(s.Snapshot(), bgtSonnet).Dimensions[tollgate.OutputTokens].Level-900) < 1e-6
	})
}

func TestBudgetManyGoroutines(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 120, InputTokensPerMinute: 20_000, OutputTokensPerMinute: 6_000}),
		tollgate.WithMaxConcurrency(8), tollgate.WithUtilizationAlert(0.5, func(tollgate.UtilizationAlert) {}))
	var n atomic.Int64
	rig.setReply(func(req *http.Request) (*http.Response, error) {
		switch i := n.Add(1); {
		case i%13 == 0:
			return nil, errors.New("connection reset")
		case i%7 == 0:
			return bgtReply(429, bgtLimits(120, 3, 20_000, 1_000, 6_000, 0), 0, 0), nil
		default:
			return bgtReply(200, bgtLimits(120, 60, 20_000, 9_000, 6_000, 3_000), i%50, i%300), nil
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
				resp, err := rig.rt.RoundTrip(bgtReq(ctx, strconv.Itoa(w*each+i), strings.Repeat("y", rnd.IntN(2000)), 1+rnd.IntN(400)))
				switch {
				case err == nil:
					ok.Add(1)
					bgtSettle(rtResult{resp: resp})
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
	for _, d := range []tollgate.Dimension{tollgate.Requests, tollgate.InputTokens, tollgate.OutputTokens} {
		assert.LessOrEqual(t, snap.Dimensions[d].Level, float64(snap.Dimensions[d].Limit), d.String())
		assert.InDelta(t, 0, snap.Dimensions[d].Reserved, 1e-6, "nothing is held once all are settled: %s", d)
	}
}

// bgtAheadStore grants attempts ahead of time, 5 s from now, while ahead is
// set, as a shared store serving a queue does.
type bgtAheadStore struct {
	tollgate.Store
	ahead atomic.Bool
}

func (s *bgtAheadStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	res, err := s.Store.Admit(ctx, name, a)
	if res.Granted && s.ahead.Load() {
		res.Wait = 5 * time.Second
	}
	return res, err
}

func TestBudgetReservedReturnsToZero(t *testing.T) {
	// Reserved is what the attempts admitted and not yet settled hold of
	// each bucket: it follows every way an attempt ends, and is zero once
	// all have ended.
	clk := fakeclock.New(bgtEpoch)
	store := &bgtAheadStore{Store: tollgate.NewMemoryStore(clk)}
	rig := newBgtRigOn(t, clk, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}),
		tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour))
	rig.setReply(func(req *http.Request) (*http.Response, error) {
		switch req.Header.Get("X-Seq") {
		case "sent, then cancelled":
			<-req.Context().Done()
			return nil, req.Context().Err()
		case "429":
			return bgtReply(429, nil, 0, 0), nil
		}
		return bgtProducesMaxTokens(req)
	})
	reserved := func() [2]float64 {
		d := rig.snap().Dimensions
		return [2]float64{d[tollgate.Requests].Reserved, d[tollgate.OutputTokens].Reserved}
	}
	ctx := context.Background()

	held := bgtReceive(t, rig.start(bgtReq(ctx, "held", "", 100)))
	require.NoError(t, held.err)
	assert.Equal(t, [2]float64{1, 100}, reserved(), "admitted, body unread")

	store.ahead.Store(true)
	aheadCtx, cancelAhead := context.WithCancel(ctx)
	ahead := rig.start(bgtReq(aheadCtx, "granted ahead, then cancelled", "", 200))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "granted, waiting for its time")
	store.ahead.Store(false)
	assert.Equal(t, [2]float64{2, 300}, reserved(), "a grant ahead of time holds its cost while it waits")
	queuedCtx, cancelQueued := context.WithCancel(ctx)
	queued := rig.start(bgtReq(queuedCtx, "queued, then cancelled", "", 400))
	rig.waitQueued(2)
	assert.Equal(t, [2]float64{2, 300}, reserved(), "a queued attempt holds nothing")
	cancelQueued()
	assert.ErrorIs(t, bgtReceive(t, queued).err, context.Canceled)
	assert.Equal(t, [2]float64{2, 300}, reserved())
	cancelAhead()
	assert.ErrorIs(t, bgtReceive(t, ahead).err, context.Canceled)
	assert.Equal(t, [2]float64{1, 100}, reserved(), "a grant cancelled before its time gives its cost back")

	sentCtx, cancelSent := context.WithCancel(ctx)
	sent := rig.start(bgtReq(sentCtx, "sent, then cancelled", "", 800))
	rig.waitSent(2)
	assert.Equal(t, [2]float64{2, 900}, reserved())
	cancelSent()
	assert.ErrorIs(t, bgtReceive(t, sent).err, context.Canceled)
	assert.Equal(t, [2]float64{1, 100}, reserved(), "an attempt that failed is settled")

	r429 := bgtReceive(t, rig.start(bgtReq(ctx, "429", "", 1600)))
	require.NoError(t, r429.err)
	assert.Equal(t, [2]float64{1, 100}, reserved(), "a 429 holds nothing from its headers on, body unread")
	bgtSettle(r429)

	bgtSettle(held)
	snap := rig.snap()
	for d := range tollgate.Dimension(tollgate.NumDimensions) {
		assert.Zero(t, snap.Dimensions[d].Reserved, "%s: every attempt settled", d)
	}
	assert.Zero(t, snap.InFlight)
	assert.Zero(t, snap.Waiting)
	assert.Equal(t, []string{"held", "sent, then cancelled", "429"}, rig.sentOrder())
}

// bgtGateStore blocks the first Admit of name after armed is set, until
// release is closed.
type bgtGateStore struct {
	tollgate.Store
	name     string
	armed    atomic.Bool
	entered  chan struct{} // closed when the gated Admit has begun
	release  chan struct{} // closed by the test to let it go on
	returned chan struct{} // closed when the gated Admit returns
}

func (s *bgtGateStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	if name == s.name && s.armed.CompareAndSwap(true, false) {
		defer close(s.returned)
		close(s.entered)
		select {
		case <-s.release:
		case <-ctx.Done():
			return tollgate.Admitted{}, ctx.Err()
		}
	}
	return s.Store.Admit(ctx, name, a)
}

// bgtStream is the body of an Anthropic Messages stream of n text deltas.
func bgtStream(n int) string {
	var b strings.Builder
	b.WriteString("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n")
	b.WriteString("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n")
	for i := range n {
		fmt.Fprintf(&b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word%d \"}}\n\n", i)
	}
	b.WriteString("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n")
	fmt.Fprintf(&b, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":%d}}\n\n", n)
	b.WriteString("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	return b.String()
}

func TestBudgetStoreAdmitBlockedStallsNothingElse(t *testing.T) {
	// No Store call is made under a lock: while one attempt's Admit is
	// blocked in the store, Snapshot returns, another Key's call goes
	// through, and a call of the same Key admitted before reads its body to
	// the end. Each is shown to finish while the Admit provably has not
	// returned: it cannot before the test closes release.
	clk := fakeclock.New(bgtEpoch)
	gate := &bgtGateStore{Store: tollgate.NewMemoryStore(clk), name: bgtSonnet.StoreName(),
		entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan struct{})}
	stream := bgtStream(200)
	tr := tollgate.New(bgtBase(func(req *http.Request) (*http.Response, error) {
		h := bgtLimits(1_000, 999, 1_000_000, 999_000, 1_000_000, 999_000)
		h.Set("Content-Type", "text/event-stream")
		return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(stream))}, nil
	}), tollgate.WithClock(clk), tollgate.WithStore(gate), tollgate.WithStoreTimeout(time.Hour),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000}))
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(gate.release) }) }
	t.Cleanup(release) // a failing test does not leave the Admit blocked
	ctx := context.Background()
	haiku := tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-haiku-4"}

	admitted, err := tr.RoundTrip(bgtReq(ctx, "admitted", "", 300))
	require.NoError(t, err)

	gate.armed.Store(true)
	blocked := make(chan rtResult, 1)
	go func() {
		resp, err := tr.RoundTrip(bgtReq(ctx, "blocked", "", 300))
		blocked <- rtResult{resp, err}
	}()
	bgtReceive(t, gate.entered)

	snaps := make(chan tollgate.Snapshot, 1)
	go func() { snaps <- tr.Snapshot() }()
	snap := bgtBudgetOf(bgtReceive(t, snaps), bgtSonnet)
	assert.Equal(t, 1, snap.InFlight, "Snapshot returned")
	assert.Equal(t, 1, snap.Waiting, "the blocked attempt is queued")

	other := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(bgtModelReq(ctx, "other", "claude-haiku-4-5", "", 300))
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err == nil && string(body) != stream {
				err = errors.New("the other Key's body came back changed")
			}
		}
		other <- err
	}()
	require.NoError(t, bgtReceive(t, other), "another Key's call completed")

	read := make(chan error, 1)
	go func() {
		body, err := io.ReadAll(admitted.Body)
		_ = admitted.Body.Close()
		if err == nil && string(body) != stream {
			err = errors.New("the admitted call's body came back changed")
		}
		read <- err
	}()
	require.NoError(t, bgtReceive(t, read), "the admitted call read its body to the end")

	select {
	case <-gate.returned:
		t.Fatal("the gated Admit returned before it was released")
	default:
	}
	s := tr.Snapshot()
	snap = bgtBudgetOf(s, bgtSonnet)
	assert.Zero(t, snap.InFlight, "the admitted call is settled")
	assert.Equal(t, 1, snap.Waiting)
	assert.Equal(t, int64(200), snap.Dimensions[tollgate.OutputTokens].Used, "settled to its usage")
	assert.Equal(t, int64(200), bgtBudgetOf(s, haiku).Dimensions[tollgate.OutputTokens].Used)

	release()
	r := bgtReceive(t, blocked)
	require.NoError(t, r.err)
	bgtSettle(r)
	snap = bgtBudgetOf(tr.Snapshot(), bgtSonnet)
	assert.Zero(t, snap.Waiting)
	assert.Zero(t, snap.InFlight)
	assert.Zero(t, snap.Dimensions[tollgate.OutputTokens].Reserved)
}

func BenchmarkBudgetAdmit(b *testing.B) {
	// Admission and settlement through Chain(base, Budget), which never
	// waits: the cost of the layer (and the Observe under it) per attempt.
	const huge = 1 << 40
	s := tollgate.NewState(tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: huge, InputTokensPerMinute: huge, OutputTokensPerMinute: huge}))
	rt := tollgate.Chain(bgtBase(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil
	}), tollgate.Budget(s))
	body := `{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`
	attempt := func(b *testing.B) {
		req, _ := http.NewRequest(http.MethodPost, "https://api.anthropic.com/v1/messages", strings.NewReader(body))
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Error(err)
			return
		}
		_ = resp.Body.Close()
	}
	b.Run("layer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			attempt(b)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				attempt(b)
			}
		})
	})
}
