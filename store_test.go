package tollgate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

var (
	stoEpoch  = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	stoSonnet = tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}
)

// stoRig is one Transport (Trace, Breaker, Budget; Observe under them) of a
// fleet that may share a store, on a fake clock, with a base answering
// through reply and counting requests, and a usage recorder.
type stoRig struct {
	t       *testing.T
	clk     *fakeclock.Clock
	s       *tollgate.State
	rt      http.RoundTripper
	mu      sync.Mutex
	reply   func(*http.Request) (*http.Response, error)
	sent    int
	records []tollgate.UsageRecord
}

func stoNewRig(t *testing.T, clk *fakeclock.Clock, opts ...tollgate.Option) *stoRig {
	rig := &stoRig{t: t, clk: clk}
	rig.reply = func(*http.Request) (*http.Response, error) { return stoReply(200, nil, 10, 10), nil }
	record := tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
		rig.mu.Lock()
		rig.records = append(rig.records, rec)
		rig.mu.Unlock()
	})
	rig.s = tollgate.NewState(append([]tollgate.Option{tollgate.WithClock(clk), record,
		// Each attempt holds its max_tokens of output: the figures below are
		// whole numbers of them. (Tests of the other rule say so.)
		tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens)}, opts...)...)
	base := stoBase(func(req *http.Request) (*http.Response, error) {
		rig.mu.Lock()
		rig.sent++
		reply := rig.reply
		rig.mu.Unlock()
		return reply(req)
	})
	rig.rt = tollgate.Chain(base, tollgate.Trace(rig.s), tollgate.Breaker(rig.s), tollgate.Budget(rig.s))
	return rig
}

// stoBase is a base transport answering with a function.
type stoBase func(*http.Request) (*http.Response, error)

func (f stoBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return f(req)
}

func (rig *stoRig) setReply(f func(*http.Request) (*http.Response, error)) {
	rig.mu.Lock()
	rig.reply = f
	rig.mu.Unlock()
}

func (rig *stoRig) sentCount() int {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return rig.sent
}

func (rig *stoRig) lastRecord() tollgate.UsageRecord {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	require.NotEmpty(rig.t, rig.records)
	return rig.records[len(rig.records)-1]
}

// start sends req on its own goroutine; the response body is left unread.
func (rig *stoRig) start(req *http.Request) <-chan rtResult {
	return startRoundTrip(rig.rt, req)
}

// do sends req and reads its response to the end.
func (rig *stoRig) do(req *http.Request) rtResult {
	r := stoReceive(rig.t, rig.start(req))
	stoFinish(r)
	return r
}

// doN sends n calls one after another, each read to the end, and requires
// that none waited on the clock.
func (rig *stoRig) doN(n int, prefix string) {
	rig.t.Helper()
	for i := range n {
		r := rig.do(stoReq(context.Background(), prefix+strconv.Itoa(i), 1))
		require.NoError(rig.t, r.err)
		require.Empty(rig.t, rig.clk.Pending(), "call %s%d waited", prefix, i)
	}
}

func (rig *stoRig) key() tollgate.KeySnapshot {
	rig.t.Helper()
	ks, ok := rig.s.Snapshot().Key(stoSonnet)
	require.True(rig.t, ok)
	return ks
}

func (rig *stoRig) budget() tollgate.BudgetSnapshot { return rig.key().Budget }

func stoReceive(t *testing.T, ch <-chan rtResult) rtResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("attempt did not return")
		return rtResult{}
	}
}

func stoFinish(r rtResult) {
	if r.resp != nil {
		_, _ = io.Copy(io.Discard, r.resp.Body)
		_ = r.resp.Body.Close()
	}
}

// stoWaitFor polls cond; it guards against a broken test hanging, it does
// not time anything.
func stoWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, 100*time.Microsecond, what)
}

// stoReq is an Anthropic Messages request for Sonnet with the given
// max_tokens, tagged with seq.
func stoReq(ctx context.Context, seq string, maxTokens int) *http.Request {
	body := `{"model":"claude-sonnet-4-5","max_tokens":` + strconv.Itoa(maxTokens) + `,"messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.anthropic.com/v1/messages", strings.NewReader(body))
	req.Header.Set("Anthropic-Version", "2023-06-01")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Seq", seq)
	return req
}

// stoReply is a JSON Messages response with the given usage.
func stoReply(status int, h http.Header, in, out int64) *http.Response {
	if h == nil {
		h = http.Header{}
	}
	h.Set("Content-Type", "application/json")
	body := fmt.Sprintf(`{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":%d,"output_tokens":%d}}`, in, out)
	if status >= 400 {
		body = `{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}`
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)), ContentLength: -1}
}

func TestStoreSharedByTwoTransports(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := tollgate.NewMemoryStore(clk)
	a := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 2}))
	b := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 2}))

	a.doN(2, "a")
	done := b.start(stoReq(context.Background(), "b", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{30 * time.Second}, clk.Pending(), "b waits for the refill of what a spent")
	assert.Zero(t, b.sentCount())
	clk.Advance(30 * time.Second)
	r := stoReceive(t, done)
	require.NoError(t, r.err)
	stoFinish(r)
	assert.Equal(t, 1, b.sentCount())
	assert.Equal(t, 30*time.Second, b.lastRecord().Waits.Budget)
}

