package tollgate

import (
	"context"
	"math"
	"slices"
	"strconv"
	"time"
)

// This file is who goes first in the Budget layer's queue: the priority
// classes, the order of the queue, the headroom attempts below Interactive
// leave for the Interactive ones, and the aging that bounds every wait.
// What a tenant is owed within a class is tenant.go's.

// Priority is the class of a call: which of a Key's waiting attempts the
// Budget layer admits first. Set it per call with ContextWithPriority; a
// call whose context has none is Normal.
//
// An Interactive attempt is admitted before every waiting Normal and
// Background one, a Normal before every Background one; among attempts of
// one class, tenants share by weighted fair queuing (see ContextWithTenant),
// and one tenant's attempts go in arrival order. Two exceptions keep every
// wait bounded: an attempt the store has already granted is never
// overtaken (it has been charged), and an attempt that has waited
// WithPriorityAging is served in arrival order ahead of everything that
// arrived after it, whatever the classes. See the package documentation.
//
// Values other than the three constants count as Normal.
type Priority int

// The priority classes, most urgent first. Normal is the zero value.
const (
	// Interactive is for a person waiting on the answer (a chat turn): it
	// goes first, and attempts of the other classes leave headroom for it
	// (WithInteractiveHeadroom).
	Interactive Priority = 1
	// Normal is the default.
	Normal Priority = 0
	// Background is for work that can wait (batches, evaluations,
	// back-fills): it goes when nothing more urgent waits.
	Background Priority = -1
)

// NumPriorities is the number of priority classes.
const NumPriorities = 3

// String returns "interactive", "normal" or "background"; the name of the
// class an unknown value counts as (Normal).
func (p Priority) String() string {
	switch p {
	case Interactive:
		return "interactive"
	case Background:
		return "background"
	}
	return "normal"
}

// normalized returns p, or Normal when p is none of the classes.
func (p Priority) normalized() Priority {
	if p == Interactive || p == Background {
		return p
	}
	return Normal
}

// rank is p's place in the queue's order: 0 (Interactive) goes first. It
// also indexes the arrays kept per class.
func (p Priority) rank() int { return int(Interactive - p.normalized()) }

// PriorityCounts counts attempts per priority class.
type PriorityCounts struct {
	Interactive, Normal, Background int
}

// Of returns the count of p's class (Normal for an unknown value).
func (c PriorityCounts) Of(p Priority) int {
	switch p.normalized() {
	case Interactive:
		return c.Interactive
	case Background:
		return c.Background
	}
	return c.Normal
}

func (c *PriorityCounts) add(p Priority, n int) {
	switch p.normalized() {
	case Interactive:
		c.Interactive += n
	case Background:
		c.Background += n
	default:
		c.Normal += n
	}
}

// classKey carries a call's class (priority and tenant) in a context.
type classKey struct{}

// callClass is what a context says of a call's place in the queue.
type callClass struct {
	priority Priority
	tenant   string
}

func classFrom(ctx context.Context) callClass {
	c, _ := ctx.Value(classKey{}).(callClass)
	return c
}

// ContextWithPriority returns a copy of ctx in which the calls made carry
// priority p (an unknown value counts as Normal), keeping the tenant ctx
// carries. Pass it to the SDK's method (client.Messages.New(ctx, …)) or to
// http.NewRequestWithContext: the official SDKs hand the caller's context
// to the transport, so the priority reaches the Budget layer, and every
// attempt of the call (retries included) keeps it.
func ContextWithPriority(ctx context.Context, p Priority) context.Context {
	c := classFrom(ctx)
	c.priority = p.normalized()
	return context.WithValue(ctx, classKey{}, c)
}

// PriorityFromContext returns the priority ctx carries: Normal when it
// carries none.
func PriorityFromContext(ctx context.Context) Priority { return classFrom(ctx).priority }

// Priority defaults.
const (
	// DefaultInteractiveHeadroom is WithInteractiveHeadroom's default: one
	// typical Interactive attempt.
	DefaultInteractiveHeadroom = 1.0
	// DefaultPriorityAging is WithPriorityAging's default.
	DefaultPriorityAging = 3 * time.Minute
)

// interactiveIdle is how long the headroom is kept after the last
// Interactive attempt of a Key: a Key whose Interactive calls stopped gives
// it back to the others.
const interactiveIdle = 10 * time.Minute

