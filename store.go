package tollgate

import (
	"cmp"
	"context"
	"math"
	"sync"
	"time"
)

// A Store holds the bucket levels of every Key's budget and the deadline of
// its breaker's pause, so that Transports in many processes can share one
// account's limits. The default is an in-memory store of the Transport's
// own (NewMemoryStore); WithStore selects another, such as package
// redisstore's, which shares them through Redis.
//
// A Store does not know what limits are: every call brings the limits its
// caller knows, indexed by Dimension, and a bucket is kept for each
// dimension whose limit is above zero. A bucket the store has not seen
// starts full. A bucket holds at most its limit and refills continuously at
// its limit per minute; its level may go below zero, a debt that refill pays
// off. Each name is an independent set of buckets (the core names one per
// API key, provider and model family: Key.StoreName). Times are the store's
// own clock: a store shared by processes must use one clock for all of them
// (Redis's TIME), so that their clocks' skew does not matter.
//
// Every method must return promptly once ctx is done. A method that returns
// an error changed nothing the caller can rely on: the core then stops using
// the store for a while and falls back to a local budget (WithStoreFallback).
// Implementations must be safe for concurrent use.
type Store interface {
	// Admit charges one attempt's cost to the buckets of name, all of them
	// or none, atomically. It grants the attempt when every bucket covers
	// its cost (a cost above a bucket's limit is capped at the limit, so it
	// waits for a full bucket and takes all of it). Otherwise it reports in
	// Wait how long until the cost would fit at the current refill, and may
	// grant the attempt ahead of time when that wait is at most a.MaxWait:
	// it then charges the cost at once, leaving the levels in debt, and the
	// caller waits out Wait before sending, so that one call settles a
	// place in line. While a pause is in force (Pause) it grants nothing and
	// reports the time left in Paused.
	Admit(ctx context.Context, name string, a Admission) (Admitted, error)
	// Settle changes what an admitted attempt is charged by s.Charge and
	// pulls levels down to what a response reported (s.Floor). A level is
	// never raised above its limit.
	Settle(ctx context.Context, name string, s Settlement) (Levels, error)
	// Pause makes every Admit of name wait until d from now. A pause that
	// ends sooner than the one in force changes nothing.
	Pause(ctx context.Context, name string, d time.Duration, reason string) error
}

// Admission is what Admit asks for.
type Admission struct {
	// Limits per minute, indexed by Dimension; a dimension of zero is
	// neither checked nor charged.
	Limits [numDimensions]int64
	// Cost per Dimension.
	Cost [numDimensions]float64
	// MaxWait is the longest wait a store that grants ahead of time may
	// grant; zero grants only what fits now.
	MaxWait time.Duration
	// Settle holds settlements of earlier attempts, applied first, in order,
	// as Settle would, whatever the answer: one round trip for both.
	Settle []Settlement
}

// Admitted is Admit's answer.
type Admitted struct {
	// Granted reports that the cost was charged. The attempt may be sent
	// after Wait.
	Granted bool
	// Wait is, for a granted attempt, how long it must wait before it is
	// sent (zero unless it was granted ahead of time); otherwise how long
	// until its cost would fit at the current refill.
	Wait time.Duration
	// Paused is how long the pause in force lasts still; zero when none is.
	Paused      time.Duration
	PauseReason string
	// Levels are the levels after the charge.
	Levels Levels
}

// Levels are the levels of one name's buckets at one moment.
type Levels struct {
	At    time.Time              // the store's clock
	Level [numDimensions]float64 // per Dimension; meaningless where the limit is zero
}

// Settlement is what Settle changes.
type Settlement struct {
	// Limits per minute, indexed by Dimension, as in Admission.
	Limits [numDimensions]int64
	// Charge is added to what the attempt is charged, per Dimension:
	// positive takes more, negative gives back.
	Charge [numDimensions]float64
	// Floor, where HasFloor is set, is the most the level could have been
	// at SentAt according to a response; the store lowers the level to
	// Floor plus the refill since SentAt, when it is above that.
	Floor    [numDimensions]float64
	HasFloor [numDimensions]bool
	// SentAt is when the attempt whose response reported Floor was sent,
	// on the store's clock (its Admitted.Levels.At plus its Wait).
	SentAt time.Time
}

// NewMemoryStore returns a Store that keeps everything in this process, on
// the given clock (nil means the system clock). It is every Transport's
// default, one per Transport; give one to several Transports with WithStore
// to make them share their limits. It never grants ahead of time.
func NewMemoryStore(clock Clock) Store {
	if clock == nil {
		clock = systemClock{}
	}
	return &memoryStore{clock: clock, names: make(map[string]*memoryEntry)}
}

type memoryStore struct {
	clock Clock
	mu    sync.Mutex
	names map[string]*memoryEntry
}

type memoryEntry struct {
	buckets     [numDimensions]bucket
	pausedUntil time.Time
	pauseReason string
}

// entry returns the entry of name with a bucket for every known limit; mu
// must be held.
func (m *memoryStore) entry(name string, limits [numDimensions]int64, now time.Time) *memoryEntry {
	e := m.names[name]
	if e == nil {
		e = &memoryEntry{}
		m.names[name] = e
	}
	for d, l := range limits {
		if l > 0 && e.buckets[d].limit != float64(l) {
			e.buckets[d].setLimit(now, float64(l))
		}
	}
	return e
}

