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
// provider reports those) covers its estimated cost, in arrival order per
// Key, and until WithMaxConcurrency allows one more attempt in flight.
// Until any limit is known for a Key, its attempts go one at a time (unless
// WithLimits gives them). When the attempt's body has been read or closed,
// its reservation is settled to the usage the response reported; a 429
// gives all of it back. See the package documentation for how costs are
// estimated and levels kept in step with the server's.
//
// A wait ends at once when the request context is done: RoundTrip then
// returns the context's error and gives back everything the attempt held.
// A pause found in a shared Store that the attempt cannot wait out (see
// Breaker) returns an *OpenError. The time waited is added to the call's
// Waits.Budget.
//
// A nil s gets a State of its own with default options. The Observe layer
// is put under the layer when next has none of s's inside it.
func Budget(s *State) Middleware {
	s = orNewState(s)
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
	r, err := p.admit(req.Context(), c)
	if err != nil {
		closeRequestBody(req)
		ex.fail(err)
		return nil, err
	}
	ex.whenDone(r.settle)
	resp, err := b.next.RoundTrip(req)
	if resp != nil {
		p.responded(r, ex.result())
	}
	return resp, err
}

// Limits are rate limits per minute for one Key. A zero field is unknown:
// that dimension is not paced until a response header reports it.
type Limits struct {
	RequestsPerMinute     int
	InputTokensPerMinute  int
	OutputTokensPerMinute int
	// TokensPerMinute limits input and output tokens combined, as OpenAI
	// reports it. Anthropic's tokens-* headers only repeat the most
	// restrictive of its other limits and are not learned as a limit.
	TokensPerMinute int
}

func (l Limits) byDimension() [NumDimensions]int64 {
	return [NumDimensions]int64{
		Requests:     int64(l.RequestsPerMinute),
		Tokens:       int64(l.TokensPerMinute),
		InputTokens:  int64(l.InputTokensPerMinute),
		OutputTokens: int64(l.OutputTokensPerMinute),
	}
}

func limitsOf(v [NumDimensions]int64) Limits {
	return Limits{
		RequestsPerMinute:     int(v[Requests]),
		TokensPerMinute:       int(v[Tokens]),
		InputTokensPerMinute:  int(v[InputTokens]),
		OutputTokensPerMinute: int(v[OutputTokens]),
	}
}

// LimitSource says where an effective limit came from.
type LimitSource uint8

// The sources of a limit.
const (
	LimitUnknown     LimitSource = iota // no limit known: not paced
	LimitFromOption                     // WithLimits
	LimitFromHeaders                    // a response's *-limit header
)

func (s LimitSource) String() string {
	switch s {
	case LimitFromOption:
		return "option"
	case LimitFromHeaders:
		return "headers"
	}
	return "unknown"
}

// budgetConfig is the Budget layer's part of config.
type budgetConfig struct {
	limits         Limits
	maxConcurrency int
	alertThreshold float64
	onAlert        func(UtilizationAlert)
}

// WithLimits sets the limits of every Key before any response has reported
// them, which also ends the cold start (one attempt at a time) at once. A
// limit reported by a response's *-limit header replaces the one set here
// for that Key and dimension. Zero fields leave a dimension to the headers;
// negative values count as zero.
func WithLimits(l Limits) Option {
	return func(c *config) {
		v := l.byDimension()
		for d := range v {
			v[d] = max(v[d], 0)
		}
		c.budget.limits = limitsOf(v)
	}
}

// WithMaxConcurrency caps the attempts in flight per Key at n; more wait, in
// arrival order, in the same queue as attempts waiting for tokens. An attempt
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
}