func TestStoreNamesAccountsApart(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	rig := stoNewRig(t, clk, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1}))
	withKey := func(seq, key string) *http.Request {
		req := stoReq(context.Background(), seq, 1)
		req.Header.Set("X-Api-Key", key)
		return req
	}
	require.NoError(t, rig.do(withKey("1", "sk-one")).err)
	require.NoError(t, rig.do(withKey("2", "sk-two")).err, "another API key has a budget of its own")
	assert.Empty(t, clk.Pending())

	snap := rig.s.Snapshot()
	require.Len(t, snap.Keys, 2)
	one, two := snap.Keys[0].Key, snap.Keys[1].Key
	assert.Equal(t, one.Family, two.Family)
	assert.NotEqual(t, one.Account, two.Account)
	assert.Len(t, one.Account, 16)
	assert.NotContains(t, one.StoreName()+two.StoreName(), "sk-", "the credential itself is never in a name")

	done := rig.start(withKey("3", "sk-one"))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "the same key again waits for its own refill")
	assert.Equal(t, []time.Duration{time.Minute}, clk.Pending())
	clk.Advance(time.Minute)
	stoFinish(stoReceive(t, done))
}

func TestStorePauseIsSeenByEveryTransport(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := tollgate.NewMemoryStore(clk)
	limits := tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000})
	a := stoNewRig(t, clk, tollgate.WithStore(store), limits)
	b := stoNewRig(t, clk, tollgate.WithStore(store), limits)
	a.setReply(func(*http.Request) (*http.Response, error) {
		return stoReply(429, http.Header{"Retry-After": {"10"}}, 0, 0), nil
	})

	r := a.do(stoReq(context.Background(), "a", 1))
	require.NoError(t, r.err)
	require.Equal(t, http.StatusTooManyRequests, r.resp.StatusCode)

	done := b.start(stoReq(context.Background(), "b", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{10 * time.Second}, clk.Pending(), "b waits out the pause a took")
	brk := b.key().Breaker
	assert.Equal(t, tollgate.BreakerOpen, brk.State, "b's breaker shows the pause, so b's next calls wait there")
	assert.Equal(t, "shared: retry-after", brk.Reason)
	assert.Equal(t, clk.Now().Add(10*time.Second), brk.OpenUntil)
	assert.Zero(t, b.sentCount())

	// A caller that cannot wait that long learns so at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := stoNewRig(t, clk, tollgate.WithStore(store), limits)
	hopeless := stoReceive(t, c.start(stoReq(ctx, "c", 1)))
	var open *tollgate.OpenError
	require.ErrorAs(t, hopeless.err, &open)
	assert.Equal(t, "shared: retry-after", open.Reason)
	assert.Equal(t, clk.Now().Add(10*time.Second), open.Until)
	assert.Zero(t, c.sentCount())

	clk.Advance(10 * time.Second)
	r = stoReceive(t, done)
	require.NoError(t, r.err)
	stoFinish(r)
	assert.Equal(t, 1, b.sentCount())
}

// stoFlaky is a Store that fails, or hangs until its context ends, on
// demand.
type stoFlaky struct {
	tollgate.Store
	mu    sync.Mutex
	mode  string // "", "fail" or "hang"
	calls int
}

func (f *stoFlaky) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *stoFlaky) set(mode string) {
	f.mu.Lock()
	f.mode = mode
	f.mu.Unlock()
}

func (f *stoFlaky) check(ctx context.Context) error {
	f.mu.Lock()
	mode := f.mode
	f.calls++
	f.mu.Unlock()
	switch mode {
	case "fail":
		return errors.New("dial tcp 127.0.0.1:6379: connection refused")
	case "hang":
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (f *stoFlaky) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	if err := f.check(ctx); err != nil {
		return tollgate.Admitted{}, err
	}
	return f.Store.Admit(ctx, name, a)
}

func (f *stoFlaky) Settle(ctx context.Context, name string, s tollgate.Settlement) (tollgate.Levels, error) {
	if err := f.check(ctx); err != nil {
		return tollgate.Levels{}, err
	}
	return f.Store.Settle(ctx, name, s)
}

func (f *stoFlaky) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	if err := f.check(ctx); err != nil {
		return err
	}
	return f.Store.Pause(ctx, name, d, reason)
}

// stoFallbackGauge reads tollgate.store.fallback; -1 when never recorded.
func stoFallbackGauge(t *testing.T, reader *sdkmetric.ManualReader) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == "tollgate.store.fallback" && len(g.DataPoints) == 1 {
				return g.DataPoints[0].Value
			}
		}
	}
	return -1
}