func (e *memoryEntry) levels(now time.Time) Levels {
	l := Levels{At: now}
	for d := range e.buckets {
		l.Level[d] = e.buckets[d].levelAt(now)
	}
	return l
}

func (m *memoryStore) Admit(ctx context.Context, name string, a Admission) (Admitted, error) {
	if err := ctx.Err(); err != nil {
		return Admitted{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	e := m.entry(name, a.Limits, now)
	for _, s := range a.Settle {
		e.settle(s, now)
	}
	if left := e.pausedUntil.Sub(now); left > 0 {
		return Admitted{Paused: left, PauseReason: e.pauseReason, Levels: e.levels(now)}, nil
	}
	var wait time.Duration
	for d, l := range a.Limits {
		if l > 0 {
			wait = max(wait, e.buckets[d].waitFor(now, a.Cost[d]))
		}
	}
	if wait > 0 {
		return Admitted{Wait: wait, Levels: e.levels(now)}, nil
	}
	for d, l := range a.Limits {
		if b := &e.buckets[d]; l > 0 {
			b.take(now, min(a.Cost[d], b.limit))
		}
	}
	return Admitted{Granted: true, Levels: e.levels(now)}, nil
}

func (m *memoryStore) Settle(ctx context.Context, name string, s Settlement) (Levels, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	e := m.entry(name, s.Limits, now)
	e.settle(s, now)
	return e.levels(now), nil
}

// settle applies s to e; the store's mu must be held.
func (e *memoryEntry) settle(s Settlement, now time.Time) {
	for d, l := range s.Limits {
		b := &e.buckets[d]
		if l <= 0 {
			continue
		}
		if b.limit != float64(l) {
			b.setLimit(now, float64(l))
		}
		switch n := s.Charge[d]; {
		case n > 0:
			b.take(now, n)
		case n < 0:
			b.give(now, -n)
		}
		if s.HasFloor[d] && !math.IsNaN(s.Floor[d]) {
			refill := b.limit * max(now.Sub(s.SentAt), 0).Minutes()
			b.pullDown(now, min(b.limit, s.Floor[d]+refill))
		}
	}
}

func (m *memoryStore) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	e := m.entry(name, [numDimensions]int64{}, now)
	if until := now.Add(d); until.After(e.pausedUntil) {
		e.pausedUntil, e.pauseReason = until, reason
	}
	return nil
}

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
// given by WithStoreFallback; it logs the change once (WithLogger), records
// it in the tollgate.store.fallback gauge, and after WithStoreFallback's
// retry interval tries the store again with the next admission, returning to
// it when it answers. Attempts admitted by the store that finish meanwhile
// are not reported to it: its buckets refill on their own.
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
	shared   Store
	local    Store // the fallback; nil when shared is the State's own memory store
	timeout  time.Duration
	share    float64
	retry    time.Duration
	clock    Clock
	onChange func(down bool, err error) // logs and records the change

	mu      sync.Mutex
	down    bool
	retryAt time.Time
}

func newStoreGuard(cfg *config, onChange func(bool, error)) *storeGuard {
	sc := cfg.store
	if sc.store == nil {
		return &storeGuard{shared: NewMemoryStore(cfg.clock), clock: cfg.clock}
	}
	return &storeGuard{
		shared: sc.store, local: NewMemoryStore(cfg.clock), clock: cfg.clock, onChange: onChange,
		timeout: cmp.Or(sc.timeout, DefaultStoreTimeout),
		share:   cmp.Or(sc.share, DefaultStoreFallbackShare),
		retry:   cmp.Or(sc.retry, DefaultStoreRetry),
	}
}

// pick returns the store to use now: the shared one unless it failed within
// the retry interval.
func (g *storeGuard) pick() (st Store, shared bool) {
	if g.local == nil {
		return g.shared, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.down {
		return g.shared, true
	}
	if now := g.clock.Now(); !now.Before(g.retryAt) {
		g.retryAt = now.Add(g.retry) // this call tries the shared store again
		return g.shared, true
	}
	return g.local, false
}

// usable reports whether st may be called now: a shared store that is down
// is left alone.
func (g *storeGuard) usable(st Store) bool {
	if g.local == nil || st != g.shared {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.down
}

// call runs f against st within the timeout and notes whether the shared
// store answered. An error that ctx caused is returned and notes nothing.
func (g *storeGuard) call(ctx context.Context, st Store, f func(context.Context, Store) error) error {
	if g.local == nil || st != g.shared {
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
		g.retryAt = g.clock.Now().Add(g.retry)
	}
	g.mu.Unlock()
	if changed && g.onChange != nil {
		g.onChange(err != nil, err)
	}
	return err
}

// limits returns the limits to give st: the fallback's share of them.
func (g *storeGuard) limits(st Store, l [numDimensions]int64) [numDimensions]int64 {
	if st != g.local || g.local == nil {
		return l
	}
	for d, n := range l {
		if n > 0 {
			l[d] = max(int64(math.Ceil(float64(n)*g.share)), 1)
		}
	}
	return l
}

// isDown reports whether the shared store failed and the fallback is in use.
func (g *storeGuard) isDown() bool {
	if g.local == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.down
}
