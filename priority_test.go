package tollgate_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// priCtx is a context carrying priority p and, when not empty, tenant.
func priCtx(p tollgate.Priority, tenant string) context.Context {
	ctx := tollgate.ContextWithPriority(context.Background(), p)
	if tenant != "" {
		ctx = tollgate.ContextWithTenant(ctx, tenant)
	}
	return ctx
}

// priDrained is a Budget rig whose only limit is 6,000 output tokens a
// minute (100 a second), drained: every attempt waits for the refill of
// its max_tokens, which it produces in full.
func priDrained(t *testing.T, opts ...tollgate.Option) *bgtRig {
	t.Helper()
	rig := newBgtRig(t, append([]tollgate.Option{tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 6000})}, opts...)...)
	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 6000), nil })
	_, err := rig.do(bgtReq(context.Background(), "drain", "", 6000))
	require.NoError(t, err)
	rig.setReply(bgtProducesMaxTokens)
	return rig
}

// priDrive moves the fake clock to each wait in turn until done reports
// true: time moves only when every attempt waits, so the simulated minutes
// take milliseconds. It fails the test when nothing moves for 5 s (a guard
// against a broken test hanging, not a timing assumption).
func priDrive(t *testing.T, clk *fakeclock.Clock, done func() bool) {
	t.Helper()
	priDriveWhen(t, clk, func() bool { return true }, done)
}

// priDriveQueue is priDrive for attempts that wait in rig's queue and
// leave their bodies unread once admitted: the clock moves only once every
// attempt admitted has been sent, so that the order they were sent in is
// the order they were admitted in.
func priDriveQueue(t *testing.T, rig *bgtRig, done func() bool) {
	t.Helper()
	settled := len(rig.sentOrder()) - rig.snap().InFlight
	priDriveWhen(t, rig.clk, func() bool { return len(rig.sentOrder()) == settled+rig.snap().InFlight }, done)
}

// priDriveFleet is priDrive for a fleet of agents that call one after
// another through rig: the clock moves only while all of them (agents
// reports how many run) are queued, none between two calls.
func priDriveFleet(t *testing.T, rig *bgtRig, agents func() int, done func() bool) {
	t.Helper()
	priDriveWhen(t, rig.clk, func() bool { return rig.snap().Waiting == agents() }, done)
}

func priDriveWhen(t *testing.T, clk *fakeclock.Clock, ready, done func() bool) {
	t.Helper()
	stuck := time.Now().Add(5 * time.Second)
	for !done() {
		changed := clk.Changed()
		if len(clk.Pending()) > 0 && ready() {
			clk.AdvanceToNext()
			stuck = time.Now().Add(5 * time.Second)
			continue
		}
		select {
		case <-changed:
			stuck = time.Now().Add(5 * time.Second)
		case <-time.After(100 * time.Microsecond): // look again
			if time.Now().After(stuck) {
				t.Fatal("nothing moved")
			}
		}
	}
}

func TestPriorityInteractiveGoesFirst(t *testing.T) {
	rig := priDrained(t)
	arrivals := []struct {
		seq string
		p   tollgate.Priority
	}{
		{"b1", tollgate.Background}, {"n1", tollgate.Normal}, {"b2", tollgate.Background},
		{"i1", tollgate.Interactive}, {"u1", tollgate.Priority(42)}, {"i2", tollgate.Interactive},
	}
	var dones []<-chan rtResult
	for i, a := range arrivals {
		dones = append(dones, rig.start(bgtReq(priCtx(a.p, ""), a.seq, "", 100)))
		rig.waitQueued(i + 1)
	}
	snap := rig.snap()
	assert.Equal(t, tollgate.PriorityCounts{Interactive: 2, Normal: 2, Background: 2}, snap.WaitingByPriority,
		"an unknown priority counts as Normal")
	priDriveQueue(t, rig, func() bool { return len(rig.sentOrder()) == len(arrivals)+1 })
	assert.Equal(t, []string{"drain", "i1", "i2", "n1", "u1", "b1", "b2"}, rig.sentOrder(),
		"Interactive first, then Normal (the unknown value among them), then Background, each class in arrival order")
	for _, d := range dones {
		bgtSettle(bgtReceive(t, d))
	}
	assert.Equal(t, tollgate.PriorityCounts{}, rig.snap().WaitingByPriority)
}

