package tollgate

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"runtime"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Breaker returns the layer that stops sending what the server would
// refuse. The Budget layer paces what this process knows; the breaker
// reacts to what only the server knows: other clients draining the same
// limits, overload, the spend cap. It keeps one circuit breaker per Key,
// shared by every call through s, and opens it, for every caller, when a
// response shows a limit short of what the next typical request needs (a
// 429 that gives no wait; a success too, when s has no Budget layer, which
// otherwise paces that itself), a 429 asks for a wait (retry-after) or says
// the spend cap is reached, or WithBreakerThreshold consecutive attempts
// failed (5xx, 408, connection failures, an overloaded_error in a stream).
// The package documentation says how long each pause lasts.
//
// While a breaker is open, an attempt waits until it closes, on the State's
// clock, as long as its context allows; the time is added to the call's
// Waits.Pause. Then one attempt, the probe, goes first and the others wait
// for its verdict: its status, or, for a stream, its first output. An
// attempt that cannot wait — a pause the server asked for longer than
// WithMaxPause allows in total, a pause that outlasts its context's
// deadline, a refill pause past WithMaxQueueWait (a *QueueWaitError),
// fail-fast mode (WithFailFast), or the spend cap — is answered at once
// without being sent: with the
// server's own 429 (its status, headers and error body, retry-after brought
// down to what is left, ReplayedHeader set) when the server asked for the
// pause, else with an *OpenError that says when the breaker expects to let
// requests through and why. The Retry layer does not retry an *OpenError.
//
// State changes are shown in Snapshot, recorded on the span of the attempt
// that caused or noticed them, and given to WithBreakerStateChange's
// callback. A nil s gets a State of its own with default options. The
// Observe layer is put under the layer when next has none of s's inside it.
func Breaker(s *State) Middleware {
	s = orNewState(s)
	s.pausing.Store(true)
	return func(next http.RoundTripper) http.RoundTripper {
		return &breakerLayer{state: s, next: s.observed(next)}
	}
}

// Breaker defaults.
const (
	DefaultBreakerThreshold = 5                // consecutive failures that open a breaker
	DefaultSpendLimitPause  = 10 * time.Minute // how long the spend cap keeps a breaker open
)

// breakerSettings are the Breaker layer's options, with the defaults filled
// in by newConfig.
type breakerSettings struct {
	failFast        bool
	threshold       int
	maxPause        time.Duration
	spendLimitPause time.Duration
	onStateChange   func(BreakerEvent)
}

func (b *breakerSettings) fillDefaults(maxWait time.Duration) {
	b.threshold = cmp.Or(b.threshold, DefaultBreakerThreshold)
	b.maxPause = cmp.Or(b.maxPause, maxWait)
	b.spendLimitPause = cmp.Or(b.spendLimitPause, DefaultSpendLimitPause)
}

// WithFailFast makes an open breaker refuse attempts at once with an
// *OpenError instead of making them wait for it to close.
func WithFailFast() Option {
	return func(c *config) { c.breaker.failFast = true }
}

// WithBreakerThreshold sets how many consecutive failures (overloads, server
// errors, connection failures) open a breaker (default 5). Values below 1
// keep the default.
func WithBreakerThreshold(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.breaker.threshold = n
		}
	}
}

// WithMaxPause caps how long in total one attempt waits on pauses the
// server asked for (a retry-after, an overload) before it is answered at
// once (see Breaker); default: WithMaxWait. Only the time spent on such
// pauses counts, not the attempt's time in the Budget layer's queue, and a
// refill pause (tollgate's own pacing) is not bounded by it. Values of zero
// or below keep the default.
func WithMaxPause(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.breaker.maxPause = d
		}
	}
}

// WithSpendLimitPause sets how long a breaker stays open after a 429 that
// says the spend cap is reached (default 10 minutes); then one probe finds
// out whether the cap was lifted. Values of zero or below keep the default.
func WithSpendLimitPause(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.breaker.spendLimitPause = d
		}
	}
}

// WithBreakerStateChange calls f with every state change of every breaker,
// in order, one call at a time, on a goroutine of tollgate's with no lock
// held (f may call Snapshot); a slow f delays later callbacks, never a
// request or a body read. A change that only time causes (open to
// half-open when the deadline passes) is reported when tollgate next looks
// at the breaker.
func WithBreakerStateChange(f func(BreakerEvent)) Option {
	return func(c *config) { c.breaker.onStateChange = f }
}

