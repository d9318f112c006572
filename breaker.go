package tollgate

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Breaker returns the layer that stops sending what the server would refuse.
// The Budget layer paces what this process knows; the breaker reacts to what
// only the server knows: other clients draining the same limits, overload,
// the spend cap. It keeps one circuit breaker per Key (provider, model
// family), shared by every call through s.
//
// A Key's breaker opens, for every caller, when an attempt's response shows:
//
//   - a limit (requests, tokens, input or output tokens) with less remaining
//     than the next typical request needs: for as long as that limit takes to
//     refill the deficit at its rate (limit per minute), never past its reset
//     (when the bucket is full, often a minute away); the longest such wait
//     over the limits wins. The typical request is learned from the usage of
//     recent calls: a moving average of their input and output tokens, at
//     least 1 of each.
//   - a 429 with retry-after (or retry-after-ms): until then.
//   - a 429 that says the spend cap is reached: for WithSpendLimitPause
//     (default 10 minutes); every caller fails fast meanwhile, waiting or not.
//   - the WithBreakerThreshold-th consecutive failure (default 5): a 5xx
//     status (529 overloaded, 502, 503, 504, …), a 408, a 429 that gives no
//     wait (and no x-should-retry: false, which is about the request alone),
//     a connection failure, or an overloaded_error in a stream; for the
//     WithBackoff base, doubled for each consecutive trip and capped at the
//     WithBackoff maximum.
//
// Other client errors (4xx) and attempts whose context ended count neither as
// successes nor as failures. A success counts once Observe has seen the end
// of its body (a stream can still fail), failures and waits as soon as the
// response arrives. A response that opens a breaker already open moves its
// deadline only later, never earlier. Results of attempts admitted before the
// breaker last changed state do not count (gobreaker's generations), but a
// wait the server asked for is honoured whenever it arrives.
//
// When the deadline has passed the breaker is half-open: one attempt, the
// probe, goes first; the others wait for its verdict, which is its response
// status and headers (not its body). A successful probe closes the breaker, a
// failed one opens it again, and after any other answer the next caller
// probes.
//
// An attempt that finds its breaker open waits, on the State's clock, until
// the deadline and then for the probe's verdict, as long as its context
// allows; the time is added to the call's Waits.Pause. It does not wait
// hopelessly: when the deadline is further away than WithMaxPause (default
// WithMaxWait) allows in total, or beyond the request's context deadline, it
// returns at once, without sending. When the server asked for the pause (a
// 429 with retry-after), it returns the server's own 429 again — its status,
// headers and error body, with retry-after brought down to what is left and
// the ReplayedHeader set — so that an SDK sees the error it knows, never one
// of tollgate's. For a pause no server asked for, it returns an *OpenError.
// Every attempt in fail-fast mode (WithFailFast) gets an *OpenError too,
// including those that find the probe in flight (their OpenError.Until is
// zero). An *OpenError matches ErrOpen, which the Retry layer does not
// retry: the caller learns at once when the breaker expects to let requests
// through and why.
//
// State changes are reported to the WithBreakerStateChange callback and shown
// in Snapshot. A nil s gets a State of its own with default options.
func Breaker(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return &breakerLayer{state: s, next: orDefault(next)}
	}
}

// Breaker defaults.
const (
	DefaultBreakerThreshold = 5                // consecutive failures that open a breaker
	DefaultSpendLimitPause  = 10 * time.Minute // how long the spend cap keeps a breaker open
)