func TestPriorityInteractiveWaitsOnlyForItsOwnRefill(t *testing.T) {
	// A Background attempt heads the queue, waiting 30.25 s for the refill
	// of its 3,000 tokens (and the quarter second's refill kept besides,
	// cushion). An Interactive attempt of 100 that comes after it
	// waits 1.25 s, the refill of its own cost, not the Background one's.
	rig := priDrained(t)
	bg := rig.start(bgtReq(priCtx(tollgate.Background, ""), "background", "", 3000))
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{30250 * time.Millisecond}, rig.clk.Pending())
	in := rig.start(bgtReq(priCtx(tollgate.Interactive, ""), "interactive", "", 100))
	require.True(t, rig.clk.WaitForWaiters(2, 5*time.Second))
	assert.Equal(t, []time.Duration{30250 * time.Millisecond, 1250 * time.Millisecond}, rig.clk.Pending())
	rig.clk.Advance(1250*time.Millisecond - time.Nanosecond)
	assert.Equal(t, []string{"drain"}, rig.sentOrder())
	rig.clk.Advance(time.Nanosecond)
	r := bgtReceive(t, in)
	require.NoError(t, r.err)
	bgtSettle(r)
	assert.Equal(t, 1250*time.Millisecond, rig.record("interactive").Waits.Budget)

	// The Background attempt asks again, and waits for the second the
	// Interactive one took, and for the headroom of one Interactive call
	// (100 tokens) it now leaves.
	priDrive(t, rig.clk, func() bool { return len(rig.sentOrder()) == 3 })
	bgtSettle(bgtReceive(t, bg))
	assert.InDelta(t, 32250*time.Millisecond, rig.record("background").Waits.Budget, float64(time.Millisecond))
}

func TestPriorityInteractiveWaitsBehindOneGrantAhead(t *testing.T) {
	// A store that grants ahead of time (as redisstore does) charged a
	// Background attempt, which holds the head until its time, 5 s away: an
	// Interactive attempt that arrives then waits for that one call, not
	// for the other Background attempt queued before it.
	// (One attempt in flight at a time, so that the order they are sent in
	// is the order they were admitted in.)
	clk := fakeclock.New(bgtEpoch)
	store := &bgtAheadStore{Store: tollgate.NewMemoryStore(clk)}
	rig := newBgtRigOn(t, clk, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}),
		tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour), tollgate.WithMaxConcurrency(1))
	store.ahead.Store(true)
	first := rig.start(bgtReq(priCtx(tollgate.Background, ""), "granted ahead", "", 10))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second), "granted, waiting for its time")
	store.ahead.Store(false)
	second := rig.start(bgtReq(priCtx(tollgate.Background, ""), "background", "", 10))
	rig.waitQueued(2)
	in := rig.start(bgtReq(priCtx(tollgate.Interactive, ""), "interactive", "", 10))
	rig.waitQueued(3)
	assert.Equal(t, []time.Duration{5 * time.Second}, clk.Pending(), "only the grant ahead waits on the clock")
	clk.Advance(5 * time.Second)
	for _, ch := range []<-chan rtResult{first, in, second} {
		r := bgtReceive(t, ch)
		require.NoError(t, r.err)
		bgtSettle(r)
	}
	assert.Equal(t, []string{"granted ahead", "interactive", "background"}, rig.sentOrder())
	assert.Equal(t, 5*time.Second, rig.record("interactive").Waits.Budget)
}

