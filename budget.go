package tollgate

import (
	"context"
	"math"
	"net/http"
	"time"
)

// Budget returns the layer that admits each attempt against the limits of
// its Key (provider, model family), so that the client stays inside the
// account's limits instead of learning them from 429s.
//
// An attempt waits until one continuously refilled bucket per known limit
// (requests, input tokens, output tokens, and combined tokens where the
// provider reports those) covers its estimated cost, in the order of the
// Key's queue (by priority class, then by its tenant's fair share, then in
// arrival order: see ContextWithPriority and ContextWithTenant), and until
// WithMaxConcurrency allows one more attempt in flight. An attempt whose
// prompt's cache_control prefix an attempt in flight is writing waits for
// it, at most the refill of what that saves (the server makes the entry
// usable only once that response has begun). Until any limit is known for
// a Key, its attempts go one at a time (unless WithLimits gives them).
// When the attempt's body has been read or closed, its reservation is
// settled to the usage the response reported; a 429 gives all of it back. See the package documentation for how costs are
// estimated and levels kept in step with the server's.
//
// A wait ends at once when the request context is done: RoundTrip then
// returns the context's error and gives back everything the attempt held.
// Otherwise only WithMaxQueueWait, when set, ends it (a *QueueWaitError).
// A pause found in a shared Store that the attempt cannot wait out (see
// Breaker) returns an *OpenError. The time waited is added to the call's
// Waits.Budget.
//
// A nil s gets a State of its own with default options. The Observe layer
// is put under the layer when next has none of s's inside it.
func Budget(s *State) Middleware {
	s = orNewState(s)
	s.budgeting.Store(true)
	return func(next http.RoundTripper) http.RoundTripper {
		return &budgeter{state: s, next: s.observed(next)}
	}
}

type budgeter struct {
	state *State
	next  http.RoundTripper
}

func (b *budgeter) observes(s *State) bool { return observes(b.next, s) }

func (b *budgeter) RoundTrip(req *http.Request) (*http.Response, error) {
	req, c := b.state.callFor(req)
	req, ex := c.exchangeFor(req)
	p := c.pool
	r, err := p.admit(req.Context(), c, ex)
	if err != nil {
		return refuse(req, ex, err)
	}
	ex.account(func(a *accounting) {
		a.known, a.output = true, r.output
		a.estInput, a.estCachedInput, a.estOutput = int64(r.cost[InputTokens]), r.cachedTokens, int64(r.cost[OutputTokens])
	})
	ex.whenDone((*tenantSettled)(r))
	if r.watched {
		ex.watchOutput(r)
	}
	resp, err := b.next.RoundTrip(req)
	if resp != nil {
		p.responded(r, ex.result())
	}
	return resp, err
}

// budgetConfig is the Budget layer's part of config.
type budgetConfig struct {
	output         OutputAccounting
	limits         Limits
	maxConcurrency int
	alertThreshold float64
	onAlert        func(UtilizationAlert)
	// Priorities and fair share (priority.go, tenant.go).
	weights      map[string]float64
	headroom     float64
	headroomSet  bool
	aging        time.Duration
	maxQueueWait time.Duration
}

// WithMaxConcurrency caps the attempts in flight per Key at n; more wait, in
// the queue's order, in the same queue as attempts waiting for tokens. An attempt
// is in flight from admission until its response body is read to the end or
// closed, or it fails. n of zero or less means no cap (the default).
func WithMaxConcurrency(n int) Option {
	return func(c *config) { c.budget.maxConcurrency = max(n, 0) }
}