// breakerSettings are the Breaker layer's options; zero values mean the
// defaults, which newBreakers fills in.
type breakerSettings struct {
	failFast        bool
	threshold       int
	maxPause        time.Duration
	spendLimitPause time.Duration
	onStateChange   func(BreakerEvent)
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

// WithMaxPause caps how long in total one attempt waits for an open breaker
// to reopen (default: WithMaxWait). An attempt that would wait longer gets an
// *OpenError at once. Values of zero or below keep the default.
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
// in order for each Key, one call at a time per Key, from a goroutine making
// requests and with no lock held (f may call Snapshot). A change that only
// time causes (open to half-open when the deadline passes) is reported when
// tollgate next looks at the breaker. f should return quickly.
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

func (l *breakerLayer) RoundTrip(req *http.Request) (*http.Response, error) {
	req, c := l.state.callFor(req)
	req, ex := l.state.exchangeFor(req, c)
	k := l.state.breakers.circuit(c.key)
	ctx := req.Context()
	ticket, probe, err := k.admit(ctx, c)
	if rp, ok := err.(*replay); ok {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return rp.response(req), nil
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if ticket != nil { // next panicked: free the probe slot
			k.report(ctx, ticket, verdict{err: errExcluded})
		}
	}()
	resp, err := l.next.RoundTrip(req)
	v := k.judge(ctx, ex, resp, err)
	later := ticket
	ticket = nil
	// A success is judged when Observe completes the exchange, once the
	// caller has read the body: a stream can still fail. The probe is judged
	// now, so that the others need not wait for its body.
	if v.err != nil || probe || !ex.isSent() {
		k.report(ctx, later, v)
		later = nil
	}
	ex.whenDone(func(ex *exchange) { k.complete(ctx, ex, later) })
	return resp, err
}

// breakers holds the Breaker layer's state for every Key.
type breakers struct {
	cfg      *config
	settings breakerSettings // with the defaults filled in
	// trace, when set, is told of every state change, after the
	// WithBreakerStateChange callback and in the same way, with the context
	// of the attempt that caused or noticed it: the Trace layer's hook
	// (State.traceBreakerChange), set once by NewState.
	trace func(ctx context.Context, k Key, from, to, reason string)
	// publish, when set, puts a pause this process took into the store, so
	// that every Transport sharing it pauses too (budget.publishPause, set
	// once by NewState). It is called with no lock held.
	publish func(k Key, d time.Duration, reason string)

	mu       sync.Mutex
	circuits map[Key]*circuit
}

func newBreakers(cfg *config) *breakers {
	st := cfg.breaker
	st.threshold = cmp.Or(st.threshold, DefaultBreakerThreshold)
	st.maxPause = cmp.Or(st.maxPause, cfg.maxWait)
	st.spendLimitPause = cmp.Or(st.spendLimitPause, DefaultSpendLimitPause)
	return &breakers{cfg: cfg, settings: st, circuits: make(map[Key]*circuit)}
}

func (b *breakers) notify(ctx context.Context, ev BreakerEvent) {
	if f := b.settings.onStateChange; f != nil {
		f(ev)
	}
	if b.trace != nil {
		b.trace(ctx, ev.Key, string(ev.From), string(ev.To), ev.Reason)
	}
}

// circuit returns the breaker of k, creating it closed.
func (b *breakers) circuit(k Key) *circuit {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.circuits[k]
	if c == nil {
		c = newCircuit(b, k)
		b.circuits[k] = c
	}
	return c
}

// known returns the Keys that have a breaker.
func (b *breakers) known() []Key {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Collect(maps.Keys(b.circuits))
}

func (b *breakers) snapshot(k Key, now time.Time) BreakerSnapshot {
	b.mu.Lock()
	c := b.circuits[k]
	b.mu.Unlock()
	if c == nil {
		return BreakerSnapshot{State: BreakerClosed}
	}
	return c.snapshot(now)
}

// A circuit is one Key's breaker: gobreaker's state machine and counts, and
// beside them the deadline of the open state.
//
// gobreaker's Timeout is one fixed duration on the wall clock; here each trip
// decides its own (a refill, a retry-after, a backoff) on tollgate's clock.
// So gobreaker's Timeout is 1ns: its open state only marks that a trip
// happened, and openUntil says how long it lasts. An attempt asks gobreaker
// only once openUntil has passed; gobreaker is half-open then and lets one
// probe through. Every call into gobreaker is made with mu held, so its
// callbacks (ReadyToTrip, OnStateChange) run under mu too.
type circuit struct {
	key Key
	b   *breakers
	cb  *gobreaker.TwoStepCircuitBreaker[struct{}]

	mu        sync.Mutex
	cbState   gobreaker.State // gobreaker's state as of its last change
	openUntil time.Time       // attempts wait until then
	reason    string          // why it opened
	cause     error           // the server's error that opened it, for OpenError.Err
	refuse    bool            // waiting cannot help (spend cap): fail fast even in wait mode
	answer    *serverAnswer   // the 429 that asked for the pause, if one did
	trips     int             // openings since the last close
	tripping  *pause          // the pause the verdict being reported asks for
	failure   string          // what the last failure was: an overload trip's reason
	// failureWait is the wait the last failure's response asked for, nil
	// when it asked for none.
	failureWait *time.Duration
	changed     chan struct{} // closed (and replaced) when a verdict came: the probe slot may be free
	waiting     int           // attempts waiting for the deadline
	onProbe     int           // attempts waiting on changed for the probe's verdict
	typical     typicalCost

	shown      BreakerState // the state last reported
	shownUntil time.Time    // the deadline last reported
	outbox     []noted      // events to deliver
	delivering bool
	publish    *pause // a pause of this process's to put into the store
}

// noted is an event and the context of the attempt that caused or noticed it.
type noted struct {
	ctx context.Context
	ev  BreakerEvent
}

func newCircuit(b *breakers, k Key) *circuit {
	c := &circuit{key: k, b: b, changed: make(chan struct{}), shown: BreakerClosed}
	c.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        k.String(),
		MaxRequests: 1,
		Timeout:     time.Nanosecond,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return c.tripping != nil || n.ConsecutiveFailures >= uint32(b.settings.threshold)
		},
		OnStateChange: c.onStateChange,
		IsSuccessful:  func(err error) bool { return err == nil },
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return c
}