func TestPriorityHeadroom(t *testing.T) {
	// One Interactive call of 1,000 output tokens teaches what one costs;
	// Normal and Background attempts then leave that much in the bucket.
	setup := func(t *testing.T, opts ...tollgate.Option) *bgtRig {
		rig := newBgtRig(t, append([]tollgate.Option{tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 6000})}, opts...)...)
		rig.setReply(bgtProducesMaxTokens)
		_, err := rig.do(bgtReq(priCtx(tollgate.Interactive, ""), "first interactive", "", 1000))
		require.NoError(t, err)
		rig.waitLevels(bgtLevels{tollgate.OutputTokens: 5000}, "the first Interactive call settled")
		return rig
	}
	t.Run("kept", func(t *testing.T) {
		rig := setup(t)
		assert.InDelta(t, 1000, rig.snap().Headroom[tollgate.OutputTokens], 1e-6)
		bg := rig.start(bgtReq(priCtx(tollgate.Background, ""), "background", "", 4500))
		require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
		assert.Equal(t, []time.Duration{5250 * time.Millisecond}, rig.clk.Pending(),
			"4,500 fit the 5,000 left, but not with 1,000 kept (and 25, cushion): 525 to refill at 100/s")
		_, err := rig.do(bgtReq(priCtx(tollgate.Interactive, ""), "interactive", "", 1000))
		require.NoError(t, err, "the Interactive attempt finds its cost in the bucket")
		assert.Zero(t, rig.record("interactive").Waits.Budget)
		priDrive(t, rig.clk, func() bool { return len(rig.sentOrder()) == 3 })
		bgtSettle(bgtReceive(t, bg))
		assert.Equal(t, 15250*time.Millisecond, rig.record("background").Waits.Budget,
			"then it waits for 4,500 + 25 + 1,000 - 4,000 = 1,525 from the start")
	})
	t.Run("off", func(t *testing.T) {
		rig := setup(t, tollgate.WithInteractiveHeadroom(0))
		assert.Zero(t, rig.snap().Headroom)
		_, err := rig.do(bgtReq(priCtx(tollgate.Background, ""), "background", "", 4500))
		require.NoError(t, err)
		assert.Zero(t, rig.record("background").Waits.Budget)
		in := rig.start(bgtReq(priCtx(tollgate.Interactive, ""), "interactive", "", 1000))
		require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
		assert.Equal(t, []time.Duration{5250 * time.Millisecond}, rig.clk.Pending(), "the Interactive attempt waits for its refill")
		rig.clk.Advance(5250 * time.Millisecond)
		bgtSettle(bgtReceive(t, in))
	})
	t.Run("none before an Interactive call", func(t *testing.T) {
		rig := priDrained(t)
		assert.Zero(t, rig.snap().Headroom, "nothing is kept for calls that never came")
	})
	t.Run("bad values keep the default", func(t *testing.T) {
		for _, n := range []float64{-1, math.Inf(1), math.Inf(-1), math.NaN()} {
			rig := setup(t, tollgate.WithInteractiveHeadroom(n))
			assert.InDelta(t, tollgate.DefaultInteractiveHeadroom*1000, rig.snap().Headroom[tollgate.OutputTokens], 1e-6, "%v", n)
		}
	})
}

func TestPriorityAgingBoundsEveryWait(t *testing.T) {
	// Interactive attempts keep coming, each as soon as one is admitted,
	// and take the whole refill: without aging a Background attempt would
	// wait for as long as they come. After WithPriorityAging's 10 s it goes
	// ahead of those that arrived after it.
	const aging = 10 * time.Second
	rig := priDrained(t, tollgate.WithPriorityAging(aging))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 3 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = rig.do(bgtReq(tollgate.ContextWithPriority(ctx, tollgate.Interactive),
					"i"+strconv.Itoa(i)+"."+strconv.Itoa(n), "", 100))
			}
		})
	}
	rig.waitQueued(3)
	bg := rig.start(bgtReq(priCtx(tollgate.Background, ""), "background", "", 100))
	rig.waitQueued(4)
	var done rtResult
	priDriveFleet(t, rig, func() int { return 4 }, func() bool {
		select {
		case done = <-bg:
			return true
		default:
			return false
		}
	})
	require.NoError(t, done.err)
	bgtSettle(done)
	wait := rig.record("background").Waits.Budget
	assert.GreaterOrEqual(t, wait, aging, "held back while younger than the aging period")
	assert.LessOrEqual(t, wait, aging+time.Second, "then served ahead of the attempts that came after it: its own refill at most")
	stop()
	priDrive(t, rig.clk, func() bool { return rig.snap().Waiting == 0 })
}