// BudgetSnapshot is the Budget layer's view of one Key at one moment.
type BudgetSnapshot struct {
	// Limits are the effective limits; a zero field is unknown.
	Limits Limits
	// Dimensions holds, per Dimension, the limit, its source, the bucket
	// level and the use over the last minute.
	Dimensions [NumDimensions]DimensionBudget
	// ColdStart reports that no limit is known yet, so attempts are admitted
	// one at a time.
	ColdStart bool
	InFlight  int // attempts admitted whose exchange is not done
	Waiting   int // attempts queued for admission, or granted ahead of time by a shared store and waiting for their time
	// WaitingByPriority splits Waiting by the calls' priority classes.
	WaitingByPriority PriorityCounts
	// Tenants are the tenants with attempts waiting or in flight, or seen
	// in the last two minutes, by name: what each waits for, holds, and
	// used over the last minute (see ContextWithTenant).
	Tenants []TenantSnapshot
	// Headroom is what Normal and Background attempts leave free in each
	// bucket now for Interactive ones, by Dimension (see
	// WithInteractiveHeadroom); zero while the Key has seen no Interactive
	// attempt lately.
	Headroom [NumDimensions]float64
	// BytesPerToken is the learned number of prompt bytes per rate-limited
	// input token.
	BytesPerToken float64
	// Tier names the published tier the limits match, TierCustom when they
	// match none, TierUnknown before any is known. It is informational:
	// pacing always uses Limits.
	Tier string
	// Fallback reports that the store given by WithStore failed, so that
	// this Transport paces by its local fallback budget meanwhile.
	Fallback bool
	// Output is how output is counted for this Key (ReserveMaxTokens or
	// CountAsProduced), and OutputSource where tollgate has that from:
	// "provider" (its documented rule), "option" (WithOutputAccounting) or
	// "detected" (what a response showed).
	Output       OutputAccounting
	OutputSource string
	// ProducedEstimate is what the Key's calls produce, learned from their
	// usage: an attempt whose output is counted as produced is charged it
	// (capped at its max_tokens), and admitted while the output bucket
	// holds a margin for the attempts in flight (Admission.Need).
	ProducedEstimate float64
	// CachedPrefixes is how many prompt prefixes the Key's prompt cache is
	// known to hold.
	CachedPrefixes int
}

// DimensionBudget is the Budget layer's view of one dimension of a Key.
type DimensionBudget struct {
	Limit  int64 // per minute; zero when unknown
	Source LimitSource
	// Level is what the bucket holds now: as the store last reported it,
	// with what this Transport settled since (on its way to the store), plus
	// the refill since: the amount an attempt can take without waiting. It is below zero while the bucket is in debt: settled usage
	// exceeded what was reserved, or a shared store granted attempts ahead
	// of time. Zero when the limit is unknown.
	Level float64
	// Reserved is what the attempts admitted and not yet settled hold of
	// the bucket; zero once all are settled.
	Reserved float64
	// Used is what settled attempts consumed in the last minute.
	Used int64
	// Utilization is Used / Limit; zero when the limit is unknown.
	Utilization float64
}

// budgetState is the Budget layer's part of a pool. The bucket levels are
// in the store; the queue, the concurrency and the learning are this
// process's.
type budgetState struct {
	cfg     *budgetConfig
	limits  [NumDimensions]int64
	sources [NumDimensions]LimitSource
	// level is what the store reported last, at levelAt on this process's
	// clock, where levelKnown: for Snapshot, to tell when a response's
	// remaining header is news to the store, and to start a bucket the
	// store lost. levelLocal says it came from the local fallback, and
	// levelStoreAt is when it was true on that store's clock.
	level        [NumDimensions]float64
	levelKnown   [NumDimensions]bool
	levelAt      time.Time
	levelLocal   bool
	levelStoreAt time.Time
	// held is what the store holds of the attempts not yet settled.
	held [NumDimensions]float64
	// returned is what the server gave back of this pool's attempts after
	// their readings, in all, per dimension (reservation.othersReturned).
	returned [NumDimensions]float64
	// reading holds, per dimension, the attempt whose response last said
	// what remains there (reservation.floor).
	reading [NumDimensions]*reservation
	// queue holds the attempts waiting for admission, in the order they
	// are to be admitted (queueLess); only the head asks the store.
	queue    []*reservation
	seq      uint64         // the arrival number of the last attempt queued
	waiting  PriorityCounts // the attempts queued, by class
	fair     fairState      // tenant.go
	inFlight []*reservation // the attempts with a place in flight (reservation.slot)
	// watched counts the attempts in flight whose output is seen as it is
	// produced (reservation.watched).
	watched int
	// interactive is what a typical Interactive attempt is estimated to
	// cost, the unit of the headroom, as of interactiveAt (priority.go).
	interactive   [NumDimensions]float64
	interactiveAt time.Time
	probing       bool // cold start: one attempt awaits its response headers
	// unpaced: a successful response carried no limit headers, so this Key's
	// server (a gateway, a proxy) will not tell its limits; the cold start
	// ends rather than serialising every call forever.
	unpaced bool
	ratio   ratioEstimate // estimate.go
	// output is how the server counts output, and outputSource where
	// tollgate has that from: "provider", "option" or "detected".
	output       OutputAccounting
	outputSource string
	produced     tokenEstimate // the output the pool's calls produce
	// perToken is the least time per output token a JSON reply of the pool
	// took, from its send to its headers, once timed: no reply comes
	// much faster (exceeding).
	perToken time.Duration
	timed    bool
	// streamed is the learned number of bytes a stream's output events take
	// per output token.
	streamed tokenEstimate
	cache    promptCache // promptcache.go
	window   usageWindow // utilization.go
	above    [NumDimensions]bool
	alerts   []UtilizationAlert // to deliver, in order
}