// DimensionBudget is the Budget layer's view of one dimension of a Key.
type DimensionBudget struct {
	Limit  int64 // per minute; zero when unknown
	Source LimitSource
	// Level is what the bucket holds now, as the store last reported it
	// plus the refill since: the amount an attempt can take without
	// waiting. It is below zero while the bucket is in debt: settled usage
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
	// store lost. levelLocal says it came from the local fallback.
	level      [NumDimensions]float64
	levelKnown [NumDimensions]bool
	levelAt    time.Time
	levelLocal bool
	// held is what the store holds of the attempts not yet settled.
	held     [NumDimensions]float64
	queue    []*waiter // in arrival order; only the head asks the store
	inFlight int
	probing  bool // cold start: one attempt awaits its response headers
	// unpaced: a successful response carried no limit headers, so this Key's
	// server (a gateway, a proxy) will not tell its limits; the cold start
	// ends rather than serialising every call forever.
	unpaced bool
	ratio   ratioEstimate // estimate.go
	window  usageWindow   // utilization.go
	above   [NumDimensions]bool
	alerts  []UtilizationAlert // to deliver, in order
}

func (b *budgetState) init(cfg *config, now time.Time) {
	b.cfg = &cfg.budget
	b.ratio = newRatioEstimate()
	b.levelAt = now
	for d, l := range cfg.budget.limits.byDimension() {
		if l > 0 {
			b.limits[d], b.sources[d] = l, LimitFromOption
			b.level[d], b.levelKnown[d] = float64(l), true
		}
	}
}

// mirror notes the levels a store reported.
func (b *budgetState) mirror(now time.Time, l Levels, local bool) {
	for d, v := range l.Level {
		if !math.IsNaN(v) {
			b.level[d], b.levelKnown[d] = v, true
		}
	}
	b.levelAt, b.levelLocal = now, local
}

// levelAt is the level of d as the store last reported it, refilled since.
func (b *budgetState) levelNow(now time.Time, d int) float64 {
	bk := bucket{limit: float64(b.limits[d]), level: b.level[d], last: b.levelAt}
	return bk.levelAt(now)
}

func (b *budgetState) limitsKnown() bool { return b.limits != [NumDimensions]int64{} }

// A reservation is what one attempt holds of its Key's budget, from
// admission until it is settled.
type reservation struct {
	p           *pool
	cost        [NumDimensions]float64 // what the attempt asks for
	charged     [NumDimensions]float64 // what it is charged now
	sentAt      time.Time              // when it may be sent, on this process's clock
	promptBytes int64
	images      int64

	// store is the store that admitted it, stored what that store holds of
	// it per dimension, and storeSentAt when it may be sent on the store's
	// clock.
	store       Store
	stored      [NumDimensions]float64
	storeSentAt time.Time
	// floor holds what a response said remains, per dimension, until it is
	// given to the store.
	floor    [NumDimensions]float64
	hasFloor [NumDimensions]bool

	status   int  // the response status, once headers arrived
	slot     bool // holds a place among the attempts in flight
	probe    bool // holds the cold-start gate
	refunded bool // gave everything back (429)
	settled  bool
}

// A waiter is an attempt queued for admission. Its fields are guarded by
// the pool's mutex.
type waiter struct {
	r   *reservation
	ctx context.Context // the attempt's, for the store calls made on its behalf

	granted bool
	sendAt  time.Time // granted: when it may be sent (later than now when granted ahead of time)
	retryAt time.Time // not granted: when to ask the store again, where timed
	timed   bool
	err     error // why it cannot be admitted: ctx's error, or a pause it cannot wait out

	wake chan struct{} // capacity 1: the head's wait may be shorter now
}