func TestPriorityQueueWaitCap(t *testing.T) {
	requireQueueWaitError := func(t *testing.T, err error) *tollgate.QueueWaitError {
		t.Helper()
		require.ErrorIs(t, err, tollgate.ErrQueueWait)
		var qe *tollgate.QueueWaitError
		require.True(t, errors.As(err, &qe))
		assert.Equal(t, bgtSonnet, qe.Key)
		assert.Equal(t, 10*time.Second, qe.Cap)
		assert.Contains(t, qe.Error(), qe.Reason)
		return qe
	}
	capped := tollgate.WithMaxQueueWait(10 * time.Second)
	t.Run("its own refill would pass the cap: at once", func(t *testing.T) {
		rig := priDrained(t, capped)
		r := bgtReceive(t, rig.start(bgtReq(priCtx(tollgate.Background, "acme"), "big", "", 1500)))
		qe := requireQueueWaitError(t, r.err)
		assert.Zero(t, qe.Waited)
		assert.Equal(t, "output-tokens refill", qe.Reason)
		assert.Equal(t, tollgate.Background, qe.Priority)
		assert.Equal(t, "acme", qe.Tenant)
		assert.Empty(t, rig.clk.Pending())
		assert.Zero(t, rig.snap().Waiting)
	})
	t.Run("behind others until the cap", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}), capped, tollgate.WithMaxConcurrency(1))
		held := bgtReceive(t, rig.start(bgtReq(context.Background(), "held", "", 1)))
		require.NoError(t, held.err) // its body unread: it holds the only slot
		bg := rig.start(bgtReq(priCtx(tollgate.Background, ""), "background", "", 1))
		rig.waitQueued(1)
		rig.clk.Advance(5 * time.Second)
		in := rig.start(bgtReq(priCtx(tollgate.Interactive, ""), "interactive", "", 1))
		rig.waitQueued(2)
		require.True(t, rig.clk.WaitForWaiters(2, 5*time.Second))
		rig.clk.Advance(5 * time.Second)
		qe := requireQueueWaitError(t, bgtReceive(t, bg).err)
		assert.Equal(t, 10*time.Second, qe.Waited)
		assert.Equal(t, "behind 1 attempts in the queue", qe.Reason)
		rig.clk.Advance(5 * time.Second)
		qe = requireQueueWaitError(t, bgtReceive(t, in).err)
		assert.Equal(t, 10*time.Second, qe.Waited)
		assert.Contains(t, qe.Reason, "WithMaxConcurrency")
		bgtSettle(held)
		assert.Equal(t, []string{"held"}, rig.sentOrder())
	})
	t.Run("off by default: waiting is not failing", func(t *testing.T) {
		rig := priDrained(t)
		done := rig.start(bgtReq(priCtx(tollgate.Background, ""), "big", "", 6000))
		require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second))
		rig.clk.Advance(time.Minute)
		r := bgtReceive(t, done)
		require.NoError(t, r.err)
		bgtSettle(r)
	})
}

// priPausingStore answers the Admit of the attempt tagged pauseFor with a
// pause, as a store shared with a process that took one does.
type priPausingStore struct {
	tollgate.Store
	clk    *fakeclock.Clock
	mu     sync.Mutex
	until  time.Time
	reason string
}

func (s *priPausingStore) pause(d time.Duration, reason string) {
	s.mu.Lock()
	s.until, s.reason = s.clk.Now().Add(d), reason
	s.mu.Unlock()
}

func (s *priPausingStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	s.mu.Lock()
	left, reason := s.until.Sub(s.clk.Now()), s.reason
	s.mu.Unlock()
	if left > 0 {
		return tollgate.Admitted{Paused: left, PauseReason: reason}, nil
	}
	return s.Store.Admit(ctx, name, a)
}

