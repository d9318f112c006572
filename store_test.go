package tollgate

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// storeRig is one Transport (Breaker, Budget, Observe) of a fleet that may
// share a store, with a base answering through reply and counting requests.
type storeRig struct {
	t     *testing.T
	clk   *fakeclock.Clock
	s     *State
	rt    http.RoundTripper
	mu    sync.Mutex
	reply func(*http.Request) (*http.Response, error)
	sent  int
}

func newStoreRig(t *testing.T, clk *fakeclock.Clock, opts ...Option) *storeRig {
	rig := &storeRig{t: t, clk: clk}
	rig.reply = func(*http.Request) (*http.Response, error) { return anthropicReply(200, nil, 10, 10), nil }
	rig.s = NewState(append([]Option{WithClock(clk)}, opts...)...)
	base := budgetBase(func(req *http.Request) (*http.Response, error) {
		rig.mu.Lock()
		rig.sent++
		reply := rig.reply
		rig.mu.Unlock()
		return reply(req)
	})
	rig.rt = Chain(base, Breaker(rig.s), Budget(rig.s), Observe(rig.s))
	return rig
}

func (rig *storeRig) sentCount() int {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return rig.sent
}

func (rig *storeRig) start(req *http.Request) <-chan budgetResult {
	done := make(chan budgetResult, 1)
	go func() {
		resp, err := rig.rt.RoundTrip(req)
		done <- budgetResult{resp, err}
	}()
	return done
}

func (rig *storeRig) do(req *http.Request) budgetResult {
	r := receive(rig.t, rig.start(req))
	settle(r)
	return r
}

func (rig *storeRig) budget() BudgetSnapshot { return rig.s.budget.snapshot(sonnet, rig.clk.Now()) }

func TestStoreSharedByTwoTransports(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := NewMemoryStore(clk)
	a := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 2}))
	b := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 2}))

	for i := range 2 {
		require.NoError(t, a.do(budgetReq(context.Background(), strconv.Itoa(i), "", 1)).err)
	}
	done := b.start(budgetReq(context.Background(), "b", "", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{30 * time.Second}, clk.Pending(), "b waits for the refill of what a spent")
	assert.Zero(t, b.sentCount())
	clk.Advance(30 * time.Second)
	r := receive(t, done)
	require.NoError(t, r.err)
	settle(r)
	assert.Equal(t, 1, b.sentCount())
}

