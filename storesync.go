package tollgate

import (
	"cmp"
	"context"
	"math"
	"sync"
	"time"
)

// This file is how the pools talk to the Store: the failure policy of a
// Store given with WithStore (storeGuard), and the settlements and pauses
// that wait to be sent (storeSync). Every Store call is made with no lock
// held, by the goroutine of the attempt that needs it or, for what can be
// sent later, by a goroutine of its own: a slow store never stalls a body
// read, a header, Snapshot or another Key.

// Defaults of the failure policy of a Store given with WithStore.
const (
	DefaultStoreTimeout       = 100 * time.Millisecond
	DefaultStoreFallbackShare = 0.25
	DefaultStoreRetry         = time.Second
)

// storeConfig is the part of config about the Store.
type storeConfig struct {
	store   Store // nil: a memory store of the State's own
	timeout time.Duration
	share   float64
	retry   time.Duration
}

// WithStore keeps the budget's bucket levels and the breaker's pauses in
// store instead of in this Transport alone, so that every Transport using
// the same store, in this process or in others, shares one budget per Key
// (see Store and package redisstore).
//
// Every call to store is bounded by WithStoreTimeout. When one fails or
// times out, the Transport falls back at once, for the attempt at hand too,
// to a budget of its own in memory that paces at the share of each limit
// given by WithStoreFallback, starting from what it last knew of the levels
// (never from full buckets); it logs the change once (WithLogger), records
// it in the tollgate.store.fallback gauge, and after WithStoreFallback's
// retry interval tries the store again with the next admission, returning to
// it when it answers. A store that lost its buckets meanwhile (a Redis
// restarted empty) is given the levels this Transport last knew, too.
// Attempts admitted by the store that finish meanwhile are not reported to
// it: its buckets refill on their own.
func WithStore(store Store) Option {
	return func(c *config) { c.store.store = store }
}

// WithStoreTimeout bounds each call to the store given by WithStore
// (default 100 ms); zero or less keeps the default.
func WithStoreTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.store.timeout = d
		}
	}
}

// WithStoreFallback sets the failure policy of the store given by WithStore:
// while it fails, this Transport paces at share (0 < share ≤ 1; default
// 0.25) of every limit, its part of a fleet's when the fleet's processes all
// fall back at once, and tries the store again every retry (default 1 s).
// Out-of-range values keep the defaults.
func WithStoreFallback(share float64, retry time.Duration) Option {
	return func(c *config) {
		if share > 0 && share <= 1 {
			c.store.share = share
		}
		if retry > 0 {
			c.store.retry = retry
		}
	}
}

// storeGuard applies the failure policy: it routes calls to the shared store
// while it answers, and to a local fallback while it does not.
type storeGuard struct {
	state   *State
	shared  Store
	own     bool // shared is the State's own memory store: nothing to fall back from
	timeout time.Duration
	share   float64
	retry   time.Duration

	mu      sync.Mutex
	local   Store // the fallback, made afresh at each outage
	down    bool
	retryAt time.Time
}

func newStoreGuard(s *State) *storeGuard {
	sc, clock := s.cfg.store, s.cfg.clock
	if sc.store == nil {
		return &storeGuard{state: s, shared: NewMemoryStore(clock), own: true}
	}
	return &storeGuard{
		state: s, shared: sc.store, local: NewMemoryStore(clock),
		timeout: cmp.Or(sc.timeout, DefaultStoreTimeout),
		share:   cmp.Or(sc.share, DefaultStoreFallbackShare),
		retry:   cmp.Or(sc.retry, DefaultStoreRetry),
	}
}

