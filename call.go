package tollgate

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/tollgate-go/tollgate/internal/reqscan"
	"github.com/tollgate-go/tollgate/internal/usage"
)

// This file holds the two records every layer reads: the call (one logical
// request, all its attempts) and the exchange (one attempt). It is the only
// file that takes their locks; the layers use the methods below.

// A call is one logical request through the chain, all attempts included.
// It is created once, by the outermost tollgate layer, and carried in the
// request context: the request is read once, here, and each attempt's
// response is read once, by Observe.
type call struct {
	state *State
	pool  *pool // the pool of limits the call draws on
	info  requestInfo
	start time.Time
	// Its place in the Budget layer's queue, from the request's context:
	// the priority class (normalized), the tenant (tenantName) and its
	// weight.
	priority Priority
	tenant   string
	weight   float64
	// observer is the Trace layer's record of the call; nil when the call
	// is not traced. It is set before the first attempt and not changed.
	observer callObserver

	mu        sync.Mutex
	attempts  int
	last      *exchange
	waits     Waits
	retryWait time.Duration // decided when a response is judged, served before the next attempt
}

// requestInfo is what tollgate reads from a request before sending it.
type requestInfo struct {
	provider  Provider
	operation string    // the GenAI operation: "chat", "count_tokens", "embeddings"; "" for others
	endpoint  *endpoint // the route, as dialect.go's table knows it; nil for others
	reqscan.Info
}

// A callObserver learns what happens to a call as it happens: the Trace
// layer's record. Its methods must return quickly and never block.
type callObserver interface {
	// attemptStarted is told of each attempt before it runs, and returns
	// the context the attempt runs in.
	attemptStarted(ctx context.Context, ex *exchange) context.Context
	// waited is told of every wait, by cause ("budget", "pause", "backoff").
	waited(cause string, d time.Duration, attempt int)
	// retryDecided is told what the Retry layer decided after an attempt.
	retryDecided(d retryDecision, attempt, status int)
	// breakerChanged is told of a breaker change an attempt of the call
	// caused or noticed, with that attempt's context.
	breakerChanged(ctx context.Context, ev BreakerEvent)
}

// Waits is how long a call spent waiting, by cause.
type Waits struct {
	Budget  time.Duration // for the budget to admit an attempt
	Pause   time.Duration // for an open breaker
	Backoff time.Duration // between attempts
}

type ctxKey struct{}

// callFor returns the call record carried by req, creating it (and a request
// that carries it) when req has none of this State's.
func (s *State) callFor(req *http.Request) (*http.Request, *call) {
	if c := s.callOf(req.Context()); c != nil {
		return req, c
	}
	c := s.newCall(req)
	return req.WithContext(c.context(req.Context())), c
}

// callOf returns the call of this State's that ctx carries, or nil.
func (s *State) callOf(ctx context.Context) *call {
	if c, ok := ctx.Value(ctxKey{}).(*call); ok && c.state == s {
		return c
	}
	return nil
}

// newCall reads req into a new call record.
func (s *State) newCall(req *http.Request) *call {
	provider, ep := classify(req)
	info := requestInfo{provider: provider, endpoint: ep, Info: reqscan.Read(req)}
	key := Key{Provider: provider, Account: accountOf(req.Header)}
	if ep != nil {
		info.operation = ep.operation
		key.Family = ep.pool
	}
	if key.Family == "" { // the model's pool
		key = s.keyOf(provider, info.Model, key.Account)
	}
	cl := classFrom(req.Context())
	return &call{state: s, info: info, pool: s.poolOf(key, ep), start: s.cfg.clock.Now(),
		priority: cl.priority.normalized(), tenant: tenantName(cl.tenant), weight: s.cfg.budget.weightOf(cl.tenant)}
}

// context returns ctx carrying c.
func (c *call) context(ctx context.Context) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(ctxKey{}).(*call)
	return c
}

// key returns the Key of the call's pool.
func (c *call) key() Key { return c.pool.key }

// addWait records d spent waiting for cause: "budget", "pause" or
// "backoff".
func (c *call) addWait(cause string, d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	switch cause {
	case "budget":
		c.waits.Budget += d
	case "pause":
		c.waits.Pause += d
	case "backoff":
		c.waits.Backoff += d
	}
	attempt := c.attempts
	c.mu.Unlock()
	if c.observer != nil {
		c.observer.waited(cause, d, attempt)
	}
}

// progress returns how many attempts have started and how long the call
// has waited.
func (c *call) progress() (attempts int, waits Waits) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts, c.waits
}