func (b *budgetState) init(cfg *config, now time.Time, optionLimits bool) {
	b.cfg = &cfg.budget
	b.ratio = newRatioEstimate()
	b.produced = newProducedEstimate()
	b.streamed = tokenEstimate{least: minLearnWeight, initial: initialRatioDeviation}
	b.levelAt = now
	if !optionLimits {
		return
	}
	for d, l := range cfg.budget.limits.byDimension() {
		if l > 0 {
			b.limits[d], b.sources[d] = l, LimitFromOption
			b.level[d], b.levelKnown[d] = float64(l), true
		}
	}
}

// advance brings the levels shown up to date at now: the refill since the
// store last reported them.
func (b *budgetState) advance(now time.Time) {
	if !now.After(b.levelAt) {
		return
	}
	for d := range b.level {
		if b.levelKnown[d] {
			b.level[d] = b.levelNow(now, d)
		}
	}
	b.levelAt = now
}

// mirror notes the levels a store reported, unless the same store has
// reported newer ones since: answers to calls made concurrently (a
// settlement sent on its own, an admission) can arrive out of order.
func (b *budgetState) mirror(now time.Time, l Levels, local bool) {
	if local == b.levelLocal && l.At.Before(b.levelStoreAt) {
		return
	}
	for d, v := range l.Level {
		switch {
		case !math.IsNaN(v):
			b.level[d], b.levelKnown[d] = v, true
		case b.levelKnown[d]:
			b.level[d] = b.levelNow(now, d)
		}
	}
	b.levelAt, b.levelLocal, b.levelStoreAt = now, local, l.At
}

// levelAt is the level of d as the store last reported it, refilled since.
func (b *budgetState) levelNow(now time.Time, d int) float64 {
	bk := bucket{limit: float64(b.limits[d]), level: b.level[d], last: b.levelAt}
	return bk.levelAt(now)
}

func (b *budgetState) limitsKnown() bool { return b.limits != [NumDimensions]int64{} }

// admit waits in the Key's queue (priority.go orders it) until the store
// grants the cost of c's attempt ex and the Key's concurrency allows one more
// attempt, then until a grant ahead of time may be sent. It returns the
// reservation, or ctx's error (or an *OpenError for a pause found in the
// store that cannot be waited out, or a *QueueWaitError past
// WithMaxQueueWait), in which case the attempt holds nothing. Only time
// spent blocked counts as a wait.
func (p *pool) admit(ctx context.Context, c *call, ex *exchange) (*reservation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	clock := p.state.cfg.clock
	r := &reservation{p: p}
	if p.unpaced {
		r.settled = true // nothing to hold, nothing to settle
		return r, nil
	}
	w := &r.waiter
	w.ctx = ctx
	var t timer
	defer t.reset()

	p.mu.Lock()
	start := clock.Now()
	blocked := false
	defer func() {
		if blocked {
			c.addWait("budget", clock.Now().Sub(start))
		}
	}()
	if capped := p.budget.cfg.maxQueueWait; capped > 0 {
		w.deadline = ex.pacedSince(start).Add(capped)
	}
	r.info = &c.info
	p.enqueueLocked(r, c, start)
	for {
		now := p.stepLocked(ctx, c, r, start)
		switch {
		case w.err != nil:
			p.leaveLocked(r)
			p.unlock(ctx, c)
			return nil, w.err
		case w.granted && !now.Before(w.sendAt):
			p.servedLocked(r, now)
			p.removeLocked(r)
			p.evaluateAlertsLocked(now)
			p.wakeHeadLocked()
			p.unlock(ctx, c)
			return r, nil
		case w.woken && p.mayAskLocked(r):
			continue // an improvement came while the store was asked
		}
		blocked = true
		p.waitLocked(ctx, c, r, &t) // unlocks while it waits
	}
}

