package tollgate

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// State is what the layers of one Transport share: the configuration and,
// per Key, the latest rate-limit readings and counters. Layers read and write
// it through small methods; users read it with Snapshot. It is safe for
// concurrent use.
type State struct {
	cfg      config
	budget   *budget   // the Budget layer's buckets and queues, per Key
	breakers *breakers // the Breaker layer's circuit breakers and pauses, per Key

	mu   sync.Mutex
	keys map[Key]*keyState

	// families caches the model family of each (provider, model) seen: a
	// fleet uses a handful of models, and naming one's family is a regexp.
	families     sync.Map // Key{provider, model} → Key{provider, family}
	familiesSize atomic.Int32
}

// maxCachedFamilies bounds the cache, so that requests naming ever new
// models cannot grow it without end.
const maxCachedFamilies = 1024

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

type keyState struct {
	headers  RateLimitHeaders // the newest known value of every field, merged across responses
	counters Counters
}

// Counters counts what the server answered for one Key.
type Counters struct {
	Attempts        int64 // attempts that got a response or a transport error
	RateLimited     int64 // 429 responses
	Overloaded      int64 // 529 responses
	ServerErrors    int64 // other 5xx responses
	TransportErrors int64 // attempts that got no response
}

// NewState returns a State with the given options, for composing the
// exported layers by hand; New does this for you.
func NewState(opts ...Option) *State {
	s := &State{cfg: newConfig(opts), keys: make(map[Key]*keyState)}
	s.budget = newBudget(&s.cfg, newStoreGuard(&s.cfg, s.storeChanged))
	s.breakers = newBreakers(&s.cfg)
	s.breakers.trace = s.traceBreakerChange
	s.breakers.publish = s.budget.publishPause
	s.budget.onPause = func(ctx context.Context, k Key, d time.Duration, reason string) error {
		return s.breakers.circuit(k).shared(ctx, d, reason)
	}
	return s
}

func orNewState(s *State) *State {
	if s == nil {
		return NewState()
	}
	return s
}

// key returns the entry for k, creating it; s.mu must be held.
func (s *State) key(k Key) *keyState {
	ks := s.keys[k]
	if ks == nil {
		ks = &keyState{}
		s.keys[k] = ks
	}
	return ks
}

// observe records one response's headers and status for k.
func (s *State) observe(k Key, status int, h RateLimitHeaders) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.key(k)
	merged := &ks.headers
	for d := range merged.Limits {
		merged.Limits[d] = merged.Limits[d].merge(h.Limits[d])
	}
	if h.Provider != "" {
		merged.Provider = h.Provider
	}
	merged.Observed = h.Observed
	merged.RetryAfter, merged.HasRetryAfter = h.RetryAfter, h.HasRetryAfter
	merged.ShouldRetry = h.ShouldRetry
	merged.RequestID = h.RequestID

	ks.counters.Attempts++
	switch {
	case status == http.StatusTooManyRequests:
		ks.counters.RateLimited++
	case status == 529:
		ks.counters.Overloaded++
	case status >= 500:
		ks.counters.ServerErrors++
	}
}

func (s *State) recordTransportError(k Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.key(k).counters
	c.Attempts++
	c.TransportErrors++
}

// Snapshot is a copy of a State at one moment.
type Snapshot struct {
	Taken time.Time
	Keys  []KeySnapshot // sorted by provider, then family
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

// Snapshot returns a copy of what s knows now.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Taken: s.cfg.clock.Now(), Keys: make([]KeySnapshot, 0, len(s.keys))}
	for k, ks := range s.keys {
		snap.Keys = append(snap.Keys, KeySnapshot{Key: k, Headers: ks.headers, Counters: ks.counters})
	}
	// A Key no response has come for yet may be waiting, or paused by
	// another Transport sharing the store.
	for _, k := range append(s.budget.known(), s.breakers.known()...) {
		if _, seen := s.keys[k]; !seen && !slices.ContainsFunc(snap.Keys, func(ks KeySnapshot) bool { return ks.Key == k }) {
			snap.Keys = append(snap.Keys, KeySnapshot{Key: k})
		}
	}
	for i := range snap.Keys {
		snap.Keys[i].Budget = s.budget.snapshot(snap.Keys[i].Key, snap.Taken)
		snap.Keys[i].Breaker = s.breakers.snapshot(snap.Keys[i].Key, snap.Taken)
	}
	slices.SortFunc(snap.Keys, func(a, b KeySnapshot) int {
		return cmp.Or(cmp.Compare(a.Key.Provider, b.Key.Provider), cmp.Compare(a.Key.Family, b.Key.Family),
			cmp.Compare(a.Key.Account, b.Key.Account))
	})
	return snap
}