// WithInteractiveHeadroom sets how much of each bucket Normal and
// Background attempts leave free for Interactive attempts that have not
// arrived yet, in typical Interactive attempts of the Key (what its
// Interactive attempts were estimated to cost, a moving average): a
// Normal or Background attempt is admitted only when its cost fits with
// that much left over, so an Interactive attempt that arrives finds its
// cost in the bucket instead of waiting for it to refill. The default is
// DefaultInteractiveHeadroom (one attempt); 0 turns it off. A Key that has
// seen no Interactive attempt in the last 10 minutes keeps none. Negative,
// NaN or infinite values keep the default.
//
// What it costs: the headroom is held, not spent (the buckets go on
// refilling while it is held), so a saturated fleet gives up about one
// Interactive attempt's cost once, and nothing on a Key that has seen no
// Interactive attempt in 10 minutes: at tier-1 limits, about 1 % of a
// 2-minute run's input tokens, measured within the noise between two runs
// (see BENCHMARKS.md). What it buys: an Interactive attempt finds its cost
// in the bucket instead of waiting for its refill. With a shared Store the
// headroom is kept in the shared buckets: an Interactive attempt of any
// process can take it; its size is what this process learned of its own
// Interactive attempts.
func WithInteractiveHeadroom(attempts float64) Option {
	return func(c *config) {
		if attempts >= 0 && !math.IsInf(attempts, 0) {
			c.budget.headroom, c.budget.headroomSet = attempts, true
		}
	}
}

// WithPriorityAging bounds how long priorities and fair shares can hold an
// attempt back (default DefaultPriorityAging): an attempt that has waited d
// in a Key's queue is served in arrival order from then on, ahead of every
// attempt that arrived after it, whatever its class or tenant. So no
// attempt is starved for good: a Background attempt waits at most d, plus
// the time the Key takes to serve the attempts that arrived before it and
// still wait. Until then an Interactive attempt goes before it. Values of
// zero or below keep the default.
func WithPriorityAging(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.budget.aging = d
		}
	}
}

// WithMaxQueueWait caps how long an attempt waits for tollgate's own pacing
// — its place in the Budget layer's queue, the refill its cost needs, a
// refill pause — counted from when it starts waiting for it. An attempt that
// reaches the cap, or that the store or a pause shows would pass it, fails
// at once with a *QueueWaitError (errors.Is(err, ErrQueueWait)) that says
// how long it waited and what for; the Retry layer does not retry it. The
// default, zero or below, is no cap: waiting is not failing, and such waits
// end only with the request's context. Waits the server asks for
// (retry-after) are WithMaxWait's and WithMaxPause's to bound, not this
// option's.
func WithMaxQueueWait(d time.Duration) Option {
	return func(c *config) { c.budget.maxQueueWait = max(d, 0) }
}

// fillDefaults fills in the defaults of the Budget layer's options.
func (b *budgetConfig) fillDefaults() {
	if !b.headroomSet {
		b.headroom = DefaultInteractiveHeadroom
	}
	if b.aging <= 0 {
		b.aging = DefaultPriorityAging
	}
}

// queueLess reports whether a goes before b in a Key's queue: attempts
// that have waited the aging period first, in arrival order; then by class;
// within a class by their tenants' fair-share tags; then in arrival order.
func queueLess(a, b *waiter) bool {
	switch {
	case a.aged != b.aged:
		return a.aged
	case a.aged:
		return a.seq < b.seq
	case a.rank != b.rank:
		return a.rank < b.rank
	case a.tag != b.tag:
		return a.tag < b.tag
	}
	return a.seq < b.seq
}

// pinned reports whether w holds the head of its queue whatever comes: the
// store was asked on its behalf and has not answered yet, or granted it.
func (w *waiter) pinned() bool { return w.granted || w.asking }

// enqueueLocked puts r, an attempt of call c, in its place in the queue.
func (p *pool) enqueueLocked(r *reservation, c *call, now time.Time) {
	b := &p.budget
	w := &r.waiter
	w.rank = c.priority.rank()
	w.arrived = now
	b.seq++
	w.seq = b.seq
	w.tenant = p.tenantLocked(c.tenant, c.weight, now) // tenant.go
	w.tenant.waiting++
	w.tenant.active = now
	b.waiting.add(c.priority, 1)
	b.queue = append(b.queue, r)
	p.orderLocked(now)
}