// pick returns the store to use now: the shared one unless it failed within
// the retry interval.
func (g *storeGuard) pick() Store {
	if g.own {
		return g.shared
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.down {
		return g.shared
	}
	if now := g.state.cfg.clock.Now(); !now.Before(g.retryAt) {
		g.retryAt = now.Add(g.retry) // this call tries the shared store again
		return g.shared
	}
	return g.local
}

// usable reports whether st may be called now: a shared store that is down
// is left alone.
func (g *storeGuard) usable(st Store) bool {
	if g.own || st != g.shared {
		return true
	}
	return !g.isDown()
}

// isDown reports whether the shared store failed and the fallback is in use.
func (g *storeGuard) isDown() bool {
	if g.own {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.down
}

// fallback returns the local store.
func (g *storeGuard) fallback() Store {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.local
}

// call runs f against st within the timeout and notes whether the shared
// store answered. An error that ctx caused is returned and notes nothing.
func (g *storeGuard) call(ctx context.Context, st Store, f func(context.Context, Store) error) error {
	if g.own || st != g.shared {
		return f(ctx, st)
	}
	tctx, cancel := context.WithTimeout(ctx, g.timeout)
	err := f(tctx, st)
	cancel()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	g.mu.Lock()
	changed := g.down != (err != nil)
	g.down = err != nil
	if err != nil {
		g.retryAt = g.state.cfg.clock.Now().Add(g.retry)
	}
	if changed && err != nil {
		// A fresh fallback, so that its buckets start from what is known
		// now rather than from what an earlier outage left.
		g.local = NewMemoryStore(g.state.cfg.clock)
	}
	g.mu.Unlock()
	if changed {
		g.state.storeChanged(err != nil, err, g.share, g.retry)
	}
	return err
}

// scaled returns a as the fallback is asked it: limits and start levels at
// the fallback's share, and no settlements (they belong to the shared
// store).
func (g *storeGuard) scaled(a Admission) Admission {
	a.Settle = nil
	for d, n := range a.Limits {
		if n > 0 {
			a.Limits[d] = max(int64(math.Ceil(float64(n)*g.share)), 1)
			a.Start[d] *= g.share
		}
	}
	return a
}

// admit asks st to admit a; when the shared store fails, the fallback at
// once. It returns the answer, the store that gave it and the limits it was
// given.
func (g *storeGuard) admit(ctx context.Context, st Store, name string, a Admission) (Admitted, Store, [NumDimensions]int64, error) {
	if !g.own && st != g.shared {
		a = g.scaled(a)
	}
	var res Admitted
	err := g.call(ctx, st, func(ctx context.Context, st Store) (err error) {
		res, err = st.Admit(ctx, name, a)
		return err
	})
	if err != nil && ctx.Err() == nil && !g.own && st == g.shared {
		st, a = g.fallback(), g.scaled(a)
		res, err = st.Admit(ctx, name, a)
	}
	return res, st, a.Limits, err
}

// limitsFor returns the limits to give st: the fallback's share of them.
func (g *storeGuard) limitsFor(st Store, l [NumDimensions]int64) [NumDimensions]int64 {
	if g.own || st == g.shared {
		return l
	}
	return g.scaled(Admission{Limits: l}).Limits
}

// storeChanged logs that the store given by WithStore failed (down) or
// answers again. The fallback gauge reads the guard itself.
func (s *State) storeChanged(down bool, err error, share float64, retry time.Duration) {
	if down {
		s.cfg.logger.Warn("tollgate: the shared store failed; pacing by a local budget at a share of each limit until it answers",
			"share", share, "retry", retry, "error", err)
		return
	}
	s.cfg.logger.Info("tollgate: the shared store answers again; pacing by it")
}

// storeSync is what a pool has to tell the Store that did not go yet.
type storeSync struct {
	// pending holds settlements not sent yet: they ride with the next
	// admission this process asks of the same store, or go on their own
	// when none is coming.
	pending []pendingSettlement
	// pause is a pause this process took, to put into the store so that
	// every Transport sharing it waits too.
	pause *pause
	// pauseSent is closed once the pause taken from pause to be sent is
	// in the store (or the store failed); nil while none is being sent.
	pauseSent chan struct{}
	// flushed is closed when the goroutine sending what is pending is
	// done; nil while none runs.
	flushed chan struct{}
	carry   []Settlement // a buffer for the settlements an admission carries
	// sending holds the settlements a flush is sending: until they are in
	// the store, an admission asked meanwhile carries their floors too (a
	// floor is a pull-down, the same applied twice), so that it is never
	// charged against a level a response already showed to be lower.
	sending []pendingSettlement
}

// A pendingSettlement is a settlement and the store it is for: the one
// that admitted the attempt.
type pendingSettlement struct {
	store Store
	s     Settlement
}

// queueSettlementLocked queues s for st.
func (p *pool) queueSettlementLocked(st Store, s Settlement) {
	p.store.pending = append(p.store.pending, pendingSettlement{st, s})
}

// takeSettlementsLocked returns the settlements that ride with an
// admission asked of st, and keeps the others; and the floors of those a
// flush is sending to st. The slice returned is the pool's to reuse: give
// it back with returnSettlementsLocked.
func (p *pool) takeSettlementsLocked(st Store) []Settlement {
	out := p.store.carry[:0]
	for _, ps := range p.store.sending {
		if ps.store == st && ps.s.HasFloor != ([NumDimensions]bool{}) {
			floors := ps.s
			floors.Charge = [NumDimensions]float64{}
			out = append(out, floors)
		}
	}
	kept := p.store.pending[:0]
	for _, ps := range p.store.pending {
		if ps.store == st {
			out = append(out, ps.s)
		} else {
			kept = append(kept, ps)
		}
	}
	clear(p.store.pending[len(kept):])
	p.store.pending, p.store.carry = kept, nil
	return out
}

// returnSettlementsLocked takes back a slice takeSettlementsLocked gave.
func (p *pool) returnSettlementsLocked(s []Settlement) {
	if cap(s) <= maxCarried {
		clear(s)
		p.store.carry = s[:0]
	}
}

// maxCarried bounds the buffer of settlements a pool keeps for reuse.
const maxCarried = 64

// kickFlushLocked starts a goroutine to send what is pending, unless one
// runs already, or an admission that will carry it is coming, or the store
// is the State's own: nothing outside this pool reads that store, so what
// it is owed rides with the pool's next admission, and the levels the pool
// shows are brought up to date at once (syncLocked).
func (p *pool) kickFlushLocked() {
	if p.store.flushed != nil || (len(p.store.pending) == 0 && p.store.pause == nil) {
		return
	}
	if p.store.pause == nil && (p.state.guard.own || p.admissionComingLocked()) {
		return
	}
	p.startFlushLocked()
}

// startFlushLocked starts the goroutine that sends what is pending.
func (p *pool) startFlushLocked() {
	p.store.flushed = make(chan struct{})
	go p.flush()
}

// flush sends what is pending until nothing is.
func (p *pool) flush() {
	g := p.state.guard
	for {
		p.mu.Lock()
		var pending []pendingSettlement
		if !p.admissionComingLocked() { // else they ride with it
			pending, p.store.pending = p.store.pending, nil
		}
		pz, sent := p.takePauseLocked()
		if len(pending) == 0 && pz == nil {
			close(p.store.flushed)
			p.store.flushed = nil
			p.mu.Unlock()
			return
		}
		p.store.sending = pending
		p.mu.Unlock()
		if pz != nil {
			p.sendPause(*pz, sent)
		}
		for _, ps := range pending {
			if !g.usable(ps.store) {
				continue // lost with a failing store, whose buckets refill
			}
			var levels Levels
			err := g.call(context.Background(), ps.store, func(ctx context.Context, st Store) (err error) {
				levels, err = st.Settle(ctx, p.name, ps.s)
				return err
			})
			if err == nil {
				p.mu.Lock()
				p.budget.mirror(p.state.cfg.clock.Now(), levels, !g.own && ps.store != g.shared)
				p.mu.Unlock()
			}
		}
		p.mu.Lock()
		p.store.sending = nil
		p.mu.Unlock()
	}
}

// Flush sends the Store what s owes it and has not sent yet (what the
// attempts that ended did not use, and the pauses s took) and returns once
// it is in, or with ctx's error when ctx is done first. What rides with an
// attempt waiting for admission goes with it, and attempts in flight
// settle when they end. Call it when a process stops, before it closes a
// shared Store's client (a redisstore's Redis client), so that the other
// processes get back what its last attempts did not use. As at any time,
// what a failing Store cannot take is given up (its buckets refill on
// their own), not returned as an error.
func (s *State) Flush(ctx context.Context) error {
	var err error
	s.eachPool(func(p *pool) {
		if err == nil {
			err = p.flushAll(ctx)
		}
	})
	return err
}

// flushAll sends what p owes the store, and waits for what is being sent.
func (p *pool) flushAll(ctx context.Context) error {
	for {
		p.mu.Lock()
		busy := p.store.flushed
		if busy == nil && (p.store.pause != nil || len(p.store.pending) > 0 && !p.admissionComingLocked()) {
			p.startFlushLocked()
			busy = p.store.flushed
		}
		if busy == nil {
			busy = p.store.pauseSent // a pause publishPause is sending
		}
		p.mu.Unlock()
		if busy == nil {
			return nil
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// publishPause puts the pause this process took, if any is waiting, into
// the store before the caller gets its answer; where a flush is sending it
// already, it waits until that is done.
func (p *pool) publishPause() {
	p.mu.Lock()
	pz, sent := p.takePauseLocked()
	if pz == nil {
		sent = p.store.pauseSent
	}
	p.mu.Unlock()
	switch {
	case pz != nil:
		p.sendPause(*pz, sent)
	case sent != nil:
		<-sent
	}
}

// takePauseLocked takes the pause waiting to be sent, if any, with the
// channel to close once it is (sendPause does).
func (p *pool) takePauseLocked() (*pause, chan struct{}) {
	pz := p.store.pause
	if pz == nil {
		return nil, nil
	}
	p.store.pause = nil
	sent := make(chan struct{})
	p.store.pauseSent = sent
	return pz, sent
}

// sendPause puts pz into the store, then closes sent.
func (p *pool) sendPause(pz pause, sent chan struct{}) {
	defer func() {
		p.mu.Lock()
		if p.store.pauseSent == sent {
			p.store.pauseSent = nil
		}
		p.mu.Unlock()
		close(sent)
	}()
	g := p.state.guard
	d := pz.until.Sub(p.state.cfg.clock.Now())
	if d <= 0 {
		return
	}
	st := g.pick()
	send := func(ctx context.Context, st Store) error { return st.Pause(ctx, p.name, d, pz.reason) }
	if err := g.call(context.Background(), st, send); err != nil && !g.own && st == g.shared {
		_ = send(context.Background(), g.fallback())
	}
}
