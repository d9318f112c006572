package tollgate

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// A pool is everything one Key's pool of limits holds, under one mutex:
// what the server said, the counters, the one pause every layer consults,
// the Budget layer's buckets and queue, the Breaker layer's circuit, and
// what waits to go to the Store. The layers reach it through methods; the
// lock guards arithmetic only, never a Store call or a user callback.
type pool struct {
	key   Key
	name  string // the Key's name in the Store
	state *State
	// own says the pool is an endpoint's own (count_tokens), not a model's:
	// it costs requests only, and WithLimits does not apply to it. unpaced
	// says no limit applies to its endpoint (batches, models, files).
	own, unpaced bool

	mu       sync.Mutex
	readings RateLimitHeaders // the newest value of every field, merged across responses
	counters Counters
	pause    pause
	budget   budgetState  // budget.go
	circuit  circuitState // breaker.go
	store    storeSync    // storesync.go

	setsOnce sync.Once
	sets     *poolSets // the attribute sets of the pool's metrics (metrics.go)
}

// Counters counts what the server answered for one Key.
type Counters struct {
	Attempts        int64 // attempts that got a response or a transport error
	RateLimited     int64 // 429 responses
	Overloaded      int64 // 529 responses
	ServerErrors    int64 // other 5xx responses
	TransportErrors int64 // attempts that got no response
}

func newPool(s *State, k Key, ep *endpoint) *pool {
	p := &pool{key: k, name: k.StoreName(), state: s}
	if ep != nil {
		p.own, p.unpaced = ep.pool != "", ep.unpaced
	}
	p.budget.init(&s.cfg, s.cfg.clock.Now(), !p.own)
	p.budget.output = dialectOf(k.Provider).output
	p.budget.outputSource = "provider"
	if a := s.cfg.budget.output; a != DetectOutputAccounting {
		p.budget.output, p.budget.outputSource = a, "option"
	}
	p.circuit.init(p)
	return p
}

// observe records one response's headers and status and, when the State
// has a Breaker layer, takes the pause the response asks for, if any, which
// it returns: as the headers are read, before anything else of the pool can
// admit another attempt. ctx and c are the attempt's.
func (p *pool) observe(ctx context.Context, c *call, r response, sentAt time.Time, answer *serverAnswer) *pause {
	p.mu.Lock()
	p.recordLocked(r.status, r.headers)
	var q *pause
	if p.state.pausing.Load() {
		q = p.pauseForLocked(r, sentAt, p.state.cfg.clock.Now(), answer)
		if q != nil {
			p.extendLocked(*q, false)
		}
	}
	p.unlock(ctx, c)
	return q
}

// recordLocked merges one response's headers into the readings and counts
// its status.
func (p *pool) recordLocked(status int, h RateLimitHeaders) {
	merged := &p.readings
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

	p.counters.Attempts++
	switch {
	case status == http.StatusTooManyRequests:
		p.counters.RateLimited++
	case status == 529:
		p.counters.Overloaded++
	case status >= 500:
		p.counters.ServerErrors++
	}
}

// recordTransportError counts an attempt that got no response.
func (p *pool) recordTransportError() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counters.Attempts++
	p.counters.TransportErrors++
}

// snapshot returns the pool's part of a Snapshot.
func (p *pool) snapshot(now time.Time) KeySnapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return KeySnapshot{
		Key:      p.key,
		Headers:  p.readings,
		Counters: p.counters,
		Budget:   p.budgetSnapshotLocked(now),
		Breaker:  p.breakerSnapshotLocked(now),
	}
}

// budgetSnapshotLocked is the Budget layer's view of the Key at now.
func (p *pool) budgetSnapshotLocked(now time.Time) BudgetSnapshot {
	b := &p.budget
	used := b.window.sum(now)
	snap := BudgetSnapshot{
		Limits:            limitsOf(b.limits),
		ColdStart:         !b.limitsKnown() && !b.unpaced,
		InFlight:          len(b.inFlight),
		Waiting:           len(b.queue),
		WaitingByPriority: b.waiting,
		Tenants:           p.tenantsSnapshotLocked(now),
		Headroom:          p.keptLocked(now),
		BytesPerToken:     b.ratio.mean,
		Tier:              tierOf(p.key.Provider, limitsOf(b.limits)),
		Fallback:          p.state.guard.isDown(),
		Output:            b.output,
		OutputSource:      b.outputSource,
		CachedPrefixes:    b.cache.size(),
	}
	if b.produced.samples > 0 {
		snap.ProducedEstimate = b.produced.mean
	} else {
		snap.ProducedEstimate = producedPrior
	}
	for d := range snap.Dimensions {
		db := DimensionBudget{Limit: b.limits[d], Source: b.sources[d], Used: used[d], Reserved: b.held[d]}
		if db.Limit > 0 {
			db.Level = b.levelNow(now, d)
			db.Utilization = float64(used[d]) / float64(db.Limit)
		}
		snap.Dimensions[d] = db
	}
	return snap
}