func TestStoreFallbackAndRecovery(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoFlaky{Store: tollgate.NewMemoryStore(clk)}
	var logs bytes.Buffer
	reader := sdkmetric.NewManualReader()
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 40}),
		tollgate.WithStoreFallback(0.25, 5*time.Second), tollgate.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		tollgate.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	assert.Equal(t, int64(0), stoFallbackGauge(t, reader))

	// The store fails: every call still goes, paced at a quarter of the
	// limit, 10 a minute, the first ten at once: the fallback starts from
	// a quarter of what was known, the full bucket WithLimits gave.
	store.set("fail")
	rig.doN(10, "")
	assert.True(t, rig.budget().Fallback)
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("level=WARN")), "said once: %s", logs.String())
	assert.Contains(t, logs.String(), "connection refused")
	assert.Equal(t, int64(1), stoFallbackGauge(t, reader))

	done := rig.start(stoReq(context.Background(), "11th", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{6 * time.Second}, clk.Pending(), "the fallback's 10 a minute")

	// The store is back: the next admission after the retry interval
	// uses it again.
	store.set("")
	clk.Advance(6 * time.Second)
	r := stoReceive(t, done)
	require.NoError(t, r.err)
	stoFinish(r)
	assert.False(t, rig.budget().Fallback)
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("level=WARN")))
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("answers again")), logs.String())
	assert.Equal(t, int64(0), stoFallbackGauge(t, reader))

	// The shared store never had this bucket: it starts it from what this
	// Transport knows (the fallback's empty quarter read as an empty whole,
	// plus 6 s of refill at 40 a minute: 4, of which the 11th took one),
	// not full. It paces at the full limit: 1.5 s a request, not 6 s.
	rig.doN(3, "shared")
	done = rig.start(stoReq(context.Background(), "shared-next", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{1500 * time.Millisecond}, clk.Pending(), "the shared store's 40 a minute")
	clk.Advance(1500 * time.Millisecond)
	stoFinish(stoReceive(t, done))
	assert.Equal(t, 15, rig.sentCount())
}

// TestStoreFallbackIsFreshAtEachOutage pins where the local fallback starts:
// from the levels last known × its share, at each outage anew, never from
// full buckets nor from what an earlier outage left.
func TestStoreFallbackIsFreshAtEachOutage(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoFlaky{Store: tollgate.NewMemoryStore(clk)}
	var logs bytes.Buffer
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 40}),
		tollgate.WithStoreFallback(0.5, 6*time.Second), tollgate.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))

	rig.doN(20, "shared") // the store's bucket: 20 of 40 left

	// Outage 1: the fallback paces at 20 a minute from half of the 20 left.
	store.set("fail")
	rig.doN(10, "first outage")
	done := rig.start(stoReq(context.Background(), "first outage 11th", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{3 * time.Second}, clk.Pending(), "10 at once from half of 20, then 20 a minute")
	clk.Advance(3 * time.Second)
	stoFinish(stoReceive(t, done))
	assert.True(t, rig.budget().Fallback)

	// Recovery after the retry interval: the store refilled 4 in 6 s, 24
	// left; this call takes one.
	store.set("")
	clk.Advance(3 * time.Second)
	rig.doN(1, "back")
	assert.False(t, rig.budget().Fallback)
	assert.Equal(t, 23.0, rig.budget().Dimensions[tollgate.Requests].Level)

	// Outage 2, at once: a new fallback from half of the 23 known now. The
	// first outage's fallback would have had 1 left.
	store.set("fail")
	rig.doN(11, "second outage")
	done = rig.start(stoReq(context.Background(), "second outage 12th", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{1500 * time.Millisecond}, clk.Pending(), "11.5 to start from: half a request short")
	clk.Advance(1500 * time.Millisecond)
	stoFinish(stoReceive(t, done))
	assert.True(t, rig.budget().Fallback)
	assert.Equal(t, 2, bytes.Count(logs.Bytes(), []byte("level=WARN")), "each outage said once: %s", logs.String())
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("answers again")), logs.String())
	assert.Equal(t, 20+11+1+12, rig.sentCount())
}

// stoRestartable is a Store whose contents can be lost at once, as a Redis
// restarted empty, and that records what Settle answered.
type stoRestartable struct {
	clk     *fakeclock.Clock
	mu      sync.Mutex
	store   tollgate.Store
	settled []tollgate.Levels
}

func (s *stoRestartable) current() tollgate.Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

func (s *stoRestartable) restart() {
	s.mu.Lock()
	s.store = tollgate.NewMemoryStore(s.clk)
	s.mu.Unlock()
}

func (s *stoRestartable) settledLevels() []tollgate.Levels {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]tollgate.Levels(nil), s.settled...)
}

func (s *stoRestartable) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	return s.current().Admit(ctx, name, a)
}

func (s *stoRestartable) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	lv, err := s.current().Settle(ctx, name, st)
	s.mu.Lock()
	s.settled = append(s.settled, lv)
	s.mu.Unlock()
	return lv, err
}

func (s *stoRestartable) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	return s.current().Pause(ctx, name, d, reason)
}