func TestPriorityPacingPauseIsNotCappedByMaxPause(t *testing.T) {
	// An attempt that waited 70 s in the queue (WithMaxPause's default cap
	// is 60 s) then finds a pause in the shared store. A refill pause is
	// pacing: it waits it out. A pause the server asked for (retry-after) is
	// capped by WithMaxPause, counted from when the attempt met it, not from
	// when it queued: a short one is waited out, a long one is refused.
	for _, tc := range []struct {
		reason string
		pause  time.Duration
		wait   bool
	}{
		{"tokens refill", 2 * time.Second, true},
		{"tokens refill", 10 * time.Minute, true},
		{"retry-after", 2 * time.Second, true},
		{"retry-after", 90 * time.Second, false},
	} {
		t.Run(tc.reason+" "+tc.pause.String(), func(t *testing.T) {
			clk := fakeclock.New(bgtEpoch)
			store := &priPausingStore{Store: tollgate.NewMemoryStore(clk), clk: clk}
			rig := newBgtRigOn(t, clk, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}),
				tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour), tollgate.WithMaxConcurrency(1))
			held := bgtReceive(t, rig.start(bgtReq(context.Background(), "held", "", 1)))
			require.NoError(t, held.err) // its body unread: it holds the only slot
			done := rig.start(bgtReq(context.Background(), "late", "", 1))
			rig.waitQueued(1)
			clk.Advance(70 * time.Second)
			store.pause(tc.pause, tc.reason)
			bgtSettle(held) // the slot is free: the head asks the store
			if !tc.wait {
				r := bgtReceive(t, done)
				var oe *tollgate.OpenError
				require.ErrorAs(t, r.err, &oe)
				assert.Equal(t, "shared: retry-after", oe.Reason)
				return
			}
			require.True(t, clk.WaitForWaiters(1, 5*time.Second))
			assert.Equal(t, []time.Duration{tc.pause}, clk.Pending(), "it waits the pause out")
			clk.Advance(tc.pause)
			r := bgtReceive(t, done)
			require.NoError(t, r.err)
			bgtSettle(r)
		})
	}
}

func TestPriorityMaxPauseCountsOnlyPauses(t *testing.T) {
	// WithMaxPause (60 s) bounds the time an attempt waits on pauses the
	// server asked for, in total; not its waits in the queue. An attempt
	// waits out a 20 s retry-after pause, then 40 s for the refill of its
	// cost, then meets a 30 s one: 50 s paused in all, it waits that out
	// too, 90 s after it started.
	clk := fakeclock.New(bgtEpoch)
	store := &priPausingStore{Store: tollgate.NewMemoryStore(clk), clk: clk}
	rig := newBgtRigOn(t, clk, tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 6000}),
		tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour))
	rig.setReply(func(*http.Request) (*http.Response, error) { return bgtReply(200, nil, 0, 6000), nil })
	_, err := rig.do(bgtReq(context.Background(), "drain", "", 6000))
	require.NoError(t, err)
	rig.setReply(bgtProducesMaxTokens)

	store.pause(20*time.Second, "retry-after")
	done := rig.start(bgtReq(context.Background(), "late", "", 6000))
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{20 * time.Second}, clk.Pending(), "the first pause")
	clk.Advance(20 * time.Second)
	require.Eventually(t, func() bool {
		p := clk.Pending()
		return len(p) == 1 && p[0] == 40*time.Second
	}, 5*time.Second, time.Millisecond, "then the refill of what is left of its cost")
	store.pause(70*time.Second, "retry-after") // 30 s left when it asks again
	clk.Advance(40 * time.Second)
	require.Eventually(t, func() bool {
		p := clk.Pending()
		return len(p) == 1 && p[0] == 30*time.Second
	}, 5*time.Second, time.Millisecond, "it waits the second pause out")
	clk.Advance(30 * time.Second)
	r := bgtReceive(t, done)
	require.NoError(t, r.err)
	bgtSettle(r)
	assert.Equal(t, 90*time.Second, rig.record("late").Waits.Budget)
}