// admit waits, in arrival order, until the store grants the cost of c's
// attempt and the Key's concurrency allows one more attempt, then until a
// grant ahead of time may be sent. It returns the reservation, or ctx's
// error (or an *OpenError for a pause found in the store that cannot be
// waited out), in which case the attempt holds nothing.
func (p *pool) admit(ctx context.Context, c *call) (*reservation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	clock := p.state.cfg.clock
	r := &reservation{p: p}
	w := &waiter{r: r, ctx: ctx, wake: make(chan struct{}, 1)}
	var t timer
	defer t.reset()

	p.mu.Lock()
	start := clock.Now()
	p.estimateLocked(r, &c.info)
	p.budget.queue = append(p.budget.queue, w)
	for {
		now := clock.Now()
		if p.budget.queue[0] == w && !w.granted && !p.blockedLocked() {
			p.askLocked(w, start) // unlocks around the store call
			now = clock.Now()
		}
		if w.err == nil && w.granted && !now.Before(w.sendAt) {
			p.removeLocked(w)
			p.evaluateAlertsLocked(now)
			p.wakeHeadLocked()
			p.unlock(ctx, c)
			c.addWait("budget", now.Sub(start))
			return r, nil
		}
		switch {
		case w.err != nil:
		case w.granted:
			t.set(clock, now, w.sendAt) // granted ahead: hold the head until then
		case p.budget.queue[0] == w && w.timed:
			t.set(clock, now, w.retryAt)
		default:
			t.reset()
		}
		if w.err == nil {
			p.unlock(ctx, c)
			select {
			case <-ctx.Done():
				w.err = ctx.Err()
			case <-w.wake:
			case <-t.c:
				t = timer{}
			}
			p.mu.Lock()
		}
		if w.err != nil {
			p.leaveLocked(w)
			p.unlock(ctx, c)
			c.addWait("budget", clock.Now().Sub(start))
			return nil, w.err
		}
	}
}

// askLocked asks the store to admit w's attempt and records the answer in
// w. p.mu is held on entry and on return, but not during the call.
func (p *pool) askLocked(w *waiter, start time.Time) {
	if err := p.awaitSettlingLocked(w.ctx); err != nil {
		w.timed, w.err = false, err
		return
	}
	clock, g := p.state.cfg.clock, p.state.guard
	st := g.pick()
	a := Admission{Limits: p.budget.limits, Cost: w.r.cost, MaxWait: grantAhead(w.ctx)}
	a.Start, a.HasStart = p.startLevelsLocked(clock.Now())
	a.Settle = p.takeSettlementsLocked(st)
	p.mu.Unlock()
	res, st, limits, err := g.admit(w.ctx, st, p.name, a)
	p.mu.Lock()
	now := clock.Now()
	w.timed = false
	if err != nil {
		w.err = err
		return
	}
	p.budget.mirror(now, res.Levels, !g.own && st != g.shared)
	switch {
	case res.Paused > 0:
		p.extendLocked(pause{until: now.Add(res.Paused), reason: "shared: " + res.PauseReason}, true)
		if err := p.hopelessLocked(w.ctx, now, start); err != nil {
			w.err = err
			return
		}
		w.retryAt, w.timed = now.Add(res.Paused), true
	case !res.Granted:
		w.retryAt, w.timed = now.Add(res.Wait), true
	default:
		p.grantLocked(now, w.r, st, limits, res)
		w.granted, w.sendAt = true, now.Add(res.Wait)
	}
}

// startLevelsLocked returns what this process knows of the levels now,
// for a store that has lost them (or never had them): the levels a store
// last reported (the local fallback's read as this process's share of the
// whole), and what the server last said remains, each refilled since,
// whichever is lower.
func (p *pool) startLevelsLocked(now time.Time) (start [NumDimensions]float64, has [NumDimensions]bool) {
	b := &p.budget
	rounding := dialectOf(p.key.Provider).rounding
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
		if r := p.readings.Limits[d]; r.HasRemaining && !p.readings.Observed.IsZero() {
			refill := float64(l) * max(now.Sub(p.readings.Observed), 0).Minutes()
			level = min(level, float64(r.Remaining)+rounding[d]+refill)
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
	if n := b.cfg.maxConcurrency; n > 0 && b.inFlight >= n {
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
	case q[0].granted:
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
			b.held[d] += r.stored[d]
		}
	}
	r.store = st
	r.sentAt, r.storeSentAt = now.Add(res.Wait), res.Levels.At.Add(res.Wait)
	r.slot = true
	b.inFlight++
	if !b.limitsKnown() {
		r.probe, b.probing = true, true
	}
}