// stepLocked moves r one step toward admission: it asks the store when r
// heads the queue and may, unless the pool is paused (it notes the pause,
// and whether the caller can wait it out) or r waits for a cache write;
// then it notes a context ended as r was granted, or r's queue-wait cap
// passed, in r's waiter. It returns the time after the step. It may unlock
// p.mu around the store call.
func (p *pool) stepLocked(ctx context.Context, c *call, r *reservation, start time.Time) time.Time {
	w := &r.waiter
	now := p.state.cfg.clock.Now()
	if !w.pausedAt.IsZero() {
		w.pausedFor += now.Sub(w.pausedAt)
		w.pausedAt = time.Time{}
	}
	p.orderLocked(now)
	switch {
	case w.err != nil || !p.mayAskLocked(r):
	case p.pause.until.After(now):
		// The pool is paused: nothing is asked of the store until the
		// pause is over, and a caller that cannot wait it out is
		// answered as the Breaker answers it.
		w.woken = false
		w.err = p.hopelessLocked(ctx, c, now, w.pausedFor, w.deadline)
		w.retryAt, w.timed = p.pause.until, true
		if !p.pause.pacing {
			w.pausedAt = now
		}
	case p.cacheHoldLocked(r, now): // waits for a cache write in flight (estimate.go)
		w.woken = false
	default:
		w.woken = false
		p.askLocked(r, c, start) // unlocks around the store call
		now = p.state.cfg.clock.Now()
	}
	if w.err == nil && w.granted && ctx.Err() != nil {
		w.err = ctx.Err() // ended as it was granted: not sent
	}
	if w.err == nil && !w.granted && !w.deadline.IsZero() && !now.Before(w.deadline) {
		w.err = p.queueWaitErrorLocked(r, c, now, w.deadline.Add(-p.budget.cfg.maxQueueWait), p.whyWaitingLocked(r, now))
	}
	return now
}

// mayAskLocked reports whether r may ask the store now: it heads the queue,
// is not granted yet, and waits for nothing but the store.
func (p *pool) mayAskLocked(r *reservation) bool {
	return p.budget.queue[0] == r && !r.waiter.granted && !p.blockedLocked()
}

// waitLocked waits, with p.mu released, until r's grant ahead of time may
// be sent, its time to ask the store again has come, an attempt behind it
// has waited the aging period (it may go first now), its queue-wait cap is
// reached, it is woken, or ctx is done (then r's waiter has ctx's error).
func (p *pool) waitLocked(ctx context.Context, c *call, r *reservation, t *timer) {
	w, clock := &r.waiter, p.state.cfg.clock
	now := clock.Now()
	var at time.Time
	switch head := p.budget.queue[0] == r; {
	case w.granted:
		at = w.sendAt // granted ahead: hold the head until then
	case head:
		if w.timed {
			at = w.retryAt
		}
		if aging, ok := p.nextAgingLocked(); ok && (at.IsZero() || aging.Before(at)) {
			at = aging
		}
	}
	if !w.granted && !w.deadline.IsZero() && (at.IsZero() || w.deadline.Before(at)) {
		at = w.deadline
	}
	if at.IsZero() {
		t.reset()
	} else {
		t.set(clock, now, at)
	}
	if w.wake == nil {
		w.wake = make(chan struct{}, 1)
	}
	p.unlock(ctx, c)
	select {
	case <-ctx.Done():
		p.mu.Lock()
		w.err = ctx.Err()
		return
	case <-w.wake:
	case <-t.c:
		*t = timer{}
	}
	p.mu.Lock()
}