// BreakerState is the state of one Key's breaker.
type BreakerState string

// The breaker states.
const (
	BreakerClosed   BreakerState = "closed"    // attempts go through
	BreakerOpen     BreakerState = "open"      // attempts wait (or fail fast) until OpenUntil
	BreakerHalfOpen BreakerState = "half-open" // one probe goes through; the rest wait for its verdict
)

// BreakerEvent is one state change of a Key's breaker. From and To are both
// BreakerOpen when an open breaker's deadline moved later.
type BreakerEvent struct {
	Key      Key
	From, To BreakerState
	Until    time.Time // when an open breaker lets a probe through; zero unless To is BreakerOpen
	Reason   string    // why it opened, e.g. "retry-after", "overloaded", "requests refill"; empty when To is BreakerClosed
	At       time.Time // on the State's clock
}

// BreakerSnapshot is the Breaker layer's view of one Key.
type BreakerSnapshot struct {
	State     BreakerState
	OpenUntil time.Time // zero unless State is BreakerOpen
	Reason    string    // why it opened; empty when closed
	// ConsecutiveTrips counts the openings since the breaker was last closed.
	ConsecutiveTrips int
	// Waiting is the number of attempts waiting for the breaker now.
	Waiting int
	// Counts are gobreaker's counts since the state last changed.
	Counts BreakerCounts
	// TypicalInputTokens and TypicalOutputTokens are what the next request is
	// expected to cost, learned from recent usage (zero before any).
	TypicalInputTokens, TypicalOutputTokens float64
}

// BreakerCounts counts the attempts a breaker admitted since its state last
// changed, and their verdicts.
type BreakerCounts struct {
	Requests             uint32
	Successes            uint32
	Failures             uint32
	Excluded             uint32 // neither: client errors, attempts whose context ended
	ConsecutiveSuccesses uint32
	ConsecutiveFailures  uint32
}

type breakerLayer struct {
	state *State
	next  http.RoundTripper
}

func (l *breakerLayer) observes(s *State) bool { return observes(l.next, s) }

func (l *breakerLayer) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	req, c := l.state.callFor(req)
	req, ex := c.exchangeFor(req)
	p, ctx := c.pool, req.Context()
	ticket, probe, err := p.admitBreaker(ctx, c, ex)
	if err != nil {
		return refuse(req, ex, err)
	}
	defer func() {
		if ticket != nil { // next panicked: free the probe slot
			p.report(ctx, c, ticket, verdict{err: errExcluded})
		}
	}()
	resp, err = l.next.RoundTrip(req)
	v := p.judge(ctx, ex, resp, err)
	switch {
	case v.err != nil:
		p.report(ctx, c, ticket, v)
	case probe:
		// The others wait for the probe's verdict: a stream's, at its first
		// output, so that one that fails right after its headers (an
		// overloaded_error) counts as the failure it is.
		ex.whenOutput(&bodyJudge{ctx, c, ticket})
	default:
		// A success counts once its body has ended: a stream can still fail.
		ex.whenDone(&bodyJudge{ctx, c, ticket})
	}
	ticket = nil
	ex.whenDone((*typicalLearner)(p))
	p.publishPause()
	return resp, err
}

// A bodyJudge reports an attempt's verdict from what its body showed.
type bodyJudge struct {
	ctx    context.Context
	c      *call
	ticket func(error)
}

func (j *bodyJudge) exchanged(ex *exchange) {
	p := j.c.pool
	p.report(j.ctx, j.c, j.ticket, p.bodyVerdict(ex))
}

