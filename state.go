package tollgate

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// State is what the layers of one Transport share: the configuration and
// one record per Key (a pool of limits) holding what the server said, the
// counters, the budget, the breaker and the pause. Users read it with
// Snapshot. It is safe for concurrent use.
type State struct {
	cfg    config
	guard  *storeGuard // where bucket levels and pauses live
	notify notifier    // runs the user's callbacks, in order, on a goroutine of its own

	pools      sync.Map // Key → *pool
	poolsCount atomic.Int32

	// families caches the model family of each (provider, model) seen: a
	// fleet uses a handful of models, and naming one's family is a regexp.
	families     sync.Map // Key{provider, model} → Key{provider, family}
	familiesSize atomic.Int32

	telOnce sync.Once
	tel     *telemetry // the Trace layer's instruments, made on first use

	// pausing says a Breaker layer of this State exists: the pauses
	// responses ask for are then taken as their headers are read.
	pausing atomic.Bool
	// budgeting says a Budget layer of this State exists: it paces a limit
	// a response shows short (it pulls its levels down to what remains and
	// its queue waits for the refill, in order), so the breaker takes no
	// refill pause of its own for a success.
	budgeting atomic.Bool
}

// maxCachedFamilies bounds the cache, so that requests naming ever new
// models cannot grow it without end.
const maxCachedFamilies = 1024

// NewState returns a State with the given options, for composing the
// exported layers by hand; New does this for you.
func NewState(opts ...Option) *State {
	s := &State{cfg: newConfig(opts)}
	s.guard = newStoreGuard(s)
	return s
}

func orNewState(s *State) *State {
	if s == nil {
		return NewState()
	}
	return s
}

// keyOf returns the Key of a model's pool of limits for an account.
func (s *State) keyOf(p Provider, model, account string) Key {
	in := Key{Provider: p, Family: model}
	if k, ok := s.families.Load(in); ok {
		k := k.(Key)
		k.Account = account
		return k
	}
	k := Key{Provider: p, Family: s.cfg.modelFamily(p, model)}
	if s.familiesSize.Load() < maxCachedFamilies {
		if _, loaded := s.families.LoadOrStore(in, k); !loaded {
			s.familiesSize.Add(1)
		}
	}
	k.Account = account
	return k
}

// poolOf returns the pool of k, creating it for a call to ep (nil: an
// endpoint the table does not know).
func (s *State) poolOf(k Key, ep *endpoint) *pool {
	if p, ok := s.pools.Load(k); ok {
		return p.(*pool)
	}
	p, loaded := s.pools.LoadOrStore(k, newPool(s, k, ep))
	if !loaded {
		s.poolsCount.Add(1)
	}
	return p.(*pool)
}

// eachPool calls f for every pool.
func (s *State) eachPool(f func(*pool)) {
	s.pools.Range(func(_, p any) bool {
		f(p.(*pool))
		return true
	})
}

// Snapshot is a copy of a State at one moment.
type Snapshot struct {
	Taken time.Time
	Keys  []KeySnapshot // sorted by provider, then family, then account
}

// KeySnapshot is what is known about one pool of limits.
type KeySnapshot struct {
	Key Key
	// Headers holds, for every field, the newest value any response carried.
	Headers  RateLimitHeaders
	Counters Counters
	// Budget is the Budget layer's view: effective limits, bucket levels,
	// queue, learned tokenizer ratio and tier.
	Budget BudgetSnapshot
	// Breaker is the Breaker layer's view: state, pause deadline and why.
	Breaker BreakerSnapshot
}

// Key returns the snapshot of k, and whether the State knew k. A k with an
// empty Account matches the first Key of its provider and family, whatever
// its account.
func (s Snapshot) Key(k Key) (KeySnapshot, bool) {
	for _, ks := range s.Keys {
		if ks.Key == k || (k.Account == "" && ks.Key.Provider == k.Provider && ks.Key.Family == k.Family) {
			return ks, true
		}
	}
	return KeySnapshot{}, false
}

// Snapshot returns a copy of what s knows now. It takes each pool's lock in
// turn, for as long as copying it takes; it never waits for the network.
func (s *State) Snapshot() Snapshot {
	now := s.cfg.clock.Now()
	snap := Snapshot{Taken: now, Keys: make([]KeySnapshot, 0, s.poolsCount.Load())}
	s.eachPool(func(p *pool) { snap.Keys = append(snap.Keys, p.snapshot(now)) })
	slices.SortFunc(snap.Keys, func(a, b KeySnapshot) int {
		return cmp.Or(cmp.Compare(a.Key.Provider, b.Key.Provider), cmp.Compare(a.Key.Family, b.Key.Family),
			cmp.Compare(a.Key.Account, b.Key.Account))
	})
	return snap
}

// A notifier runs the user's callbacks (breaker changes, utilization
// alerts) one at a time, in the order they were posted, on a goroutine of
// its own that lives while there is work: a callback that blocks delays
// later callbacks, never a request or a body read.
type notifier struct {
	mu      sync.Mutex
	queue   []func()
	running bool
	dropped int // callbacks dropped because the queue was full
}

// maxNotifications bounds the callbacks waiting to run; past it new ones
// are dropped (a callback that never returns must not grow memory without
// end).
const maxNotifications = 4096

func (n *notifier) post(f func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.queue) >= maxNotifications {
		n.dropped++
		return
	}
	n.queue = append(n.queue, f)
	if !n.running {
		n.running = true
		go n.run()
	}
}

func (n *notifier) run() {
	for {
		n.mu.Lock()
		if len(n.queue) == 0 {
			n.running = false
			n.queue = nil
			n.mu.Unlock()
			return
		}
		f := n.queue[0]
		n.queue[0] = nil
		n.queue = n.queue[1:]
		n.mu.Unlock()
		f()
	}
}