func TestStoreThatLostItsBucketsStartsThemFromWhatIsKnown(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoRestartable{clk: clk}
	store.restart()
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 40}))

	rig.doN(30, "")
	require.Empty(t, store.settledLevels(), "nothing to settle: each request costs what it was charged")
	// The 31st is in flight when the store loses everything; its 429 gives
	// its request back, with a Settle of its own.
	rig.setReply(func(*http.Request) (*http.Response, error) {
		store.restart()
		return stoReply(429, nil, 0, 0), nil
	})
	r := rig.do(stoReq(context.Background(), "31st", 1))
	require.NoError(t, r.err)
	require.Equal(t, http.StatusTooManyRequests, r.resp.StatusCode)
	stoWaitFor(t, "the 429 settled", func() bool { return len(store.settledLevels()) >= 1 })
	lv := store.settledLevels()[0]
	for d := range tollgate.NumDimensions {
		assert.True(t, math.IsNaN(lv.Level[d]), "Settle creates no bucket: %v is NaN", tollgate.Dimension(d))
	}
	assert.Equal(t, 10.0, rig.budget().Dimensions[tollgate.Requests].Level,
		"the 429 gave its request back, shown at once; a NaN level changes nothing known")

	// The next Admit starts the bucket from what this Transport knew, 10
	// requests left, not from a full one.
	rig.setReply(func(*http.Request) (*http.Response, error) { return stoReply(200, nil, 10, 10), nil })
	rig.doN(10, "after")
	done := rig.start(stoReq(context.Background(), "11th after", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{1500 * time.Millisecond}, clk.Pending(), "the restarted store's bucket is empty")
	clk.Advance(1500 * time.Millisecond)
	stoFinish(stoReceive(t, done))
	assert.Equal(t, 42, rig.sentCount())
}

// stoHeldSettle is a Store whose every Settle, once done in the store,
// reports the levels it will answer on answered and waits for a token on
// release before answering: an answer slow to come back.
type stoHeldSettle struct {
	tollgate.Store
	answered chan tollgate.Levels
	release  chan struct{}
}

func (s *stoHeldSettle) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	lv, err := s.Store.Settle(ctx, name, st)
	s.answered <- lv
	<-s.release
	return lv, err
}

func TestStoreLateAnswerDoesNotSetLevelsBack(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoHeldSettle{Store: tollgate.NewMemoryStore(clk), answered: make(chan tollgate.Levels), release: make(chan struct{})}
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 40}),
		tollgate.WithStoreTimeout(time.Minute))
	rig.setReply(func(req *http.Request) (*http.Response, error) {
		if strings.HasPrefix(req.Header.Get("X-Seq"), "429") {
			return stoReply(429, nil, 0, 0), nil
		}
		return stoReply(200, nil, 10, 10), nil
	})
	answer := func() tollgate.Levels {
		t.Helper()
		select {
		case lv := <-store.answered:
			return lv
		case <-time.After(5 * time.Second):
			t.Fatal("no Settle")
			return tollgate.Levels{}
		}
	}

	// A 429 gives its request back: the store's level is 40 again, but the
	// answer saying so is slow to come back.
	rig.do(stoReq(context.Background(), "429 first", 1))
	lv := answer()
	assert.Equal(t, 40.0, lv.Level[tollgate.Requests])
	assert.Equal(t, stoEpoch, lv.At)

	// Meanwhile, a second later, five admissions take 5: 35 left.
	clk.Advance(time.Second)
	rig.doN(4, "ok")
	rig.do(stoReq(context.Background(), "429 second", 1)) // its give-back waits for the first answer
	assert.Equal(t, 36.0, rig.budget().Dimensions[tollgate.Requests].Level, "the give-back is shown at once")

	store.release <- struct{}{} // the first answer arrives, late
	lv = answer()               // the second 429's give-back is settled
	assert.Equal(t, 36.0, lv.Level[tollgate.Requests])
	assert.Equal(t, 36.0, rig.budget().Dimensions[tollgate.Requests].Level,
		"the late answer, older by the store's clock than the admissions', does not set the level back to 40")
	store.release <- struct{}{}
	stoWaitFor(t, "the give-back mirrored", func() bool { return rig.budget().Dimensions[tollgate.Requests].Level == 36 })
}

func TestStoreThatHangsIsCutOffByTheTimeout(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoFlaky{Store: tollgate.NewMemoryStore(clk)}
	store.set("hang")
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 40}),
		tollgate.WithStoreTimeout(20*time.Millisecond), tollgate.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))

	start := time.Now()
	r := rig.do(stoReq(context.Background(), "1", 1))
	require.NoError(t, r.err)
	assert.Less(t, time.Since(start), time.Second, "bounded by the store timeout, not the store")
	assert.True(t, rig.budget().Fallback)
	// While down, the store is left alone: no call waits for it again
	// until the retry interval (of the fake clock, which stands still) has
	// passed.
	calls := store.callCount()
	for i := range 5 {
		require.NoError(t, rig.do(stoReq(context.Background(), strconv.Itoa(i), 1)).err)
	}
	assert.Equal(t, calls, store.callCount(), "the hanging store is not asked again meanwhile")
	assert.Equal(t, 6, rig.sentCount())
}

// stoBlockedSettle is a Store whose Settle blocks, ignoring its context,
// until release is closed. With oneConn, it serves one call at a time, as a
// store on a single connection would: an Admit waits for the blocked
// Settle, or for its context.
type stoBlockedSettle struct {
	tollgate.Store
	oneConn  bool
	conn     chan struct{} // capacity 1: held by the call in progress
	entered  chan struct{} // closed when the first Settle blocks
	release  chan struct{}
	returned chan struct{} // closed when the first Settle returns
	once     sync.Once
	first    bool
	mu       sync.Mutex
}