// circuitState is the Breaker layer's part of a pool: gobreaker's state
// machine and counts, and what it needs beside them. The deadline of the
// open state is the pool's pause.
//
// gobreaker's Timeout is one fixed duration on the wall clock, while each
// trip here lasts as long as its cause asks (a refill, a retry-after, a
// growing backoff) on tollgate's clock, which tests replace. So gobreaker's
// open state only marks that a trip happened (Timeout 1 ns) and the pause
// says how long it lasts: an attempt asks gobreaker only once the pause has
// passed, and gobreaker, half-open by then, lets one probe through. Every
// call into gobreaker is made with the pool's mutex held, so its callbacks
// run under it too.
type circuitState struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	cbState  gobreaker.State // gobreaker's state as of its last change
	trips    int             // openings since the last close
	tripping *pause          // the pause the verdict being reported asks for
	failure  string          // what the last failure was: an overload trip's reason
	// failureWait is the wait the last failure's response asked for, nil
	// when it asked for none.
	failureWait *time.Duration
	changed     chan struct{} // closed (and replaced) when a verdict came: the probe slot may be free
	waiting     int           // attempts waiting for the deadline
	onProbe     int           // attempts waiting on changed for the probe's verdict
	typical     typicalCost
	shown       BreakerState // the state last reported
	shownUntil  time.Time    // the deadline last reported
}

func (cs *circuitState) init(p *pool) {
	cs.changed, cs.shown = make(chan struct{}), BreakerClosed
	threshold := uint32(p.state.cfg.breaker.threshold)
	cs.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        p.key.String(),
		MaxRequests: 1,
		Timeout:     time.Nanosecond,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return cs.tripping != nil || n.ConsecutiveFailures >= threshold
		},
		OnStateChange: func(_ string, _, to gobreaker.State) { p.onStateChangeLocked(to) },
		IsSuccessful:  func(err error) bool { return err == nil },
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
}

// The verdicts, as the errors gobreaker's two-step done takes (nil: success).
var (
	errExcluded = errors.New("neither success nor failure")
	errFailure  = errors.New("failure")
	errPause    = errors.New("the server asks to wait")
)

// A verdict is what one attempt tells the breaker.
type verdict struct {
	err     error  // nil, errExcluded, errFailure or errPause
	failure string // for errFailure: what failed
	// serverWait is, for errFailure, the wait the failed response asked for
	// (retry-after on a 529 or 5xx), when it asked: a trip on it pauses for
	// that rather than for the breaker's own backoff.
	serverWait *time.Duration
	pause      *pause // for errPause
}

// onStateChangeLocked runs inside a call into gobreaker.
func (p *pool) onStateChangeLocked(to gobreaker.State) {
	cs := &p.circuit
	cs.cbState = to
	switch to {
	case gobreaker.StateOpen:
		cs.trips++
		q := cs.tripping
		if q == nil {
			wait := p.overloadPause()
			if cs.failureWait != nil {
				wait = *cs.failureWait // the server said how long; it knows best
			}
			q = &pause{until: p.state.cfg.clock.Now().Add(wait), reason: cs.failure}
		}
		p.extendLocked(*q, false)
	case gobreaker.StateClosed:
		cs.trips = 0
		p.pause = pause{until: p.pause.until}
	}
}

