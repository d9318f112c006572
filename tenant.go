package tollgate

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"slices"
	"time"
	"unicode/utf8"
)

// This file is the fair share among tenants: within one priority class,
// a Key's waiting attempts are ordered by start-time fair queuing (SFQ) on
// the tokens each tenant actually used, weighted.
//
// Each tenant has, per class, a virtual finish tag F: where the work of it
// the Key admitted ends in virtual time; and each class a virtual time V:
// the tag of the attempt it admitted last. A tenant's waiting attempts, in
// arrival order, are tagged max(V, F) + k·c/w for the k-th (from 0), c being
// what its attempts cost lately and w its weight; attempts go in the order
// of their tags. Admitting one moves V to its tag and F to that tag plus
// c/w; when it settles, F is corrected by what it actually used (a 429 or a
// failure uses nothing), so the shares are of tokens used, not of calls.
// Tags are worked out again whenever the order is needed, so that a
// correction, or a better estimate of c, counts for the attempts already
// waiting. A tenant that was idle comes back at V, with no credit banked
// (F is behind V); one that keeps many attempts waiting gets no more than
// its weight's share however many it has. Costs are in minutes of the Key's
// tightest token limit (the largest share of a token limit an attempt
// takes), so that a tenant's share of the binding limit follows its weight.

// ContextWithTenant returns a copy of ctx in which the calls made belong to
// the tenant name, keeping the priority ctx carries. Within a priority
// class, tenants share a Key's limits by weighted fair queuing on the tokens
// they use (see WithTenantWeights): a tenant gets its weight's share of the
// binding limit while it has attempts waiting, however many agents it runs,
// and the share of a tenant with none waiting goes to the others at once. A
// call without a tenant belongs to the tenant "". Any name works, empty or
// long: a name longer than 256 bytes is known (in Snapshot and on spans) by
// its first 200 bytes and a hash of the whole. Like the priority, the
// tenant reaches the Budget layer through the official SDKs and holds for
// every attempt of the call.
func ContextWithTenant(ctx context.Context, name string) context.Context {
	c := classFrom(ctx)
	c.tenant = name
	return context.WithValue(ctx, classKey{}, c)
}

// TenantFromContext returns the tenant ctx carries: "" when it carries
// none.
func TenantFromContext(ctx context.Context) string { return classFrom(ctx).tenant }

// DefaultTenantWeight is the weight of a tenant WithTenantWeights names
// not, or names with an invalid weight.
const DefaultTenantWeight = 1.0

// WithTenantWeights sets the weights of tenants (by the name given to
// ContextWithTenant; "" is the tenant of calls without one): while they all
// have attempts waiting, tenants share a Key's limits in proportion to their
// weights (2 gets twice what 1 gets). A tenant not in the map, and one whose
// weight is zero, negative, NaN or infinite, weighs DefaultTenantWeight, so
// by default tenants share equally. The map is copied.
func WithTenantWeights(weights map[string]float64) Option {
	return func(c *config) {
		valid := make(map[string]float64, len(weights))
		for name, w := range weights {
			if w > 0 && !math.IsInf(w, 1) {
				valid[name] = w
			}
		}
		c.budget.weights = valid
	}
}

// weightOf returns the weight of the tenant name.
func (b *budgetConfig) weightOf(name string) float64 {
	if w, ok := b.weights[name]; ok {
		return w
	}
	return DefaultTenantWeight
}

// TenantSnapshot is what the Budget layer knows of one tenant of a Key.
type TenantSnapshot struct {
	// Name is the tenant's name ("" for calls with none), shortened when
	// longer than 256 bytes (see ContextWithTenant).
	Name   string
	Weight float64
	// Waiting is how many of its attempts wait for admission, InFlight how
	// many are admitted and not yet settled.
	Waiting, InFlight int
	// Used is what its settled attempts consumed of each limit in the last
	// minute (in 10-second steps), by Dimension.
	Used [NumDimensions]int64
}

// Tenants are kept while they have attempts waiting or in flight, and
// forgotten once idle for tenantForget; past maxTenants per Key, the idle
// ones longest idle are forgotten first. A forgotten tenant comes back as a
// new one, which is what an idle tenant is owed anyway.
const (
	tenantForget     = 2 * time.Minute
	tenantSweepEvery = 10 * time.Second
	maxTenants       = 4096
	// Names longer than maxTenantName bytes are known by their first
	// tenantNamePrefix bytes and a hash of the whole.
	maxTenantName    = 256
	tenantNamePrefix = 200
)