func stoNewBlockedSettle(t *testing.T, clk *fakeclock.Clock, oneConn bool) *stoBlockedSettle {
	s := &stoBlockedSettle{Store: tollgate.NewMemoryStore(clk), oneConn: oneConn, conn: make(chan struct{}, 1),
		entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan struct{})}
	t.Cleanup(func() {
		s.once.Do(func() { close(s.release) })
		select {
		case <-s.returned:
		case <-s.entered:
			<-s.returned
		default: // never called
		}
	})
	return s
}

func (s *stoBlockedSettle) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	if s.oneConn {
		select {
		case s.conn <- struct{}{}:
			defer func() { <-s.conn }()
		case <-ctx.Done():
			return tollgate.Admitted{}, ctx.Err()
		}
	}
	return s.Store.Admit(ctx, name, a)
}

func (s *stoBlockedSettle) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	if s.oneConn {
		s.conn <- struct{}{}
		defer func() { <-s.conn }()
	}
	s.mu.Lock()
	first := !s.first
	s.first = true
	s.mu.Unlock()
	if first {
		close(s.entered)
		<-s.release
		defer close(s.returned)
	}
	return s.Store.Settle(context.WithoutCancel(ctx), name, st)
}

// TestStoreSettleThatBlocksStallsNothing pins the store-sync half of "a slow
// store stalls no one": a Settle that blocks (2 s, or for ever) stalls
// neither the body read of the call it settles, nor Snapshot, nor the next
// call's admission on the same Key beyond one store timeout.
func TestStoreSettleThatBlocksStallsNothing(t *testing.T) {
	for _, tt := range []struct {
		name    string
		oneConn bool
	}{
		{"the store's Admit is free", false},
		{"the store's Admit waits for the Settle", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const storeTimeout = 50 * time.Millisecond
			clk := fakeclock.New(stoEpoch)
			store := stoNewBlockedSettle(t, clk, tt.oneConn)
			rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithStoreTimeout(storeTimeout),
				tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}),
				tollgate.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))

			// The first call reserves 100 output tokens and uses 10: its body's
			// end settles 90 back, with a Settle of its own (nothing else is
			// coming to carry it).
			r := stoReceive(t, rig.start(stoReq(context.Background(), "1", 100)))
			require.NoError(t, r.err)
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				stoFinish(r)
			}()
			select {
			case <-store.entered:
			case <-time.After(5 * time.Second):
				t.Fatal("the settlement never reached the store")
			}
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("the body read and Close wait for the blocked Settle")
			}
			assert.Equal(t, 1, rig.lastRecord().Attempts, "the call ended, its usage recorded")
			assert.Zero(t, rig.budget().InFlight, "a Snapshot while the Settle blocks")

			start := time.Now()
			r = stoReceive(t, rig.start(stoReq(context.Background(), "2", 100)))
			elapsed := time.Since(start)
			require.NoError(t, r.err, "admitted while the Settle still blocks")
			stoFinish(r)
			select {
			case <-store.returned:
				t.Fatal("the Settle was released early")
			default:
			}
			assert.Equal(t, 2, rig.sentCount())
			if tt.oneConn {
				assert.GreaterOrEqual(t, elapsed, storeTimeout, "the store's Admit was waited for, up to the timeout")
				assert.Less(t, elapsed, time.Second, "one store timeout, then the fallback")
				assert.True(t, rig.budget().Fallback, "admitted by the local fallback")
			} else {
				assert.False(t, rig.budget().Fallback, "admitted by the store itself, no store timeout waited out")
			}
		})
	}
}

// stoAhead grants every attempt ahead of time, 5 s from now, as a shared
// store serving a queue does, and records the charges settled, whether
// they rode with an admission or came by Settle.
type stoAhead struct {
	tollgate.Store
	mu      sync.Mutex
	admits  int
	settles int
	carried []int // settlements carried by each admission
	charges [][tollgate.NumDimensions]float64
}

func (s *stoAhead) counts() (admits, settles, charges int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admits, s.settles, len(s.charges)
}

func (s *stoAhead) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	s.mu.Lock()
	s.admits++
	s.carried = append(s.carried, len(a.Settle))
	for _, st := range a.Settle {
		s.charges = append(s.charges, st.Charge)
	}
	s.mu.Unlock()
	res, err := s.Store.Admit(ctx, name, a)
	if res.Granted {
		res.Wait = 5 * time.Second
	}
	return res, err
}

func (s *stoAhead) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	s.mu.Lock()
	s.settles++
	s.charges = append(s.charges, st.Charge)
	s.mu.Unlock()
	return s.Store.Settle(ctx, name, st)
}

// stoNothingReserved requires that no unsettled attempt holds anything.
func stoNothingReserved(t *testing.T, b tollgate.BudgetSnapshot) {
	t.Helper()
	for d, db := range b.Dimensions {
		assert.Zero(t, db.Reserved, "%v reserved", tollgate.Dimension(d))
	}
}