func TestStoreNamesAccountsApart(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	rig := newStoreRig(t, clk, WithLimits(Limits{RequestsPerMinute: 1}))
	withKey := func(seq, key string) *http.Request {
		req := budgetReq(context.Background(), seq, "", 1)
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
	clk.Advance(time.Minute)
	settle(receive(t, done))
}

func TestStorePauseIsSeenByEveryTransport(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := NewMemoryStore(clk)
	limits := WithLimits(Limits{RequestsPerMinute: 1000})
	a := newStoreRig(t, clk, WithStore(store), limits)
	b := newStoreRig(t, clk, WithStore(store), limits)
	a.reply = func(*http.Request) (*http.Response, error) {
		return anthropicReply(429, http.Header{"Retry-After": {"10"}}, 0, 0), nil
	}

	r := a.do(budgetReq(context.Background(), "a", "", 1))
	require.NoError(t, r.err)
	require.Equal(t, http.StatusTooManyRequests, r.resp.StatusCode)

	done := b.start(budgetReq(context.Background(), "b", "", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{10 * time.Second}, clk.Pending(), "b waits out the pause a took")
	brk := b.s.breakers.snapshot(sonnet, clk.Now())
	assert.Equal(t, BreakerOpen, brk.State, "b's breaker shows the pause, so b's next calls wait there")
	assert.Equal(t, "shared: retry-after", brk.Reason)
	assert.Zero(t, b.sentCount())

	// A caller that cannot wait that long learns so at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := newStoreRig(t, clk, WithStore(store), limits)
	hopeless := receive(t, c.start(budgetReq(ctx, "c", "", 1)))
	var open *OpenError
	require.ErrorAs(t, hopeless.err, &open)
	assert.Equal(t, "shared: retry-after", open.Reason)
	assert.Equal(t, clk.Now().Add(10*time.Second), open.Until)
	assert.Zero(t, c.sentCount())

	clk.Advance(10 * time.Second)
	r = receive(t, done)
	require.NoError(t, r.err)
	settle(r)
	assert.Equal(t, 1, b.sentCount())
}

// flakyStore is a Store that fails, or hangs until its context ends, on
// demand.
type flakyStore struct {
	Store
	mu    sync.Mutex
	mode  string // "", "fail" or "hang"
	calls int
}

func (f *flakyStore) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *flakyStore) set(mode string) {
	f.mu.Lock()
	f.mode = mode
	f.mu.Unlock()
}

func (f *flakyStore) check(ctx context.Context) error {
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

func (f *flakyStore) Admit(ctx context.Context, name string, a Admission) (Admitted, error) {
	if err := f.check(ctx); err != nil {
		return Admitted{}, err
	}
	return f.Store.Admit(ctx, name, a)
}

func (f *flakyStore) Settle(ctx context.Context, name string, s Settlement) (Levels, error) {
	if err := f.check(ctx); err != nil {
		return Levels{}, err
	}
	return f.Store.Settle(ctx, name, s)
}

func (f *flakyStore) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	if err := f.check(ctx); err != nil {
		return err
	}
	return f.Store.Pause(ctx, name, d, reason)
}

// fallbackGauge reads tollgate.store.fallback; -1 when never recorded.
func fallbackGauge(t *testing.T, reader *sdkmetric.ManualReader) int64 {
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
	clk := fakeclock.New(testEpoch)
	store := &flakyStore{Store: NewMemoryStore(clk)}
	var logs bytes.Buffer
	reader := sdkmetric.NewManualReader()
	rig := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 40}),
		WithStoreFallback(0.25, 5*time.Second), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))

	// The store fails: every call still goes, paced at a quarter of the
	// limit, 10 a minute, the first ten at once from a full bucket.
	store.set("fail")
	for i := range 10 {
		r := rig.do(budgetReq(context.Background(), strconv.Itoa(i), "", 1))
		require.NoError(t, r.err, "no request is lost while the store fails")
	}
	assert.Empty(t, clk.Pending())
	assert.True(t, rig.budget().Fallback)
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("level=WARN")), "said once: %s", logs.String())
	assert.Contains(t, logs.String(), "connection refused")
	assert.Equal(t, int64(1), fallbackGauge(t, reader))

	done := rig.start(budgetReq(context.Background(), "11th", "", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{6 * time.Second}, clk.Pending(), "the fallback's 10 a minute")

	// The store is back: the next admission after the retry interval
	// uses it again.
	store.set("")
	clk.Advance(6 * time.Second)
	r := receive(t, done)
	require.NoError(t, r.err)
	settle(r)
	assert.False(t, rig.budget().Fallback)
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("level=WARN")))
	assert.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("answers again")), logs.String())
	assert.Equal(t, int64(0), fallbackGauge(t, reader))
	for i := range 20 {
		r := rig.do(budgetReq(context.Background(), "shared"+strconv.Itoa(i), "", 1))
		require.NoError(t, r.err)
	}
	assert.Empty(t, clk.Pending(), "the shared store's full limit of 40 paces again")
	assert.Equal(t, 31, rig.sentCount())
}

