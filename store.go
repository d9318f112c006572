package tollgate

import (
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
// dimension whose limit is above zero. Only Admit creates a bucket: it
// starts at what the caller last knew of it (Admission.Start) or, when the
// caller knows nothing, full; Settle leaves a bucket the store does not
// have (lost, say, when a Redis restarted empty) to the next Admit. A
// bucket holds at most its limit and refills continuously at
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
	// its cost, or its Need where that is set (a cost above a bucket's
	// limit is capped at the limit, so it waits for a full bucket and takes
	// all of it). A store that ignores Need admits no sooner than the
	// caller asked; one that honours it admits sooner. Otherwise it reports in
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
	Limits [NumDimensions]int64
	// Cost per Dimension.
	Cost [NumDimensions]float64
	// Need, where above zero, is what a bucket must hold for the attempt to
	// be admitted instead of its Cost; the whole Cost is charged either
	// way, and the level may go below zero. It mirrors a server that
	// counts output as it is produced: it admits a request while any
	// output is left, and the request's output is taken as it comes.
	Need [NumDimensions]float64
	// Start, where HasStart is set, is the level a bucket the store does
	// not have starts at instead of full: what the caller last knew of it,
	// so that a store that lost its buckets does not hand out a full minute
	// while the server's own bucket is drained.
	Start    [NumDimensions]float64
	HasStart [NumDimensions]bool
	// MaxWait is the longest wait a store that grants ahead of time may
	// grant; zero grants only what fits now.
	MaxWait time.Duration
	// Keep is, per Dimension, what the attempt must leave in the bucket:
	// it fits when the bucket holds its cost plus Keep (the two capped
	// together at the limit, so that it still fits a full bucket), and is
	// charged its cost only. It is the headroom an attempt of a lower
	// priority leaves for Interactive ones (WithInteractiveHeadroom); zero
	// for most. A store that ignores it admits without the headroom.
	Keep [NumDimensions]float64
	// Settle holds settlements of earlier attempts, applied first, in order,
	// as Settle would, whatever the answer: one round trip for both.
	Settle []Settlement
}

// needed is what the bucket of dimension d must hold to admit a: its Need
// where set, else its Cost.
func (a *Admission) needed(d int) float64 {
	if a.Need[d] > 0 {
		return a.Need[d]
	}
	return a.Cost[d]
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
	At time.Time // the store's clock
	// Level per Dimension; NaN where the store keeps no bucket.
	Level [NumDimensions]float64
}

// Settlement is what Settle changes.
type Settlement struct {
	// Limits per minute, indexed by Dimension, as in Admission.
	Limits [NumDimensions]int64
	// Charge is added to what the attempt is charged, per Dimension:
	// positive takes more, negative gives back.
	Charge [NumDimensions]float64
	// Floor, where HasFloor is set, is the most the level could have been
	// at SentAt according to a response; the store lowers the level to
	// Floor plus the refill since SentAt, when it is above that.
	Floor    [NumDimensions]float64
	HasFloor [NumDimensions]bool
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
	buckets     [NumDimensions]bucket
	pausedUntil time.Time
	pauseReason string
}

// entry returns the entry of name, creating it; mu must be held.
func (m *memoryStore) entry(name string) *memoryEntry {
	e := m.names[name]
	if e == nil {
		e = &memoryEntry{}
		m.names[name] = e
	}
	return e
}

// admitLimits gives e a bucket for every known limit, a new one starting at
// a.Start where given; mu must be held.
func (e *memoryEntry) admitLimits(a Admission, now time.Time) {
	for d, l := range a.Limits {
		if b := &e.buckets[d]; l > 0 && b.limit != float64(l) {
			fresh := !b.known()
			b.setLimit(now, float64(l))
			if fresh && a.HasStart[d] && !math.IsNaN(a.Start[d]) {
				b.level = min(b.level, a.Start[d])
			}
		}
	}
}

func (e *memoryEntry) levels(now time.Time) Levels {
	l := Levels{At: now}
	for d := range e.buckets {
		l.Level[d] = math.NaN()
		if e.buckets[d].known() {
			l.Level[d] = e.buckets[d].levelAt(now)
		}
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
	e := m.entry(name)
	for _, s := range a.Settle {
		e.settle(s, now)
	}
	e.admitLimits(a, now)
	if left := e.pausedUntil.Sub(now); left > 0 {
		return Admitted{Paused: left, PauseReason: e.pauseReason, Levels: e.levels(now)}, nil
	}
	var wait time.Duration
	for d, l := range a.Limits {
		if l > 0 {
			need := a.needed(d)
			if k := a.Keep[d]; k > 0 && !math.IsInf(k, 1) {
				need += k // waitFor caps it at the limit
			}
			wait = max(wait, e.buckets[d].waitFor(now, need))
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
	if err := ctx.Err(); err != nil {
		return Levels{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	e := m.entry(name)
	e.settle(s, now)
	return e.levels(now), nil
}

// settle applies s to e; the store's mu must be held.
func (e *memoryEntry) settle(s Settlement, now time.Time) {
	for d, l := range s.Limits {
		b := &e.buckets[d]
		if l <= 0 || !b.known() {
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
	e := m.entry(name)
	if until := now.Add(d); until.After(e.pausedUntil) {
		e.pausedUntil, e.pauseReason = until, reason
	}
	return nil
}