func TestStoreGrantAheadWaitsAndRefundsOnCancel(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoAhead{Store: tollgate.NewMemoryStore(clk)}
	rig := stoNewRig(t, clk, tollgate.WithStore(store),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}),
		tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens)) // each attempt holds its max_tokens

	done := rig.start(stoReq(context.Background(), "1", 100))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{5 * time.Second}, clk.Pending())
	assert.Zero(t, rig.sentCount(), "not sent before its time")
	assert.Equal(t, 1, rig.budget().Waiting, "granted ahead, waiting for its time")
	assert.Equal(t, 100.0, rig.budget().Dimensions[tollgate.OutputTokens].Reserved)
	clk.Advance(5 * time.Second)
	r := stoReceive(t, done)
	require.NoError(t, r.err)
	stoFinish(r)
	assert.Equal(t, 5*time.Second, rig.lastRecord().Waits.Budget)
	stoWaitFor(t, "the first settled", func() bool { _, _, n := store.counts(); return n == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	done = rig.start(stoReq(ctx, "2", 100))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	cancel()
	r = stoReceive(t, done)
	require.ErrorIs(t, r.err, context.Canceled)
	assert.Equal(t, 1, rig.sentCount())
	stoNothingReserved(t, rig.budget())
	assert.Empty(t, clk.Pending(), "the grant's timer is stopped")
	stoWaitFor(t, "the refund sent", func() bool { _, _, n := store.counts(); return n == 2 })
	store.mu.Lock()
	last := store.charges[len(store.charges)-1]
	store.mu.Unlock()
	assert.Equal(t, -1.0, last[tollgate.Requests], "the cancelled attempt's request is given back")
	assert.Equal(t, -100.0, last[tollgate.OutputTokens], "and its output reservation")
}

func TestStoreGrantAheadHoldsTheHead(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoAhead{Store: tollgate.NewMemoryStore(clk)}
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100}))
	admits := func() int { n, _, _ := store.counts(); return n }

	first := rig.start(stoReq(context.Background(), "1", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	second := rig.start(stoReq(context.Background(), "2", 1))
	stoWaitFor(t, "the second queued", func() bool { return rig.budget().Waiting == 2 })
	assert.Equal(t, 1, admits(), "one grant ahead at a time: the second waits its turn here")

	clk.Advance(5 * time.Second)
	stoFinish(stoReceive(t, first))
	stoWaitFor(t, "the second granted", func() bool { return admits() == 2 })
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, 1, rig.sentCount())
	clk.Advance(5 * time.Second)
	stoFinish(stoReceive(t, second))
	assert.Equal(t, 2, rig.sentCount())
	assert.Zero(t, rig.budget().Waiting)
}

func TestStoreSettlementRidesWithTheNextAdmission(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := &stoAhead{Store: tollgate.NewMemoryStore(clk)}
	rig := stoNewRig(t, clk, tollgate.WithStore(store),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}))
	admits := func() int { n, _, _ := store.counts(); return n }

	r0 := rig.start(stoReq(context.Background(), "0", 100))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	r1 := rig.start(stoReq(context.Background(), "1", 100))
	stoWaitFor(t, "1 queued", func() bool { return rig.budget().Waiting == 2 })
	r2 := rig.start(stoReq(context.Background(), "2", 100))
	stoWaitFor(t, "2 queued", func() bool { return rig.budget().Waiting == 3 })

	clk.Advance(5 * time.Second) // 0 goes, 1 is granted ahead and holds the head
	first := stoReceive(t, r0)
	stoWaitFor(t, "1 granted", func() bool { return admits() == 2 })
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "1 waits out its grant")
	stoFinish(first) // 0's usage: 10 output tokens of the 100 reserved
	store.mu.Lock()
	assert.Empty(t, store.charges, "no call of its own: 2's admission is coming")
	store.mu.Unlock()

	clk.Advance(5 * time.Second) // 1 goes, 2 asks, carrying 0's settlement
	second := stoReceive(t, r1)
	stoWaitFor(t, "2 granted", func() bool { return admits() == 3 })
	store.mu.Lock()
	assert.Equal(t, []int{0, 0, 1}, store.carried)
	require.Len(t, store.charges, 1)
	assert.Equal(t, -90.0, store.charges[0][tollgate.OutputTokens], "0's unused output given back")
	assert.Zero(t, store.settles)
	store.mu.Unlock()

	// Nothing is left behind once no admission is coming: 1's and 2's
	// settlements go by Settle.
	stoFinish(second)
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "2 waits out its grant")
	clk.Advance(5 * time.Second)
	stoFinish(stoReceive(t, r2))
	stoWaitFor(t, "all settled", func() bool { _, settles, _ := store.counts(); return settles == 2 })
	store.mu.Lock()
	assert.Len(t, store.charges, 3)
	for _, c := range store.charges {
		assert.Equal(t, -90.0, c[tollgate.OutputTokens])
	}
	store.mu.Unlock()
	assert.Zero(t, rig.budget().InFlight)
	stoNothingReserved(t, rig.budget())
}