func TestStoreThatHangsIsCutOffByTheTimeout(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := &flakyStore{Store: NewMemoryStore(clk)}
	store.set("hang")
	rig := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 40}),
		WithStoreTimeout(20*time.Millisecond), WithLogger(slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))))

	start := time.Now()
	r := rig.do(budgetReq(context.Background(), "1", "", 1))
	require.NoError(t, r.err)
	assert.Less(t, time.Since(start), time.Second, "bounded by the store timeout, not the store")
	assert.True(t, rig.budget().Fallback)
	// While down, the store is left alone: no call waits for it again
	// until the retry interval (of the fake clock, which stands still) has
	// passed.
	calls := store.callCount()
	for i := range 5 {
		require.NoError(t, rig.do(budgetReq(context.Background(), strconv.Itoa(i), "", 1)).err)
	}
	assert.Equal(t, calls, store.callCount(), "the hanging store is not asked again meanwhile")
	assert.Equal(t, 6, rig.sentCount())
}

// aheadStore grants every attempt ahead of time, 5 s from now, as a shared
// store serving a queue does, and records the charges settled.
type aheadStore struct {
	Store
	mu      sync.Mutex
	admits  int
	carried []int // settlements carried by each admission
	charges [][numDimensions]float64
}

func (s *aheadStore) admitCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admits
}

func (s *aheadStore) Admit(ctx context.Context, name string, a Admission) (Admitted, error) {
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

func (s *aheadStore) Settle(ctx context.Context, name string, st Settlement) (Levels, error) {
	s.mu.Lock()
	s.charges = append(s.charges, st.Charge)
	s.mu.Unlock()
	return s.Store.Settle(ctx, name, st)
}

func TestStoreGrantAheadWaitsAndRefundsOnCancel(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := &aheadStore{Store: NewMemoryStore(clk)}
	rig := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}))

	req, c := rig.s.callFor(budgetReq(context.Background(), "1", "", 100))
	done := rig.start(req)
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{5 * time.Second}, clk.Pending())
	assert.Zero(t, rig.sentCount(), "not sent before its time")
	clk.Advance(5 * time.Second)
	r := receive(t, done)
	require.NoError(t, r.err)
	settle(r)
	assert.Equal(t, 5*time.Second, c.waits.Budget)

	ctx, cancel := context.WithCancel(context.Background())
	done = rig.start(budgetReq(ctx, "2", "", 100))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	cancel()
	r = receive(t, done)
	require.ErrorIs(t, r.err, context.Canceled)
	assert.Equal(t, 1, rig.sentCount())
	store.mu.Lock()
	last := store.charges[len(store.charges)-1]
	store.mu.Unlock()
	assert.Equal(t, -1.0, last[Requests], "the cancelled attempt's request is given back")
	assert.Equal(t, -100.0, last[OutputTokens], "and its output reservation")
	kb := rig.s.budget.forKey(sonnet)
	kb.mu.Lock()
	defer kb.mu.Unlock()
	assert.Equal(t, [numDimensions]float64{}, kb.held)
}

func TestStoreGrantAheadHoldsTheHead(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := &aheadStore{Store: NewMemoryStore(clk)}
	rig := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 100}))

	first := rig.start(budgetReq(context.Background(), "1", "", 1))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	second := rig.start(budgetReq(context.Background(), "2", "", 1))
	waitFor(t, "the second queued", func() bool { return rig.budget().Waiting == 2 })
	assert.Equal(t, 1, store.admitCount(), "one grant ahead at a time: the second waits its turn here")

	clk.Advance(5 * time.Second)
	settle(receive(t, first))
	waitFor(t, "the second granted", func() bool { return store.admitCount() == 2 })
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, 1, rig.sentCount())
	clk.Advance(5 * time.Second)
	settle(receive(t, second))
	assert.Equal(t, 2, rig.sentCount())
	assert.Zero(t, rig.budget().Waiting)
}