// overloadPause is how long a trip on failures keeps the breaker open: the
// backoff base doubled for each consecutive trip, capped at the backoff max.
func (p *pool) overloadPause() time.Duration {
	cfg := &p.state.cfg
	d, ceiling := cfg.backoffBase, cfg.backoffMax
	for i := 1; i < p.circuit.trips && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// admitBreaker waits until the breaker lets attempt ex of c through and
// returns the ticket to report its verdict with and whether it is the
// probe; or the refusal of an attempt that cannot wait (an *OpenError, a
// *replay, or a *QueueWaitError for a refill pause past WithMaxQueueWait);
// or ctx's error.
func (p *pool) admitBreaker(ctx context.Context, c *call, ex *exchange) (ticket func(error), probe bool, err error) {
	clock := p.state.cfg.clock
	start := clock.Now()
	paused := false // only a wait on an open breaker or on its probe is a pause
	defer func() {
		if paused {
			c.addWait("pause", clock.Now().Sub(start))
		}
	}()
	var t timer
	defer t.reset()
	p.mu.Lock()
	for {
		now := clock.Now()
		if p.pause.until.After(now) {
			var deadline time.Time
			if capped := p.budget.cfg.maxQueueWait; capped > 0 && p.pause.pacing {
				deadline = ex.pacedSince(now).Add(capped)
			}
			if err := p.hopelessLocked(ctx, c, now, now.Sub(start), deadline); err != nil {
				p.unlock(ctx, c)
				return nil, false, err
			}
			paused = true
			if err := p.waitPauseLocked(ctx, c, &t); err != nil {
				p.unlock(ctx, c)
				return nil, false, err
			}
			continue
		}
		ticket, err := p.circuit.cb.Allow()
		switch {
		case err == nil:
			probe := p.circuit.cbState == gobreaker.StateHalfOpen
			p.unlock(ctx, c)
			return ticket, probe, nil
		case errors.Is(err, gobreaker.ErrOpenState):
			// gobreaker's 1 ns open state is not over on the wall clock yet.
			p.unlock(ctx, c)
			runtime.Gosched()
			p.mu.Lock()
		case p.state.cfg.breaker.failFast:
			err := p.openErrorLocked(time.Time{})
			p.unlock(ctx, c)
			return nil, false, err
		default: // the probe is in flight
			paused = true
			if err := p.waitProbeLocked(ctx, c); err != nil {
				p.unlock(ctx, c)
				return nil, false, err
			}
		}
	}
}

// waitPauseLocked waits, with p.mu released, until the pause in force ends
// or ctx is done.
func (p *pool) waitPauseLocked(ctx context.Context, c *call, t *timer) error {
	clock := p.state.cfg.clock
	p.circuit.waiting++
	t.set(clock, clock.Now(), p.pause.until)
	p.unlock(ctx, c)
	select {
	case <-ctx.Done():
	case <-t.c:
		*t = timer{}
	}
	p.mu.Lock()
	p.circuit.waiting--
	return ctx.Err()
}

// waitProbeLocked waits, with p.mu released, for the verdict of the probe
// in flight, or until ctx is done.
func (p *pool) waitProbeLocked(ctx context.Context, c *call) error {
	changed := p.circuit.changed
	p.circuit.onProbe++
	p.unlock(ctx, c)
	select {
	case <-ctx.Done():
		p.mu.Lock()
		if p.circuit.changed == changed { // else report counted this attempt out already
			p.circuit.onProbe--
		}
		return ctx.Err()
	case <-changed:
		p.mu.Lock()
		return nil
	}
}

// report tells the breaker one attempt's verdict; ctx is the attempt's.
func (p *pool) report(ctx context.Context, c *call, ticket func(error), v verdict) {
	p.mu.Lock()
	cs := &p.circuit
	if v.err == errFailure {
		cs.failure, cs.failureWait = v.failure, v.serverWait
	}
	cs.tripping = v.pause
	ticket(v.err) // a no-op when the state changed since the attempt was admitted
	// A wait the server asks for holds whenever the attempt was admitted: if
	// the breaker is closed still (the ticket was stale), open it on a fresh
	// ticket, so that a probe goes first when the wait is over.
	if v.pause != nil && cs.cbState == gobreaker.StateClosed {
		if fresh, err := cs.cb.Allow(); err == nil {
			fresh(v.err)
		}
	}
	if v.pause != nil {
		p.extendLocked(*v.pause, false)
	}
	cs.tripping = nil
	close(cs.changed)
	cs.changed, cs.onProbe = make(chan struct{}), 0
	p.unlock(ctx, c)
}

// judge turns an attempt's response (or its failure) into a verdict. A
// success is judged by bodyVerdict later.
func (p *pool) judge(ctx context.Context, ex *exchange, resp *http.Response, err error) verdict {
	if err != nil {
		if ctx.Err() != nil || !retryableError(err) {
			return verdict{err: errExcluded}
		}
		return verdict{err: errFailure, failure: "connection failure"}
	}
	r := ex.result()
	tooMany := r.status == http.StatusTooManyRequests
	switch q := ex.pauseTaken(); {
	case q != nil:
		return verdict{err: errPause, pause: q}
	case tooMany && r.headers.ShouldRetry == ShouldRetryFalse:
		return verdict{err: errExcluded} // this request can never go (larger than the limit)
	case tooMany:
		return verdict{err: errFailure, failure: "rate limited"}
	case r.status == 529:
		return verdict{err: errFailure, failure: "overloaded", serverWait: serverWait(r.headers)}
	case r.status >= 500 || r.status == http.StatusRequestTimeout:
		return verdict{err: errFailure, failure: "server error", serverWait: serverWait(r.headers)}
	case r.status >= 400:
		return verdict{err: errExcluded}
	}
	return verdict{}
}

// pauseFor returns the pause a response asks every caller of the pool to
// take, nil for none: the spend cap, a 429's retry-after, or a limit short
// of what the next typical request needs (on a success or a 429). It is
// taken where the headers are read (Observe), before anything else of the
// pool can admit another attempt. answer is the server's 429 to replay;
// nil when its error document is not known whole.
func (p *pool) pauseForLocked(r response, sentAt, now time.Time, answer *serverAnswer) *pause {
	tooMany := r.status == http.StatusTooManyRequests
	switch {
	case tooMany && isSpendCap(r.apiErr):
		return &pause{until: now.Add(p.state.cfg.breaker.spendLimitPause), reason: "spend limit reached", cause: r.apiErr, refuse: true}
	case tooMany && r.headers.HasRetryAfter:
		return &pause{until: now.Add(r.headers.RetryAfter), reason: "retry-after", answer: answer}
	case tooMany || r.status < 400 && !p.state.budgeting.Load():
		// A success that leaves a limit short is the Budget layer's to pace,
		// when there is one: it pulls its levels down to what the server says
		// remains, and its queue waits for the refill in order, each attempt
		// for its own cost. A 429 the server sent with no wait pauses
		// everyone, as does a short limit for a breaker that paces alone.
		if wait, short := refillPause(r.headers, p.circuit.typical, sentAt, now); wait > 0 {
			return &pause{until: now.Add(wait), reason: Dimension(short).String() + " refill", pacing: true}
		}
	}
	return nil
}

func serverWait(h RateLimitHeaders) *time.Duration {
	if !h.HasRetryAfter {
		return nil
	}
	return &h.RetryAfter
}

// bodyVerdict judges a successful response by what its body showed so far:
// an overloaded_error in a stream, or a connection lost mid-body, is a
// failure; a context that ended is neither.
func (p *pool) bodyVerdict(ex *exchange) verdict {
	u, err := ex.outcome()
	switch {
	case u.StreamError != nil && u.StreamError.Type == "overloaded_error":
		return verdict{err: errFailure, failure: "overloaded"}
	case err != nil && retryableError(err):
		return verdict{err: errFailure, failure: "connection failure"}
	case err != nil:
		return verdict{err: errExcluded}
	}
	return verdict{}
}

// A typicalLearner learns what a typical request of its pool costs from
// each completed exchange's usage.
type typicalLearner pool

func (t *typicalLearner) exchanged(ex *exchange) {
	p := (*pool)(t)
	if u, _ := ex.outcome(); u.Reported {
		p.mu.Lock()
		p.circuit.typical.add(u.InputTokens+u.CacheCreationInputTokens, u.OutputTokens)
		p.mu.Unlock()
	}
}

// typicalCost is what the next request is expected to cost: an exponentially
// weighted moving average of the tokens recent calls used.
type typicalCost struct {
	input, output float64
	seen          bool
}

// typicalWeight is the weight of the newest call in typicalCost.
const typicalWeight = 0.2

// add folds in one call's rate-limited input and its output.
func (t *typicalCost) add(input, output int64) {
	in, out := float64(input), float64(output)
	if !t.seen {
		t.input, t.output, t.seen = in, out, true
		return
	}
	t.input += typicalWeight * (in - t.input)
	t.output += typicalWeight * (out - t.output)
}

// need returns what the next request takes from dimension d: one request,
// or its tokens, at least one.
func (t typicalCost) need(d Dimension) float64 {
	switch d {
	case InputTokens:
		return max(t.input, 1)
	case OutputTokens:
		return max(t.output, 1)
	case Tokens:
		return max(t.input+t.output, 1)
	}
	return 1
}

// refillPause returns how long the server needs before the next typical
// request fits, and the dimension that needs longest. The server read its
// remaining amounts when it admitted the attempt, at the earliest when the
// attempt was sent (sentAt); by now the buckets have refilled for that long,
// and a value rounded to a unit (Anthropic's token headers) may be up to a
// unit below the truth. What is still missing after both is the deficit; its
// pause is the deficit refilled at limit per minute, never past the
// dimension's reset: the reset is when the bucket is full again, and one
// request needs far less than a full bucket. A fleet that uses its limit well
// always sees little remaining; only a deficit that refill has not yet made
// up is a reason to pause. It returns zero when no dimension is short.
func refillPause(h RateLimitHeaders, typical typicalCost, sentAt, now time.Time) (time.Duration, int) {
	var longest time.Duration
	var short int
	dl := dialectOf(h.Provider)
	rounding := dl.rounding
	elapsed := max(now.Sub(sentAt), 0)
	for d := range NumDimensions {
		// The dialect table says which readings are limits of their own
		// (Anthropic's tokens-* repeats the tightest of input and output).
		if !dl.learn[d] {
			continue
		}
		r := h.Limits[d]
		if !r.HasRemaining || r.HasLimit && r.Limit <= 0 {
			continue // a limit of zero is none to pace by, as for the budget
		}
		available := float64(r.Remaining) + rounding[d]
		if r.HasLimit && r.Limit > 0 {
			available += float64(r.Limit) * elapsed.Minutes()
		}
		deficit := typical.need(Dimension(d)) - available
		if deficit <= 0 {
			continue
		}
		var wait time.Duration
		if r.HasLimit && r.Limit > 0 {
			wait = time.Duration(deficit / float64(r.Limit) * float64(time.Minute))
		}
		if untilReset := r.Reset.Sub(now); !r.Reset.IsZero() && (wait == 0 || untilReset < wait) {
			wait = untilReset
		}
		if wait > longest {
			longest, short = wait, d
		}
	}
	return longest, short
}

// stateAtLocked is the state callers see at now.
func (p *pool) stateAtLocked(now time.Time) BreakerState {
	switch {
	case now.Before(p.pause.until):
		return BreakerOpen
	case p.circuit.cbState == gobreaker.StateClosed:
		return BreakerClosed
	}
	return BreakerHalfOpen
}

// breakerEventLocked returns the change of state since the one last
// reported, if any, and notes it as reported.
func (p *pool) breakerEventLocked(now time.Time) (BreakerEvent, bool) {
	cs := &p.circuit
	to := p.stateAtLocked(now)
	if to == cs.shown && (to != BreakerOpen || p.pause.until.Equal(cs.shownUntil)) {
		return BreakerEvent{}, false
	}
	ev := BreakerEvent{Key: p.key, From: cs.shown, To: to, At: now}
	if to != BreakerClosed {
		ev.Reason = p.pause.reason
	}
	if to == BreakerOpen {
		ev.Until = p.pause.until
	}
	cs.shown, cs.shownUntil = to, ev.Until
	return ev, true
}

func (p *pool) breakerSnapshotLocked(now time.Time) BreakerSnapshot {
	cs := &p.circuit
	n := cs.cb.Counts()
	s := BreakerSnapshot{
		State:            p.stateAtLocked(now),
		ConsecutiveTrips: cs.trips,
		Waiting:          cs.waiting + cs.onProbe,
		Counts: BreakerCounts{Requests: n.Requests, Successes: n.TotalSuccesses, Failures: n.TotalFailures,
			Excluded: n.TotalExclusions, ConsecutiveSuccesses: n.ConsecutiveSuccesses, ConsecutiveFailures: n.ConsecutiveFailures},
		TypicalInputTokens:  cs.typical.input,
		TypicalOutputTokens: cs.typical.output,
	}
	if s.State != BreakerClosed {
		s.Reason = p.pause.reason
	}
	if s.State == BreakerOpen {
		s.OpenUntil = p.pause.until
	}
	return s
}

// unlock releases p.mu after noting what changed — a breaker change, the
// utilization alerts queued, what waits for the store — and delivers it:
// the user's callbacks are queued on the State's notifier before p.mu is
// released, so that they run in the order the changes happened (the
// notifier runs them later, with no lock held); a breaker change goes to
// the call's observer with no lock held (ctx is the attempt's that caused
// or noticed it, nil for none); what waits for the store goes to a
// goroutine of its own unless an admission will carry it.
func (p *pool) unlock(ctx context.Context, c *call) {
	ev, changed := p.breakerEventLocked(p.state.cfg.clock.Now())
	if f := p.state.cfg.breaker.onStateChange; changed && f != nil {
		ev := ev // only a change that happened is copied for the callback
		p.state.notify.post(func() { f(ev) })
	}
	if f := p.budget.cfg.onAlert; f != nil {
		for _, a := range p.budget.alerts {
			p.state.notify.post(func() { f(a) })
		}
	}
	p.budget.alerts = nil
	p.kickFlushLocked()
	p.mu.Unlock()
	if changed && c != nil && c.observer != nil {
		c.observer.breakerChanged(ctx, ev)
	}
}