// wakeHeadLocked tells the head of the queue that its wait may be shorter
// now: it asks the store again.
func (p *pool) wakeHeadLocked() {
	if len(p.budget.queue) > 0 {
		select {
		case p.budget.queue[0].wake <- struct{}{}:
		default:
		}
	}
}

// removeLocked takes w out of the queue, keeping the order.
func (p *pool) removeLocked(w *waiter) {
	q := p.budget.queue
	for i, x := range q {
		if x == w {
			copy(q[i:], q[i+1:])
			q[len(q)-1] = nil
			p.budget.queue = q[:len(q)-1]
			return
		}
	}
}

// leaveLocked takes w out of the queue for good, as it will not be sent:
// everything it was granted is given back, and the next in line goes.
func (p *pool) leaveLocked(w *waiter) {
	p.removeLocked(w)
	if w.granted {
		p.releaseLocked(w.r, true)
		p.doneLocked(w.r)
	}
	p.wakeHeadLocked()
}

// responded learns from an attempt's response headers as soon as they
// arrive: it refunds a 429, learns limits, pulls levels down to what the
// server says remains and opens the cold-start gate. It queues for the
// store only what cannot wait for the attempt's settlement: the refund of
// a 429, the charge of a limit just learned, or news that less remains
// than the store held when this process last asked.
func (p *pool) responded(r *reservation, res response) {
	p.mu.Lock()
	now := p.state.cfg.clock.Now()
	r.status = res.status
	learned := p.learnLocked(r, res.headers)
	switch {
	case res.status == http.StatusTooManyRequests:
		p.refundAllLocked(r)
	case learned || p.newsLocked(now, r):
		p.syncLocked(r, true)
	}
	if res.status >= 200 && res.status < 300 && !p.budget.limitsKnown() {
		p.budget.unpaced = true
	}
	p.releaseProbeLocked(r)
	p.wakeHeadLocked()
	p.unlock(nil, nil)
}

// settle is called when r's exchange is done: it frees r's slot and settles
// its charges to the usage the response reported.
func (r *reservation) settle(ex *exchange) {
	res := ex.result()
	u, _ := ex.outcome()
	p := r.p
	p.mu.Lock()
	now := p.state.cfg.clock.Now()
	status := res.status
	if status == 0 {
		status = r.status
	}
	p.releaseLocked(r, false)
	switch {
	case r.refunded:
	case status == http.StatusTooManyRequests:
		p.refundAllLocked(r)
	case status == 0:
		r.charged[Tokens], r.charged[InputTokens], r.charged[OutputTokens] = 0, 0, 0
	default:
		p.settleUsageLocked(r, status, u)
	}
	p.syncLocked(r, true)
	p.doneLocked(r)
	for d := range NumDimensions {
		p.budget.window.add(now, d, r.charged[d])
	}
	p.evaluateAlertsLocked(now)
	p.wakeHeadLocked()
	p.unlock(nil, nil)
}

// newsLocked reports whether r's response said less remains, in some
// dimension, than the store's level as this process last saw it.
func (p *pool) newsLocked(now time.Time, r *reservation) bool {
	for d := range NumDimensions {
		if r.hasFloor[d] && p.budget.limits[d] > 0 && p.budget.levelKnown[d] {
			refill := float64(p.budget.limits[d]) * max(now.Sub(r.sentAt), 0).Minutes()
			if p.budget.levelNow(now, d) > r.floor[d]+refill {
				return true
			}
		}
	}
	return false
}

// syncLocked queues for the store what r is charged beyond what the store
// holds of it, in every dimension whose limit is known, and, when floors
// is set, what r's response said remains. The settlement rides with the
// next admission this process asks of the same store, or goes on its own
// when none is coming (pool.unlock sees to it). When the store cannot be
// reached, nothing is lost for good: its buckets refill on their own.
func (p *pool) syncLocked(r *reservation, floors bool) {
	st, g := r.store, p.state.guard
	if st == nil || !g.usable(st) {
		return
	}
	s := Settlement{Limits: g.limitsFor(st, p.budget.limits), SentAt: r.storeSentAt}
	changed := false
	for d, l := range s.Limits {
		if l <= 0 {
			continue
		}
		if delta := r.charged[d] - r.stored[d]; delta != 0 {
			s.Charge[d], changed = delta, true
			p.budget.held[d] += delta
			r.stored[d] = r.charged[d]
		}
		if floors && r.hasFloor[d] {
			s.Floor[d], s.HasFloor[d], changed = r.floor[d], true, true
			r.hasFloor[d] = false
		}
	}
	if changed {
		p.queueSettlementLocked(st, s)
	}
}