func TestStoreSettlementRidesWithTheNextAdmission(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	store := &aheadStore{Store: NewMemoryStore(clk)}
	rig := newStoreRig(t, clk, WithStore(store), WithLimits(Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 10_000}))

	r0 := rig.start(budgetReq(context.Background(), "0", "", 100))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	r1 := rig.start(budgetReq(context.Background(), "1", "", 100))
	waitFor(t, "1 queued", func() bool { return rig.budget().Waiting == 2 })
	r2 := rig.start(budgetReq(context.Background(), "2", "", 100))
	waitFor(t, "2 queued", func() bool { return rig.budget().Waiting == 3 })

	clk.Advance(5 * time.Second) // 0 goes, 1 is granted ahead and holds the head
	first := receive(t, r0)
	waitFor(t, "1 granted", func() bool { return store.admitCount() == 2 })
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "1 waits out its grant")
	settle(first) // 0's usage: 10 output tokens of the 100 reserved
	store.mu.Lock()
	assert.Empty(t, store.charges, "no call of its own: 2's admission is coming")
	store.mu.Unlock()

	clk.Advance(5 * time.Second) // 1 goes, 2 asks, carrying 0's settlement
	settle(receive(t, r1))
	waitFor(t, "2 granted", func() bool { return store.admitCount() == 3 })
	store.mu.Lock()
	assert.Equal(t, []int{0, 0, 1}, store.carried)
	require.NotEmpty(t, store.charges)
	assert.Equal(t, -90.0, store.charges[0][OutputTokens], "0's unused output given back")
	store.mu.Unlock()
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "2 waits out its grant")
	clk.Advance(5 * time.Second)
	settle(receive(t, r2))
	waitFor(t, "all settled", func() bool { return rig.budget().InFlight == 0 })
	kb := rig.s.budget.forKey(sonnet)
	kb.mu.Lock()
	defer kb.mu.Unlock()
	assert.Empty(t, kb.pending, "nothing left behind once no admission is coming")
}

func TestMemoryStoreContract(t *testing.T) {
	clk := fakeclock.New(testEpoch)
	st := NewMemoryStore(clk)
	ctx := context.Background()
	limits := [numDimensions]int64{Requests: 60, OutputTokens: 600}

	res, err := st.Admit(ctx, "n", Admission{Limits: limits, Cost: [numDimensions]float64{Requests: 1, OutputTokens: 1000}, MaxWait: time.Hour})
	require.NoError(t, err)
	require.True(t, res.Granted, "a cost above the limit takes a full bucket")
	assert.Zero(t, res.Wait)
	assert.Equal(t, 0.0, res.Levels.Level[OutputTokens])

	res, err = st.Admit(ctx, "n", Admission{Limits: limits, Cost: [numDimensions]float64{Requests: 1, OutputTokens: 60}, MaxWait: time.Hour})
	require.NoError(t, err)
	assert.False(t, res.Granted, "the memory store never grants ahead of time")
	assert.Equal(t, 6*time.Second, res.Wait)
	assert.Equal(t, 59.0, res.Levels.Level[Requests], "all or nothing: the request was not taken either")

	lv, err := st.Settle(ctx, "n", Settlement{Limits: limits, Charge: [numDimensions]float64{OutputTokens: -5000}})
	require.NoError(t, err)
	assert.Equal(t, 600.0, lv.Level[OutputTokens], "giving back stops at the limit")

	clk.Advance(30 * time.Second)
	lv, err = st.Settle(ctx, "n", Settlement{Limits: limits, SentAt: testEpoch,
		Floor: [numDimensions]float64{Requests: 10}, HasFloor: [numDimensions]bool{Requests: true}})
	require.NoError(t, err)
	assert.Equal(t, 40.0, lv.Level[Requests], "pulled down to the floor plus the refill since it was sent")

	require.NoError(t, st.Pause(ctx, "n", 10*time.Second, "retry-after"))
	require.NoError(t, st.Pause(ctx, "n", time.Second, "shorter"))
	res, err = st.Admit(ctx, "n", Admission{Limits: limits, Cost: [numDimensions]float64{Requests: 1}})
	require.NoError(t, err)
	assert.False(t, res.Granted)
	assert.Equal(t, 10*time.Second, res.Paused)
	assert.Equal(t, "retry-after", res.PauseReason)
	res, err = st.Admit(ctx, "other", Admission{Limits: limits, Cost: [numDimensions]float64{Requests: 1}})
	require.NoError(t, err)
	assert.True(t, res.Granted, "names are independent")
}