// A pause is a deadline a verdict asks every caller to wait for.
type pause struct {
	until  time.Time
	reason string
	cause  error
	refuse bool
	// answer is the server's 429 that asked for the pause, replayed to the
	// callers that cannot wait it out; nil for pauses of other kinds.
	answer *serverAnswer
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
	serverWait    time.Duration
	hasServerWait bool
	pause         *pause // for errPause
}

// onStateChange runs under mu, inside a call into gobreaker.
func (c *circuit) onStateChange(_ string, _, to gobreaker.State) {
	c.cbState = to
	switch to {
	case gobreaker.StateOpen:
		c.trips++
		p := c.tripping
		if p == nil {
			wait := c.overloadPause()
			if c.failureWait != nil {
				wait = *c.failureWait // the server said how long; it knows best
			}
			p = &pause{until: c.b.cfg.clock.Now().Add(wait), reason: c.failure}
		}
		c.extend(*p)
	case gobreaker.StateClosed:
		c.trips, c.reason, c.cause, c.refuse, c.answer = 0, "", nil, false, nil
	}
}

// overloadPause is how long a trip on failures keeps the breaker open: the
// backoff base doubled for each consecutive trip, capped at the backoff max.
func (c *circuit) overloadPause() time.Duration {
	d, ceiling := c.b.cfg.backoffBase, c.b.cfg.backoffMax
	for i := 1; i < c.trips && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// extend moves the deadline to p.until if that is later, and has it put
// into the store.
func (c *circuit) extend(p pause) {
	if p.until.After(c.openUntil) {
		c.openUntil, c.reason, c.cause, c.refuse, c.answer = p.until, p.reason, p.cause, p.refuse, p.answer
		c.publish = &p
	}
}

// sharedSlack is how much later than the deadline in force a pause found in
// the store must end to move it: the store's clock and this process's
// disagree by the time its answer took to arrive.
const sharedSlack = 10 * time.Millisecond

// shared notes a pause found in the store, taken by another Transport, that
// lasts d from now, and returns the *OpenError for an attempt that cannot
// wait it out (fail-fast mode, a pause beyond WithMaxPause or ctx's
// deadline); nil when it can.
func (c *circuit) shared(ctx context.Context, d time.Duration, reason string) error {
	c.mu.Lock()
	now := c.b.cfg.clock.Now()
	until := now.Add(d)
	if until.Sub(c.openUntil) > sharedSlack {
		c.openUntil, c.reason, c.cause, c.refuse, c.answer = until, "shared: "+reason, nil, false, nil
	}
	var err error
	if st := &c.b.settings; st.failFast || d > st.maxPause || outlasts(ctx, d) {
		err = c.openError(until)
	}
	c.unlock(ctx, now)
	return err
}

// admit waits until the breaker lets an attempt through and returns the
// ticket to report its verdict with and whether it is the probe; or an
// *OpenError; or ctx's error.
func (c *circuit) admit(ctx context.Context, call *call) (ticket func(error), probe bool, err error) {
	clock, st := c.b.cfg.clock, &c.b.settings
	start := clock.Now()
	paused := false // only a wait on an open breaker or on its probe is a pause
	defer func() {
		if waited := clock.Now().Sub(start); paused && waited > 0 {
			call.addWait(func(w *Waits) { w.Pause += waited })
		}
	}()
	for {
		c.mu.Lock()
		now := clock.Now()
		if wait := c.openUntil.Sub(now); wait > 0 {
			if st.failFast || c.refuse || wait > st.maxPause-now.Sub(start) || outlasts(ctx, wait) {
				var err error = c.openError(c.openUntil)
				if c.answer != nil && !st.failFast && !c.refuse {
					// The server asked for this wait: a caller that cannot
					// wait it out gets the server's own answer, not ours.
					err = &replay{answer: c.answer, until: c.openUntil, now: now}
				}
				c.unlock(ctx, now)
				return nil, false, err
			}
			c.waiting++
			c.unlock(ctx, now)
			paused = true
			err := sleep(ctx, clock, wait)
			c.mu.Lock()
			c.waiting--
			c.mu.Unlock()
			if err != nil {
				return nil, false, err
			}
			continue
		}
		ticket, err := c.cb.Allow()
		switch {
		case err == nil:
			probe := c.cbState == gobreaker.StateHalfOpen
			c.unlock(ctx, now)
			return ticket, probe, nil
		case errors.Is(err, gobreaker.ErrOpenState):
			c.unlock(ctx, now)
			runtime.Gosched() // gobreaker's 1ns open state is not over yet
			continue
		case st.failFast:
			err := c.openError(time.Time{})
			c.unlock(ctx, now)
			return nil, false, err
		}
		changed := c.changed
		c.onProbe++
		c.unlock(ctx, now)
		paused = true
		select { // the probe is in flight
		case <-ctx.Done():
			c.mu.Lock()
			if c.changed == changed { // else report counted this attempt out already
				c.onProbe--
			}
			c.mu.Unlock()
			return nil, false, ctx.Err()
		case <-changed:
		}
	}
}

// outlasts reports whether ctx's deadline comes before d has passed.
// Deadlines are wall-clock times whatever clock tollgate runs on.
func outlasts(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return ok && time.Until(deadline) < d
}

func (c *circuit) openError(until time.Time) *OpenError {
	return &OpenError{Key: c.key, Until: until, Reason: c.reason, Err: c.cause}
}

// report tells the breaker one attempt's verdict; ctx is the attempt's.
func (c *circuit) report(ctx context.Context, ticket func(error), v verdict) {
	c.mu.Lock()
	now := c.b.cfg.clock.Now()
	if v.err == errFailure {
		c.failure, c.failureWait = v.failure, nil
		if v.hasServerWait {
			c.failureWait = &v.serverWait
		}
	}
	c.tripping = v.pause
	ticket(v.err) // a no-op when the state changed since the attempt was admitted
	// A wait the server asks for holds whenever the attempt was admitted: if
	// the breaker is closed still (the ticket was stale), open it on a fresh
	// ticket, so that a probe goes first when the wait is over.
	if v.pause != nil && c.cbState == gobreaker.StateClosed {
		if fresh, err := c.cb.Allow(); err == nil {
			fresh(v.err)
		}
	}
	if v.pause != nil {
		c.extend(*v.pause)
	}
	c.tripping = nil
	close(c.changed)
	c.changed, c.onProbe = make(chan struct{}), 0
	c.unlock(ctx, now)
}

// judge turns an attempt's outcome into a verdict.
func (c *circuit) judge(ctx context.Context, ex *exchange, resp *http.Response, err error) verdict {
	now := c.b.cfg.clock.Now()
	if err != nil {
		if ctx.Err() != nil || !retryableError(err) {
			return verdict{err: errExcluded}
		}
		return verdict{err: errFailure, failure: "connection failure"}
	}
	r := observed(ex, resp, now)
	c.mu.Lock()
	typical := c.typical
	c.mu.Unlock()
	sentAt := now
	if ex != nil && !ex.sendTime().IsZero() {
		sentAt = ex.sendTime()
	}
	wait, short := refillPause(r.headers, typical, sentAt, now)
	switch tooMany := r.status == http.StatusTooManyRequests; {
	case tooMany && r.apiErr.isSpendCap():
		return verdict{err: errPause, pause: &pause{until: now.Add(c.b.settings.spendLimitPause),
			reason: "spend limit reached", cause: r.apiErr, refuse: true}}
	case tooMany && r.headers.HasRetryAfter:
		return verdict{err: errPause, pause: &pause{until: now.Add(r.headers.RetryAfter), reason: "retry-after",
			answer: answerOf(ex, resp)}}
	case wait > 0 && (tooMany || r.status < 400):
		return verdict{err: errPause, pause: &pause{until: now.Add(wait), reason: short.String() + " refill"}}
	case tooMany && r.headers.ShouldRetry == ShouldRetryFalse:
		return verdict{err: errExcluded} // this request can never go (larger than the limit)
	case tooMany:
		return verdict{err: errFailure, failure: "rate limited"}
	case r.status == 529:
		return verdict{err: errFailure, failure: "overloaded",
			serverWait: r.headers.RetryAfter, hasServerWait: r.headers.HasRetryAfter}
	case r.status >= 500 || r.status == http.StatusRequestTimeout:
		return verdict{err: errFailure, failure: "server error",
			serverWait: r.headers.RetryAfter, hasServerWait: r.headers.HasRetryAfter}
	case r.status >= 400:
		return verdict{err: errExcluded}
	}
	return verdict{}
}

// complete runs when an exchange is complete: it learns what a typical
// request costs from the usage and, given the ticket of a success status,
// judges the body: an overloaded_error in a stream or a connection lost
// mid-body is a failure.
func (c *circuit) complete(ctx context.Context, ex *exchange, ticket func(error)) {
	ex.mu.Lock()
	u, err := ex.usage, ex.err
	ex.mu.Unlock()
	if u.Reported {
		c.mu.Lock()
		c.typical.add(u)
		c.mu.Unlock()
	}
	if ticket == nil {
		return
	}
	switch {
	case u.StreamError != nil && u.StreamError.Type == "overloaded_error":
		c.report(ctx, ticket, verdict{err: errFailure, failure: "overloaded"})
	case err != nil && retryableError(err):
		c.report(ctx, ticket, verdict{err: errFailure, failure: "connection failure"})
	case err != nil:
		c.report(ctx, ticket, verdict{err: errExcluded})
	default:
		c.report(ctx, ticket, verdict{})
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

func (t *typicalCost) add(u Usage) {
	// Cache reads do not count against input tokens per minute.
	in, out := float64(u.InputTokens+u.CacheCreationInputTokens), float64(u.OutputTokens)
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
func refillPause(h RateLimitHeaders, typical typicalCost, sentAt, now time.Time) (time.Duration, Dimension) {
	var longest time.Duration
	var short Dimension
	dialect := dialectOf(h.Provider)
	rounding := dialect.rounding
	elapsed := max(now.Sub(sentAt), 0)
	for d := range numDimensions {
		// The budget's dialect table says which readings are limits of their
		// own (Anthropic's tokens-* repeats the tightest of input and output).
		if !dialect.learn[d] {
			continue
		}
		r := h.Limits[d]
		if !r.HasRemaining {
			continue
		}
		available := float64(r.Remaining) + rounding[d]
		if r.HasLimit && r.Limit > 0 {
			available += float64(r.Limit) * elapsed.Minutes()
		}
		deficit := typical.need(d) - available
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

// stateAt is the state callers see at now.
func (c *circuit) stateAt(now time.Time) BreakerState {
	switch {
	case now.Before(c.openUntil):
		return BreakerOpen
	case c.cbState == gobreaker.StateClosed:
		return BreakerClosed
	}
	return BreakerHalfOpen
}

// unlock notes a change of state since the last one reported, releases mu
// and delivers the events noted, in order and with no lock held. ctx is the
// attempt's that caused or noticed the change.
func (c *circuit) unlock(ctx context.Context, now time.Time) {
	if p := c.publish; p != nil && c.b.publish != nil {
		c.publish = nil
		defer c.b.publish(c.key, p.until.Sub(now), p.reason)
	}
	if to := c.stateAt(now); to != c.shown || (to == BreakerOpen && !c.openUntil.Equal(c.shownUntil)) {
		ev := BreakerEvent{Key: c.key, From: c.shown, To: to, At: now}
		if to != BreakerClosed {
			ev.Reason = c.reason
		}
		if to == BreakerOpen {
			ev.Until = c.openUntil
		}
		c.outbox = append(c.outbox, noted{ctx, ev})
		c.shown, c.shownUntil = to, ev.Until
	}
	if c.delivering || len(c.outbox) == 0 {
		c.mu.Unlock()
		return
	}
	c.delivering = true // this goroutine delivers, also what others note meanwhile
	for len(c.outbox) > 0 {
		events := c.outbox
		c.outbox = nil
		c.mu.Unlock()
		for _, n := range events {
			c.b.notify(n.ctx, n.ev)
		}
		c.mu.Lock()
	}
	c.delivering = false
	c.mu.Unlock()
}

func (c *circuit) snapshot(now time.Time) BreakerSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.cb.Counts()
	s := BreakerSnapshot{
		State:            c.stateAt(now),
		ConsecutiveTrips: c.trips,
		Waiting:          c.waiting + c.onProbe,
		Counts: BreakerCounts{Requests: n.Requests, Successes: n.TotalSuccesses, Failures: n.TotalFailures,
			Excluded: n.TotalExclusions, ConsecutiveSuccesses: n.ConsecutiveSuccesses, ConsecutiveFailures: n.ConsecutiveFailures},
		TypicalInputTokens:  c.typical.input,
		TypicalOutputTokens: c.typical.output,
	}
	if s.State != BreakerClosed {
		s.Reason = c.reason
	}
	if s.State == BreakerOpen {
		s.OpenUntil = c.openUntil
	}
	return s
}

// A serverAnswer is a 429 the server sent with a retry-after: its status,
// headers and (bounded, as Observe read it ahead) error body.
type serverAnswer struct {
	status int
	header http.Header
	body   []byte
}

// answerOf keeps what resp said, or nil when the body is not known (no
// Observe layer inside), since a 429 without its error body would not be
// the server's answer.
func answerOf(ex *exchange, resp *http.Response) *serverAnswer {
	if ex == nil || resp == nil {
		return nil
	}
	ex.mu.Lock()
	body := ex.errorBody
	ex.mu.Unlock()
	if body == nil {
		return nil
	}
	return &serverAnswer{status: resp.StatusCode, header: resp.Header.Clone(), body: body}
}

// replay is the breaker's refusal in wait mode of a pause the server asked
// for: the server's 429 again, with its wait brought up to date.
type replay struct {
	answer *serverAnswer
	until  time.Time
	now    time.Time
}

func (r *replay) Error() string { return "tollgate: the server's 429, replayed" }

// ReplayedHeader marks a response that the breaker answered with a copy of
// the server's own 429 instead of sending the request: the server had asked
// every caller to wait longer than this one could.
const ReplayedHeader = "X-Tollgate-Replayed"

func (r *replay) response(req *http.Request) *http.Response {
	h := r.answer.header.Clone()
	left := max(r.until.Sub(r.now), 0)
	h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(left.Seconds())), 10))
	h.Set("Retry-After-Ms", strconv.FormatInt(left.Milliseconds(), 10))
	h.Set(ReplayedHeader, "true")
	body := bytes.Clone(r.answer.body)
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", r.answer.status, http.StatusText(r.answer.status)),
		StatusCode:    r.answer.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}