func TestMemoryStoreContract(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	ctx := context.Background()
	limits := [tollgate.NumDimensions]int64{tollgate.Requests: 60, tollgate.OutputTokens: 600}
	cost := func(requests, output float64) [tollgate.NumDimensions]float64 {
		return [tollgate.NumDimensions]float64{tollgate.Requests: requests, tollgate.OutputTokens: output}
	}

	res, err := st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: cost(1, 1000), MaxWait: time.Hour})
	require.NoError(t, err)
	require.True(t, res.Granted, "a cost above the limit takes a full bucket")
	assert.Zero(t, res.Wait)
	assert.Equal(t, 0.0, res.Levels.Level[tollgate.OutputTokens])
	assert.Equal(t, stoEpoch, res.Levels.At, "on the store's clock")
	assert.True(t, math.IsNaN(res.Levels.Level[tollgate.Tokens]), "no bucket where no limit: NaN")
	assert.True(t, math.IsNaN(res.Levels.Level[tollgate.InputTokens]))

	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: cost(1, 60), MaxWait: time.Hour})
	require.NoError(t, err)
	assert.False(t, res.Granted, "the memory store never grants ahead of time")
	assert.Equal(t, 6*time.Second, res.Wait)
	assert.Equal(t, 59.0, res.Levels.Level[tollgate.Requests], "all or nothing: the request was not taken either")

	lv, err := st.Settle(ctx, "n", tollgate.Settlement{Limits: limits, Charge: cost(0, -5000)})
	require.NoError(t, err)
	assert.Equal(t, 600.0, lv.Level[tollgate.OutputTokens], "giving back stops at the limit")

	clk.Advance(30 * time.Second)
	lv, err = st.Settle(ctx, "n", tollgate.Settlement{Limits: limits, SentAt: stoEpoch,
		Floor: cost(10, 0), HasFloor: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	assert.Equal(t, 40.0, lv.Level[tollgate.Requests], "pulled down to the floor plus the refill since it was sent")

	require.NoError(t, st.Pause(ctx, "n", 10*time.Second, "retry-after"))
	require.NoError(t, st.Pause(ctx, "n", time.Second, "shorter"))
	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: cost(1, 0)})
	require.NoError(t, err)
	assert.False(t, res.Granted)
	assert.Equal(t, 10*time.Second, res.Paused)
	assert.Equal(t, "retry-after", res.PauseReason)
	res, err = st.Admit(ctx, "other", tollgate.Admission{Limits: limits, Cost: cost(1, 0)})
	require.NoError(t, err)
	assert.True(t, res.Granted, "names are independent")
}

// An admission with a Need is granted once the bucket holds the need, not
// the cost, and is charged its whole cost, into debt: as a server that
// counts output as it is produced admits while one token is left.
func TestMemoryStoreAdmitsAtTheNeedAndChargesTheCost(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	ctx := context.Background()
	limits := [tollgate.NumDimensions]int64{tollgate.OutputTokens: 600}
	out := func(n float64) [tollgate.NumDimensions]float64 {
		return [tollgate.NumDimensions]float64{tollgate.OutputTokens: n}
	}
	res, err := st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: out(550)})
	require.NoError(t, err)
	require.True(t, res.Granted)

	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: out(300), Need: out(100)})
	require.NoError(t, err)
	assert.False(t, res.Granted, "50 left: short of the need")
	assert.Equal(t, 5*time.Second, res.Wait, "until the need fits, not the cost")

	clk.Advance(5 * time.Second)
	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: out(300), Need: out(100)})
	require.NoError(t, err)
	assert.True(t, res.Granted)
	assert.Equal(t, -200.0, res.Levels.Level[tollgate.OutputTokens], "the whole cost charged, into debt")
}