// tenantName returns the name a tenant is known by.
func tenantName(name string) string {
	if len(name) <= maxTenantName {
		return name
	}
	cut := tenantNamePrefix
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	sum := sha256.Sum256([]byte(name))
	return name[:cut] + "…" + hex.EncodeToString(sum[:8])
}

// tenantState is one tenant of a pool, guarded by the pool's mutex.
type tenantState struct {
	name   string
	weight float64
	// finish is the virtual finish tag per class (indexed by rank) of its
	// attempts admitted.
	finish            [NumPriorities]float64
	waiting, inFlight int
	ahead             [NumPriorities]int // retagLocked's count of its attempts tagged so far
	// cost is what its attempts cost lately, a moving average of what they
	// used, in the fair-share unit; the provisional cost of the next one.
	cost    float64
	hasCost bool
	used    tenantWindow
	active  time.Time // when an attempt of it last queued, was admitted or settled
}

// fairState is a pool's part of the fair share.
type fairState struct {
	tenants map[string]*tenantState
	// virtual is the virtual time per class (indexed by rank): the tag of
	// the attempt admitted last.
	virtual [NumPriorities]float64
	// cost is what attempts of the pool cost lately, for a tenant that has
	// no cost of its own yet.
	cost    float64
	hasCost bool
	sweptAt time.Time
}

// Fair-share constants.
const (
	// costWeight is the weight of the newest attempt in the moving averages
	// of what attempts cost.
	costWeight = 0.2
	// defaultFairCost is an attempt's provisional cost before any attempt
	// of the pool settled: a hundredth of a minute of the limit.
	defaultFairCost = 0.01
	// rawTokensScale is the unit of costs before any token limit is known:
	// a minute of a 100,000-token limit.
	rawTokensScale = 100_000
)

// tenantLocked returns the tenant name (already shortened) of weight w,
// creating it.
func (p *pool) tenantLocked(name string, weight float64, now time.Time) *tenantState {
	f := &p.budget.fair
	if t := f.tenants[name]; t != nil {
		return t
	}
	p.sweepTenantsLocked(now)
	if f.tenants == nil {
		f.tenants = make(map[string]*tenantState)
	}
	t := &tenantState{name: name, weight: weight, active: now}
	f.tenants[name] = t
	return t
}

// sweepTenantsLocked forgets the tenants idle for tenantForget, at most
// every tenantSweepEvery; and, past maxTenants, the idle ones longest idle.
func (p *pool) sweepTenantsLocked(now time.Time) {
	f := &p.budget.fair
	full := len(f.tenants) >= maxTenants
	if !full && now.Sub(f.sweptAt) < tenantSweepEvery {
		return
	}
	f.sweptAt = now
	var idle []*tenantState
	for name, t := range f.tenants {
		if t.waiting > 0 || t.inFlight > 0 {
			continue
		}
		if now.Sub(t.active) >= tenantForget {
			delete(f.tenants, name)
		} else if full {
			idle = append(idle, t)
		}
	}
	if excess := len(f.tenants) - maxTenants + 1; excess > 0 {
		slices.SortFunc(idle, func(a, b *tenantState) int { return a.active.Compare(b.active) })
		for _, t := range idle[:min(excess, len(idle))] {
			delete(f.tenants, t.name)
		}
	}
}

// provisionalLocked is what t's next attempt is taken to cost until it
// settles: what its attempts used lately, else what the pool's did, else
// defaultFairCost.
func (p *pool) provisionalLocked(t *tenantState) float64 {
	f := &p.budget.fair
	switch {
	case t.hasCost:
		return t.cost
	case f.hasCost:
		return f.cost
	}
	return defaultFairCost
}

// retagLocked brings the fair-share tag of every waiting attempt up to date:
// the k-th waiting attempt (from 0) of a tenant in a class, in the queue's
// order (arrival order, for one tenant and class), is tagged max(V, F) +
// k·c/w.
func (p *pool) retagLocked() {
	f := &p.budget.fair
	q := p.budget.queue
	for _, r := range q {
		r.waiter.tenant.ahead = [NumPriorities]int{}
	}
	for _, r := range q {
		w := &r.waiter
		t := w.tenant
		k := t.ahead[w.rank]
		t.ahead[w.rank]++
		w.tag = max(f.virtual[w.rank], t.finish[w.rank]) + float64(k)*p.provisionalLocked(t)/t.weight
	}
}