// lastExchange returns the most recent attempt, or nil before the first.
func (c *call) lastExchange() *exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// setRetryWait records the wait the Retry layer decided on; takeRetryWait
// returns it once.
func (c *call) setRetryWait(d time.Duration) {
	c.mu.Lock()
	c.retryWait = d
	c.mu.Unlock()
}

func (c *call) takeRetryWait() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.retryWait
	c.retryWait = 0
	return d
}

// An exchange is one attempt: a request sent and what came back. Observe
// fills it; the layers outside Observe register for its completion, which is
// when the response body reached EOF or was closed, or the attempt failed
// or was refused before it was sent.
type exchange struct {
	call    *call
	attempt int // 1 for the first attempt

	mu          sync.Mutex
	pacedAt     time.Time // when it first waited for tollgate's own pacing (WithMaxQueueWait)
	sent        bool
	sentAt      time.Time // when Observe handed the request to the base transport
	firstByteAt time.Time // when the first bytes of the body reached the caller
	status      int       // 0 when no response arrived
	headers     RateLimitHeaders
	apiErr      *APIError // the error document of a non-2xx response, when it had one
	stream      bool      // the response body is an event stream
	errorBody   []byte    // a non-2xx response's error document, when read whole
	pause       *pause    // the pause the response asked for, taken when its headers were read
	accounting  accounting
	usage       usage.Usage
	err         error // transport error, refusal, or the error that ended the body
	output      bool  // the body showed output, or ended
	done        bool
	observed    bool // an Observe layer has read the response (claimObserve)
	onOutput    hooks
	onDone      hooks
	// watcher is told how much output the stream has shown so far
	// (Produced); nil when no layer watches it.
	watcher outputWatcher
}

// An outputWatcher is told, while an event stream is read, how many bytes
// its output events have taken so far.
type outputWatcher interface {
	produced(outputBytes int64)
}

// watchOutput has w told of the output the stream shows from now on.
func (ex *exchange) watchOutput(w outputWatcher) {
	ex.mu.Lock()
	ex.watcher = w
	ex.mu.Unlock()
}

// accounting is what the Budget layer estimated an attempt would cost and
// what the server counted, for the Trace layer.
type accounting struct {
	known                               bool // the Budget layer admitted the attempt
	estInput, estCachedInput, estOutput int64
	output                              OutputAccounting
	counted                             bool // the attempt was settled to reported usage
	countedInput, countedOutput         int64
}

// account records what the Budget layer estimated, or (counted) what the
// server counted.
func (ex *exchange) account(f func(*accounting)) {
	ex.mu.Lock()
	f(&ex.accounting)
	ex.mu.Unlock()
}

// accounted returns what account recorded.
func (ex *exchange) accounted() accounting {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.accounting
}

// An exchangeHook is told of a moment in an exchange's life: its first
// output, or its completion.
type exchangeHook interface {
	exchanged(ex *exchange)
}

// hooks are the hooks waiting for one moment, in the order they came; the
// few every attempt has fit without allocating.
type hooks struct {
	first [5]exchangeHook
	n     int
	more  []exchangeHook
}

func (h *hooks) add(f exchangeHook) {
	if h.n < len(h.first) {
		h.first[h.n] = f
		h.n++
		return
	}
	h.more = append(h.more, f)
}

// take returns the hooks and forgets them.
func (h *hooks) take() hooks {
	out := *h
	*h = hooks{}
	return out
}

func (h *hooks) run(ex *exchange) {
	for _, f := range h.first[:h.n] {
		f.exchanged(ex)
	}
	for _, f := range h.more {
		f.exchanged(ex)
	}
}

// exchangeFor returns the attempt under way: the call's latest, when it has
// not been sent yet (an outer per-attempt layer started it), or a new one.
// Attempts of one call run one after another, so the latest is the one at
// hand.
func (c *call) exchangeFor(req *http.Request) (*http.Request, *exchange) {
	c.mu.Lock()
	ex := c.last
	c.mu.Unlock()
	if ex != nil && !ex.isSent() {
		return req, ex
	}
	return c.newExchange(req)
}

// newExchange starts the next attempt of c. When the call is traced, the
// request returned carries the attempt's span.
func (c *call) newExchange(req *http.Request) (*http.Request, *exchange) {
	c.mu.Lock()
	c.attempts++
	ex := &exchange{call: c, attempt: c.attempts}
	c.last = ex
	c.mu.Unlock()
	if c.observer != nil {
		req = req.WithContext(c.observer.attemptStarted(req.Context(), ex))
	}
	return req, ex
}

// pacedSince returns when the attempt first waited for tollgate's own
// pacing, now if it has not before.
func (ex *exchange) pacedSince(now time.Time) time.Time {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.pacedAt.IsZero() {
		ex.pacedAt = now
	}
	return ex.pacedAt
}