// orderLocked puts the queue in order (queueLess) as it stands at now: it
// marks the attempts that have waited the aging period, brings the
// fair-share tags up to date (tenant.go), and sorts the queue, the pinned
// head left in place. It wakes the head when another attempt took its
// place. Call it whenever the order may have changed: an attempt queued,
// admitted or settled, time passed.
func (p *pool) orderLocked(now time.Time) {
	q := p.budget.queue
	if len(q) == 0 {
		return
	}
	aging := p.budget.cfg.aging
	for _, r := range q {
		if w := &r.waiter; !w.aged && !now.Before(w.arrived.Add(aging)) {
			w.aged = true
		}
	}
	if len(q) == 1 {
		return
	}
	p.retagLocked()
	lo := 0
	if q[0].waiter.pinned() {
		lo = 1
	}
	head := q[0]
	slices.SortStableFunc(q[lo:], func(a, b *reservation) int {
		switch {
		case queueLess(&a.waiter, &b.waiter):
			return -1
		case queueLess(&b.waiter, &a.waiter):
			return 1
		}
		return 0
	})
	if q[0] != head {
		p.wakeLocked(q[0])
	}
}

// nextAgingLocked returns when the next attempt behind the head will have
// waited the aging period, which may put it ahead of the head; false when
// none will.
func (p *pool) nextAgingLocked() (time.Time, bool) {
	var next time.Time
	found := false
	for _, r := range p.budget.queue[1:] {
		if w := &r.waiter; !w.aged && (!found || w.arrived.Before(next)) {
			next, found = w.arrived, true
		}
	}
	return next.Add(p.budget.cfg.aging), found
}

// interactiveWeight is the weight of the newest Interactive attempt in the
// moving average of what one costs.
const interactiveWeight = 0.2

// learnInteractiveLocked folds an Interactive attempt's estimated cost into
// the typical Interactive attempt, the unit of the headroom.
func (p *pool) learnInteractiveLocked(r *reservation, now time.Time) {
	b := &p.budget
	if b.interactiveAt.IsZero() || now.Sub(b.interactiveAt) > interactiveIdle {
		b.interactive = r.cost
	} else {
		for d, n := range r.cost {
			b.interactive[d] += interactiveWeight * (n - b.interactive[d])
		}
	}
	b.interactiveAt = now
}

// headroomLocked returns what an attempt of w's class leaves free in each
// bucket: none for an Interactive or aged attempt, else
// WithInteractiveHeadroom's typical Interactive attempts, while the Key has
// seen one lately.
func (p *pool) headroomLocked(w *waiter, now time.Time) (keep [NumDimensions]float64) {
	if w.rank == Interactive.rank() || w.aged {
		return keep
	}
	return p.keptLocked(now)
}

// keptLocked is the headroom Normal and Background attempts leave now.
func (p *pool) keptLocked(now time.Time) (keep [NumDimensions]float64) {
	b := &p.budget
	if b.cfg.headroom <= 0 || b.interactiveAt.IsZero() || now.Sub(b.interactiveAt) > interactiveIdle {
		return keep
	}
	for d, l := range b.limits {
		if l > 0 {
			keep[d] = b.cfg.headroom * b.interactive[d]
		}
	}
	return keep
}

// whyWaitingLocked says what r waits for now, for a *QueueWaitError.
func (p *pool) whyWaitingLocked(r *reservation, now time.Time) string {
	b := &p.budget
	w := &r.waiter
	switch {
	case len(b.queue) == 0 || b.queue[0] != r:
		ahead := 0
		for _, x := range b.queue {
			if x == r {
				break
			}
			ahead++
		}
		return "behind " + strconv.Itoa(ahead) + " attempts in the queue"
	case p.pause.until.After(now):
		return p.pause.reason
	case b.cfg.maxConcurrency > 0 && len(b.inFlight) >= b.cfg.maxConcurrency:
		return "a place among the " + strconv.Itoa(b.cfg.maxConcurrency) + " attempts in flight (WithMaxConcurrency)"
	case !b.limitsKnown() && b.probing:
		return "the cold start (one attempt at a time until a response tells the limits)"
	case w.held:
		return "an attempt in flight writing its prompt's prefix to the cache"
	}
	// The dimension whose refill takes longest, by the levels last seen.
	keep := p.headroomLocked(w, now)
	longest, short := 0.0, -1
	for d, l := range b.limits {
		if l <= 0 || !b.levelKnown[d] {
			continue
		}
		missing := min(r.cost[d]+keep[d], float64(l)) - b.levelNow(now, d)
		if t := missing / float64(l); t > longest {
			longest, short = t, d
		}
	}
	if short < 0 {
		return "the refill of its cost"
	}
	why := Dimension(short).String() + " refill"
	if keep[short] > 0 && r.cost[short]+keep[short] > b.levelNow(now, short) && r.cost[short] <= b.levelNow(now, short) {
		why += " (the headroom kept for Interactive calls)"
	}
	return why
}