func TestMemoryStoreSettleNeverCreatesABucket(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	ctx := context.Background()
	limits := [tollgate.NumDimensions]int64{tollgate.Requests: 60}

	lv, err := st.Settle(ctx, "lost", tollgate.Settlement{Limits: limits, SentAt: stoEpoch,
		Charge:   [tollgate.NumDimensions]float64{tollgate.Requests: 50},
		Floor:    [tollgate.NumDimensions]float64{tollgate.Requests: 5},
		HasFloor: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	for d := range tollgate.NumDimensions {
		assert.True(t, math.IsNaN(lv.Level[d]), "%v: no bucket, NaN", tollgate.Dimension(d))
	}

	// The next Admit that knows nothing of the level finds a full bucket:
	// neither the charge nor the floor made one.
	res, err := st.Admit(ctx, "lost", tollgate.Admission{Limits: limits, Cost: [tollgate.NumDimensions]float64{tollgate.Requests: 1}})
	require.NoError(t, err)
	require.True(t, res.Granted)
	assert.Equal(t, 59.0, res.Levels.Level[tollgate.Requests])
}

func TestMemoryStoreAdmitStartsANewBucketAtStart(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	ctx := context.Background()
	limits := [tollgate.NumDimensions]int64{tollgate.Requests: 60, tollgate.OutputTokens: 600}
	one := [tollgate.NumDimensions]float64{tollgate.Requests: 1, tollgate.OutputTokens: 1}

	res, err := st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: one,
		Start:    [tollgate.NumDimensions]float64{tollgate.Requests: 5, tollgate.OutputTokens: 9000},
		HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true, tollgate.OutputTokens: true}})
	require.NoError(t, err)
	require.True(t, res.Granted)
	assert.Equal(t, 4.0, res.Levels.Level[tollgate.Requests], "started at Start")
	assert.Equal(t, 599.0, res.Levels.Level[tollgate.OutputTokens], "a Start above the limit starts full")

	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: one,
		Start: [tollgate.NumDimensions]float64{tollgate.Requests: 0}, HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	require.True(t, res.Granted, "Start is for a bucket the store does not have; this one it has")
	assert.Equal(t, 3.0, res.Levels.Level[tollgate.Requests])

	res, err = st.Admit(ctx, "unset", tollgate.Admission{Limits: limits, Cost: one,
		Start: [tollgate.NumDimensions]float64{tollgate.Requests: 5}})
	require.NoError(t, err)
	assert.Equal(t, 59.0, res.Levels.Level[tollgate.Requests], "a Start without HasStart is no Start: full")

	res, err = st.Admit(ctx, "nan", tollgate.Admission{Limits: limits, Cost: one,
		Start: [tollgate.NumDimensions]float64{tollgate.Requests: math.NaN()}, HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	assert.Equal(t, 59.0, res.Levels.Level[tollgate.Requests], "a NaN Start is no Start: full")

	res, err = st.Admit(ctx, "empty", tollgate.Admission{Limits: limits, Cost: one,
		HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	assert.False(t, res.Granted, "a bucket started empty")
	assert.Equal(t, time.Second, res.Wait, "one request at 60 a minute")
}

func TestMemoryStoreHonoursContext(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	limits := [tollgate.NumDimensions]int64{tollgate.Requests: 60}
	one := [tollgate.NumDimensions]float64{tollgate.Requests: 1}
	_, err := st.Admit(context.Background(), "n", tollgate.Admission{Limits: limits, Cost: one})
	require.NoError(t, err)

	done, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = st.Settle(done, "n", tollgate.Settlement{Limits: limits, Charge: [tollgate.NumDimensions]float64{tollgate.Requests: 30}})
	assert.ErrorIs(t, err, context.Canceled)
	_, err = st.Admit(done, "n", tollgate.Admission{Limits: limits, Cost: [tollgate.NumDimensions]float64{tollgate.Requests: 10}})
	assert.ErrorIs(t, err, context.Canceled)

	lv, err := st.Settle(context.Background(), "n", tollgate.Settlement{Limits: limits})
	require.NoError(t, err)
	assert.Equal(t, 59.0, lv.Level[tollgate.Requests], "an error changed nothing")
}

func TestMemoryStoreKeep(t *testing.T) {
	// Admission.Keep is what an attempt must leave in each bucket: it fits
	// when the bucket holds its cost plus Keep (capped together at the
	// limit), and is charged its cost only.
	clk := fakeclock.New(stoEpoch)
	st := tollgate.NewMemoryStore(clk)
	ctx := context.Background()
	limits := [tollgate.NumDimensions]int64{tollgate.Requests: 60, tollgate.OutputTokens: 600}
	cost := [tollgate.NumDimensions]float64{tollgate.Requests: 1, tollgate.OutputTokens: 500}
	keep := [tollgate.NumDimensions]float64{tollgate.OutputTokens: 200}

	res, err := st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: cost, Keep: keep})
	require.NoError(t, err)
	require.True(t, res.Granted, "500 + 200 is capped at the limit: a full bucket fits")
	assert.Equal(t, 100.0, res.Levels.Level[tollgate.OutputTokens], "charged its cost only")

	small := [tollgate.NumDimensions]float64{tollgate.Requests: 1, tollgate.OutputTokens: 50}
	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: small, Keep: keep})
	require.NoError(t, err)
	assert.False(t, res.Granted, "50 fits the 100 left, but not with 200 kept")
	assert.Equal(t, 15*time.Second, res.Wait, "150 to refill at 10 a second")
	res, err = st.Admit(ctx, "n", tollgate.Admission{Limits: limits, Cost: small})
	require.NoError(t, err)
	assert.True(t, res.Granted, "an attempt that keeps nothing takes it")

	res, err = st.Admit(ctx, "m", tollgate.Admission{Limits: limits, Cost: small,
		Keep: [tollgate.NumDimensions]float64{tollgate.OutputTokens: math.NaN(), tollgate.Requests: math.Inf(1)}})
	require.NoError(t, err)
	assert.True(t, res.Granted, "a NaN or infinite Keep is none")
}

// Flush returns once what the Transport owes the store is in: while the
// settlement of a call that ended is blocked on its way, Flush waits (and
// gives up with its context), and after, it returns at once.
func TestStoreFlushReturnsOnceWhatIsOwedIsIn(t *testing.T) {
	clk := fakeclock.New(stoEpoch)
	store := stoNewBlockedSettle(t, clk, false)
	rig := stoNewRig(t, clk, tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}))
	tr := rig.s

	require.NoError(t, tr.Flush(context.Background()), "nothing owed")
	// The call reserves 100 output tokens and uses 10: its body's end
	// settles 90 back, and that Settle blocks.
	r := stoReceive(t, rig.start(stoReq(context.Background(), "1", 100)))
	require.NoError(t, r.err)
	stoFinish(r)
	<-store.entered

	ctx, cancel := context.WithCancel(context.Background())
	flushed := make(chan error, 1)
	go func() { flushed <- tr.Flush(ctx) }()
	cancel()
	require.ErrorIs(t, <-flushed, context.Canceled, "Flush returned while the settlement was still on its way")

	store.once.Do(func() { close(store.release) })
	require.NoError(t, tr.Flush(context.Background()))
	select {
	case <-store.returned:
	default:
		t.Fatal("Flush returned before the settlement was in")
	}
}