// askLocked asks the store to admit r and records the answer in its waiter.
// p.mu is held on entry and on return, but not during the call; r is
// pinned to the head of the queue meanwhile.
func (p *pool) askLocked(r *reservation, c *call, start time.Time) {
	w := &r.waiter
	clock, g := p.state.cfg.clock, p.state.guard
	st := g.pick()
	a := p.admissionLocked(r, st)
	asked := clock.Now()
	w.asking = true
	p.mu.Unlock()
	res, st, limits, err := g.admit(w.ctx, st, p.name, a)
	p.mu.Lock()
	w.asking = false
	p.returnSettlementsLocked(a.Settle)
	// The store's waits are from when it answered, at the earliest when it
	// was asked: waiting from then never waits past what it said, however
	// long the answer took to come back.
	now := clock.Now()
	w.timed = false
	if err != nil {
		w.err = err
		return
	}
	p.budget.mirror(now, res.Levels, !g.own && st != g.shared)
	switch {
	case res.Paused > 0:
		q := pause{until: now.Add(res.Paused), reason: "shared: " + res.PauseReason, pacing: pacingReason(res.PauseReason)}
		p.extendLocked(q, true)
		if err := p.hopelessLocked(w.ctx, c, now, w.pausedFor, w.deadline); err != nil {
			w.err = err
			return
		}
		w.retryAt, w.timed = now.Add(res.Paused), true
		if !q.pacing {
			w.pausedAt = now
		}
	case !res.Granted:
		w.retryAt, w.timed = asked.Add(res.Wait), true
		if !w.deadline.IsZero() && w.retryAt.After(w.deadline) {
			// The cap will be reached before its cost fits: give up now.
			w.err = p.queueWaitErrorLocked(r, c, now, w.deadline.Add(-p.budget.cfg.maxQueueWait), p.whyWaitingLocked(r, now))
			return
		}
		p.orderLocked(now) // what arrived meanwhile may go first
	default:
		p.grantLocked(now, r, st, limits, res)
		w.granted, w.sendAt = true, now.Add(res.Wait)
	}
}

// admissionLocked is what r asks of st: its cost, estimated when it asks,
// not when it queued, so that what the pool has learned meanwhile (the
// bytes per token, the prompt cache, what calls produce) counts; what it
// needs and must leave for higher priorities; how long a grant ahead may
// wait; where new buckets start; and the settlements riding along.
func (p *pool) admissionLocked(r *reservation, st Store) Admission {
	w := &r.waiter
	now := p.state.cfg.clock.Now()
	until := p.estimateLocked(r, r.info, now)
	if w.rank == Interactive.rank() && !w.learned {
		w.learned = true
		p.learnInteractiveLocked(r, now)
	}
	a := Admission{Limits: p.budget.limits, Cost: r.cost, Need: r.need, MaxWait: grantAhead(w.ctx), Keep: p.headroomLocked(w, now)}
	if !w.deadline.IsZero() {
		a.MaxWait = min(a.MaxWait, max(w.deadline.Sub(now), 0))
	}
	if !until.IsZero() {
		a.MaxWait = min(a.MaxWait, until.Sub(now)) // not sent on a need that no longer holds
	}
	a.Start, a.HasStart = p.startLevelsLocked(now)
	a.Settle = p.takeSettlementsLocked(st)
	return a
}

// startLevelsLocked returns what this process knows of the levels now,
// for a store that has lost them (or never had them): the levels a store
// last reported (the local fallback's read as this process's share of the
// whole), and what the server last said remains (with what it gave back
// since of the attempt that said so), each refilled since, whichever is
// lower. What the server said counts as of when it is taken to have read
// it (at the headers, unless the response shows otherwise): credited the
// refill since the send, a level misses what others took meanwhile. A
// reading that started a bucket is not applied again: the start holds it,
// and what its attempt was given back since (applied again, it held a
// first call's buckets up to 1,650 input tokens under the server's).
func (p *pool) startLevelsLocked(now time.Time) (start [NumDimensions]float64, has [NumDimensions]bool) {
	b := &p.budget
	for d, l := range b.limits {
		if l <= 0 {
			continue
		}
		level := math.Inf(1)
		if b.levelKnown[d] {
			known := b.level[d]
			if b.levelLocal {
				known /= p.state.guard.share
			}
			level = known + float64(l)*max(now.Sub(b.levelAt), 0).Minutes()
		}
		if r := b.reading[d]; r != nil && r.started[d] == notStarted {
			level = min(level, r.floorNow(d, b, r.readAt, now))
		}
		if !math.IsInf(level, 1) {
			start[d], has[d] = min(level, float64(l)), true
		}
	}
	return start, has
}