// doneLocked marks r settled: its charges are final.
func (p *pool) doneLocked(r *reservation) {
	if !r.settled {
		r.settled = true
		for d, n := range r.stored {
			p.budget.held[d] -= n
		}
	}
}

// refundAllLocked gives back everything r is charged, once.
func (p *pool) refundAllLocked(r *reservation) {
	if !r.refunded && !r.settled {
		r.charged = [NumDimensions]float64{}
		r.refunded = true
		p.syncLocked(r, false)
	}
}

// releaseLocked gives up r's slot and cold-start gate and, when all is set,
// everything it is charged.
func (p *pool) releaseLocked(r *reservation, all bool) {
	if all {
		p.refundAllLocked(r)
	}
	if r.slot {
		r.slot = false
		p.budget.inFlight--
	}
	p.releaseProbeLocked(r)
}

func (p *pool) releaseProbeLocked(r *reservation) {
	if r.probe {
		r.probe, p.budget.probing = false, false
	}
}

// learnLocked takes the limits the headers report and notes in r what they
// say remains (its floor, below). It reports whether a limit was learned or
// changed.
//
// The floor of a dimension is what the server's remaining reading allows
// the level to have been when r was sent; the store lowers the level to it
// plus the refill since. The server took the reading somewhere between r's
// send and the arrival of its headers, having counted any of the other
// attempts in flight, so the reading is turned into the most the level can
// be, never less: the refill since r was sent is added (by the store),
// nothing charged meanwhile is subtracted, and a value rounded to a unit
// (Anthropic's token headers) is read as the top of its interval. The level
// is only ever lowered: more room on the server's side is the estimates
// being cautious, which settling corrects.
func (p *pool) learnLocked(r *reservation, h RateLimitHeaders) bool {
	b := &p.budget
	dl := dialectOf(cmpOr(h.Provider, p.key.Provider))
	learned := false
	for d := range NumDimensions {
		reading := h.Limits[d]
		if !dl.learn[d] {
			continue
		}
		if reading.HasLimit && reading.Limit > 0 && (b.limits[d] != reading.Limit || b.sources[d] != LimitFromHeaders) {
			if b.limits[d] <= 0 {
				b.level[d], b.levelKnown[d] = float64(reading.Limit), true // a bucket the store has not seen starts full
			}
			learned = learned || b.limits[d] != reading.Limit
			b.limits[d], b.sources[d] = reading.Limit, LimitFromHeaders
		}
		if reading.HasRemaining && b.limits[d] > 0 {
			r.floor[d] = min(float64(b.limits[d]), float64(reading.Remaining)+dl.rounding[d])
			r.hasFloor[d] = true
		}
	}
	return learned
}

func cmpOr(p, q Provider) Provider {
	if p != "" {
		return p
	}
	return q
}

func (p *pool) budgetSnapshotLocked(now time.Time) BudgetSnapshot {
	b := &p.budget
	used := b.window.sum(now)
	snap := BudgetSnapshot{
		Limits:        limitsOf(b.limits),
		ColdStart:     !b.limitsKnown() && !b.unpaced,
		InFlight:      b.inFlight,
		Waiting:       len(b.queue),
		BytesPerToken: b.ratio.mean,
		Tier:          tierOf(p.key.Provider, limitsOf(b.limits)),
		Fallback:      p.state.guard.isDown(),
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

// closeRequestBody closes the body of a request that will not be sent, as
// a RoundTripper must.
func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