// servedLocked notes that r was admitted: its class's virtual time moves
// to its tag, and its tenant's finish tag past it by what it is taken to
// cost.
func (p *pool) servedLocked(r *reservation, now time.Time) {
	w := &r.waiter
	f := &p.budget.fair
	t := w.tenant
	p.budget.waiting.add(Interactive-Priority(w.rank), -1)
	f.virtual[w.rank] = max(f.virtual[w.rank], w.tag)
	w.fairCost = p.provisionalLocked(t)
	t.finish[w.rank] = max(t.finish[w.rank], w.tag) + w.fairCost/t.weight
	t.waiting--
	t.inFlight++
	t.active = now
	w.served = true
}

// unqueuedLocked notes that r left the queue without being admitted.
func (p *pool) unqueuedLocked(r *reservation) {
	w := &r.waiter
	p.budget.waiting.add(Interactive-Priority(w.rank), -1)
	w.tenant.waiting--
}

// fairCostLocked is what charges of cost count for the fair share: the
// largest fraction of a token limit they take (requests where only
// requests are limited; raw tokens before any limit is known).
func (p *pool) fairCostLocked(cost [NumDimensions]float64) float64 {
	b := &p.budget
	share, known := 0.0, false
	for _, d := range [...]Dimension{Tokens, InputTokens, OutputTokens} {
		if l := b.limits[d]; l > 0 {
			share, known = max(share, cost[d]/float64(l)), true
		}
	}
	switch {
	case known:
		return share
	case b.limits[Requests] > 0:
		return cost[Requests] / float64(b.limits[Requests])
	}
	return (cost[InputTokens] + cost[OutputTokens]) / rawTokensScale
}

// tenantSettled is told when an admitted attempt's exchange is done, after
// its reservation was settled: its tenant's tag is corrected to what it
// actually used, which is added to the tenant's use.
type tenantSettled reservation

func (s *tenantSettled) exchanged(ex *exchange) {
	r := (*reservation)(s)
	r.exchanged(ex) // settle.go
	w := &r.waiter
	t := w.tenant
	if t == nil {
		return
	}
	p := r.p
	p.mu.Lock()
	now := p.state.cfg.clock.Now()
	if w.served {
		used := p.fairCostLocked(r.charged)
		t.finish[w.rank] += (used - w.fairCost) / t.weight
		t.inFlight--
		t.active = now
		t.used.add(now, r.charged)
		f := &p.budget.fair
		t.cost, t.hasCost = average(t.cost, used, t.hasCost), true
		f.cost, f.hasCost = average(f.cost, used, f.hasCost), true
		w.served = false
		if len(p.budget.queue) > 0 {
			p.orderLocked(now) // the tenant's waiting attempts move with its tag
		}
	}
	p.mu.Unlock()
}

// average folds x into the moving average avg (x itself when there was
// none).
func average(avg, x float64, had bool) float64 {
	if !had {
		return x
	}
	return avg + costWeight*(x-avg)
}

// tenantWindow sums what a tenant used over the last minute, in 10-second
// slots.
type tenantWindow struct {
	slots [6]tenantSlot
}

type tenantSlot struct {
	at   int64 // the slot's start, in Unix tens of seconds
	used [NumDimensions]float64
}

const tenantSlotSeconds = 10

func (tw *tenantWindow) add(now time.Time, charged [NumDimensions]float64) {
	at := now.Unix() / tenantSlotSeconds
	s := &tw.slots[at%int64(len(tw.slots))]
	if s.at != at {
		*s = tenantSlot{at: at}
	}
	for d, n := range charged {
		s.used[d] += max(n, 0)
	}
}

func (tw *tenantWindow) sum(now time.Time) (total [NumDimensions]int64) {
	at := now.Unix() / tenantSlotSeconds
	for i := range tw.slots {
		if s := &tw.slots[i]; s.at > at-int64(len(tw.slots)) && s.at <= at {
			for d, n := range s.used {
				total[d] += int64(math.Round(n))
			}
		}
	}
	return total
}

// tenantsSnapshotLocked returns the tenants of the pool, by name.
func (p *pool) tenantsSnapshotLocked(now time.Time) []TenantSnapshot {
	f := &p.budget.fair
	if len(f.tenants) == 0 {
		return nil
	}
	out := make([]TenantSnapshot, 0, len(f.tenants))
	for _, t := range f.tenants {
		out = append(out, TenantSnapshot{Name: t.name, Weight: t.weight, Waiting: t.waiting, InFlight: t.inFlight,
			Used: t.used.sum(now)})
	}
	slices.SortFunc(out, func(a, b TenantSnapshot) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