// claimObserve reports whether the Observe layer asking is the first to
// read the attempt's response: where a middleware of the user's hides an
// Observe layer from the layers above it, they put another in, and the
// innermost, whose RoundTrip returns first, is the one that reads.
func (ex *exchange) claimObserve() bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	first := !ex.observed && !ex.done // done: refused before it was sent
	ex.observed = true
	return first
}

// markSent records that the attempt went to the server at now.
func (ex *exchange) markSent(now time.Time) {
	ex.mu.Lock()
	ex.sent, ex.sentAt = true, now
	ex.mu.Unlock()
}

// sendTime returns when the attempt was sent, or zero before it was.
func (ex *exchange) sendTime() time.Time {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.sentAt
}

func (ex *exchange) isSent() bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.sent
}

// response is what an attempt's response said, as Observe read it.
type response struct {
	status  int
	headers RateLimitHeaders
	apiErr  *APIError
	stream  bool // the body is an event stream
}

// responded records the response's status, headers and error document.
func (ex *exchange) responded(r response, errorBody []byte) {
	ex.mu.Lock()
	ex.status, ex.headers, ex.apiErr, ex.stream, ex.errorBody = r.status, r.headers, r.apiErr, r.stream, errorBody
	ex.mu.Unlock()
}

// result returns what is known of the attempt's response so far.
func (ex *exchange) result() response {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return response{ex.status, ex.headers, ex.apiErr, ex.stream}
}

// tookPause records the pause the response asked for (nil for none).
func (ex *exchange) tookPause(q *pause) {
	ex.mu.Lock()
	ex.pause = q
	ex.mu.Unlock()
}

// pauseTaken returns the pause the response asked for, nil for none.
func (ex *exchange) pauseTaken() *pause {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.pause
}

// errorDocument returns an error response's whole error document; nil when
// it was not read whole.
func (ex *exchange) errorDocument() []byte {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.errorBody
}

// outcome returns the usage and the error the exchange ended with.
func (ex *exchange) outcome() (usage.Usage, error) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.usage, ex.err
}

// firstByte returns when the first bytes of the body reached the caller;
// zero when none did.
func (ex *exchange) firstByte() time.Time {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.firstByteAt
}

// whenDone tells f once the exchange is complete: now, if it already is.
func (ex *exchange) whenDone(f exchangeHook) {
	ex.mu.Lock()
	if !ex.done {
		ex.onDone.add(f)
		ex.mu.Unlock()
		return
	}
	ex.mu.Unlock()
	f.exchanged(ex)
}

// whenOutput tells f once the response shows output (see Output) or the
// exchange is complete, whichever comes first: now, if either has.
func (ex *exchange) whenOutput(f exchangeHook) {
	ex.mu.Lock()
	if !ex.output && !ex.done {
		ex.onOutput.add(f)
		ex.mu.Unlock()
		return
	}
	ex.mu.Unlock()
	f.exchanged(ex)
}

// FirstByte implements usage.Sink.
func (ex *exchange) FirstByte() {
	now := ex.call.state.cfg.clock.Now()
	ex.mu.Lock()
	ex.firstByteAt = now
	ex.mu.Unlock()
}

// Output implements usage.Sink: the stream is under way. A body that is no
// stream is under way once its headers are in; Observe says so then.
func (ex *exchange) Output() {
	ex.mu.Lock()
	if ex.output || ex.done {
		ex.mu.Unlock()
		return
	}
	ex.output = true
	hs := ex.onOutput.take()
	ex.mu.Unlock()
	hs.run(ex)
}

// Produced implements usage.Sink: the stream's output events took
// outputBytes so far.
func (ex *exchange) Produced(outputBytes int64) {
	ex.mu.Lock()
	w := ex.watcher
	if ex.done {
		w = nil
	}
	ex.mu.Unlock()
	if w != nil {
		w.produced(outputBytes)
	}
}

// Done implements usage.Sink: the body ended, at EOF (err nil), on a read
// error, or on Close.
func (ex *exchange) Done(u usage.Usage, err error) { ex.finish(u, err) }

// fail completes an attempt that got no response, or was refused before it
// was sent.
func (ex *exchange) fail(err error) { ex.finish(usage.Usage{}, err) }

// finish completes the exchange; only the first call has any effect.
func (ex *exchange) finish(u usage.Usage, err error) {
	ex.mu.Lock()
	if ex.done {
		ex.mu.Unlock()
		return
	}
	ex.done = true
	ex.usage = u
	if ex.err == nil {
		ex.err = err
	}
	output, done := ex.onOutput.take(), ex.onDone.take()
	ex.mu.Unlock()
	output.run(ex)
	done.run(ex)
}