// grantAhead is the longest wait the store may grant an attempt ahead of
// time: what is left of ctx's deadline, which no grant should outlast.
func grantAhead(ctx context.Context) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		return max(time.Until(deadline), 0)
	}
	return math.MaxInt64
}

// blockedLocked reports whether the head must wait for something other
// than the store: a concurrency slot or the cold-start gate.
func (p *pool) blockedLocked() bool {
	b := &p.budget
	if n := b.cfg.maxConcurrency; n > 0 && len(b.inFlight) >= n {
		return true
	}
	return !b.limitsKnown() && !b.unpaced && b.probing
}

// admissionComingLocked reports whether an admission this process asks of
// the store will follow without anything else happening, to carry pending
// settlements: a head that is free to ask (it is woken whenever they are
// queued), or one granted ahead of time with others behind it.
func (p *pool) admissionComingLocked() bool {
	q := p.budget.queue
	switch {
	case len(q) == 0:
		return false
	case q[0].waiter.granted:
		return len(q) > 1
	}
	return !p.blockedLocked()
}

// grantLocked records what the store charged r and gives it a place among
// the attempts in flight.
func (p *pool) grantLocked(now time.Time, r *reservation, st Store, limits [NumDimensions]int64, res Admitted) {
	b := &p.budget
	for d, n := range r.cost {
		if l := b.limits[d]; l > 0 {
			n = min(n, float64(l))
		}
		r.charged[d] = n
		if limits[d] > 0 {
			r.stored[d] = min(r.cost[d], float64(limits[d]))
			r.storeHas[d] = true
			b.held[d] += r.stored[d]
		}
	}
	r.store = st
	r.sentAt, r.storeSentAt = now.Add(res.Wait), res.Levels.At.Add(res.Wait)
	r.alone, r.outputBefore = len(b.inFlight) == 0, -1
	r.returnedAt = b.returned
	if b.limits[OutputTokens] > 0 && b.levelKnown[OutputTokens] {
		// The store's levels are after the charge: the level before it.
		r.outputBefore = min(b.levelNow(now, int(OutputTokens))+r.stored[OutputTokens], float64(b.limits[OutputTokens]))
	}
	r.slot = true
	b.inFlight = append(b.inFlight, r)
	b.cache.sending(r.writes, 1)
	// A stream whose output is counted as produced is charged what it shows
	// beyond its estimate as it shows it (reservation.produced), once the
	// pool has learned what its streams carry per token.
	if r.output == CountAsProduced && r.info != nil && r.info.Stream && b.streamed.samples >= minRatioSamples {
		r.watched = true
		b.watched++
	}
	if !b.limitsKnown() {
		r.probe, b.probing = true, true
	}
}

// wakeHeadLocked tells the head of the queue that its wait may be shorter
// now: it asks the store again.
func (p *pool) wakeHeadLocked() {
	if len(p.budget.queue) == 0 {
		return
	}
	p.orderLocked(p.state.cfg.clock.Now())
	p.wakeLocked(p.budget.queue[0])
}

// wakeLocked tells r, at the head of the queue, that its wait may be
// shorter now.
func (p *pool) wakeLocked(r *reservation) {
	w := &r.waiter
	w.woken = true
	if w.wake != nil {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// removeLocked takes r out of the queue, keeping the order.
func (p *pool) removeLocked(r *reservation) {
	q := p.budget.queue
	for i, x := range q {
		if x == r {
			copy(q[i:], q[i+1:])
			q[len(q)-1] = nil
			p.budget.queue = q[:len(q)-1]
			return
		}
	}
}

// leaveLocked takes r out of the queue for good, as it will not be sent:
// everything it was granted is given back, and the next in line goes.
func (p *pool) leaveLocked(r *reservation) {
	p.removeLocked(r)
	p.unqueuedLocked(r)
	if r.waiter.granted {
		p.releaseLocked(r, true)
		p.doneLocked(r)
	}
	p.wakeHeadLocked()
}

// closeRequestBody closes the body of a request that will not be sent, as
// a RoundTripper must.
func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
