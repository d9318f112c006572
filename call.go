package tollgate

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// A call is one logical request through the chain, all attempts included.
// It is created once, by the outermost tollgate layer, carried in the request
// context, and read by every layer: the request is parsed once, here, and
// each attempt's response is parsed once, by Observe.
type call struct {
	state *State
	info  RequestInfo
	key   Key
	start time.Time

	mu        sync.Mutex
	attempts  int
	last      *exchange
	waits     Waits
	retryWait time.Duration // decided when a response is judged, served before the next attempt

	// trace is the Trace layer's record of the call (otel.go), nil when the
	// call is not traced. It is set before the first attempt and not changed.
	trace *callTrace
}

// Waits is how long a call spent waiting, by cause.
type Waits struct {
	Budget  time.Duration // for the budget to admit an attempt
	Pause   time.Duration // for an open breaker
	Backoff time.Duration // between attempts
}

type ctxKey int

const (
	callKey ctxKey = iota
	exchangeKey
)

// callFor returns the call record carried by req, creating it (and a request
// that carries it) when req has none of this State's.
func (s *State) callFor(req *http.Request) (*http.Request, *call) {
	if c, ok := req.Context().Value(callKey).(*call); ok && c.state == s {
		return req, c
	}
	info := readRequestInfo(req)
	c := &call{
		state: s,
		info:  info,
		key:   s.keyOf(info.Provider, info.Model, accountOf(req.Header)),
		start: s.cfg.clock.Now(),
	}
	return req.WithContext(context.WithValue(req.Context(), callKey, c)), c
}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey).(*call)
	return c
}

// addWait records time spent waiting.
func (c *call) addWait(add func(*Waits)) {
	c.mu.Lock()
	before := c.waits
	add(&c.waits)
	after := c.waits
	c.mu.Unlock()
	c.trace.waited(before, after)
}

// attemptCount returns how many attempts have started.
func (c *call) attemptCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts
}

// lastExchange returns the most recent attempt, or nil before the first.
func (c *call) lastExchange() *exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// An exchange is one attempt: a request sent and what came back. Observe
// fills it; the layers outside Observe register for its completion, which is
// when the response body reached EOF or was closed, or the attempt failed.
type exchange struct {
	call    *call
	attempt int // 1 for the first attempt

	mu     sync.Mutex
	sent   bool
	sentAt time.Time // when Observe handed the request to the base transport
	// firstChunkAt is when the first bytes of the body reached the caller.
	firstChunkAt time.Time
	status       int // 0 when no response arrived
	headers      RateLimitHeaders
	apiErr       *APIError // the error document of a non-2xx response, when it had one
	// errorBody is the start (up to maxErrorBody) of a non-2xx response's
	// body, as Observe read it ahead.
	errorBody []byte
	usage     Usage
	err       error // transport error, or the error that ended the body
	done      bool
	onDone    []func(*exchange)
}

// exchangeFor returns the attempt carried by req, or starts a new one when
// req carries none that is still unsent.
func (s *State) exchangeFor(req *http.Request, c *call) (*http.Request, *exchange) {
	if ex, ok := req.Context().Value(exchangeKey).(*exchange); ok && ex.call == c && !ex.isSent() {
		return req, ex
	}
	return c.newExchange(req)
}

// newExchange starts the next attempt of c.
func (c *call) newExchange(req *http.Request) (*http.Request, *exchange) {
	c.mu.Lock()
	c.attempts++
	ex := &exchange{call: c, attempt: c.attempts}
	c.last = ex
	c.mu.Unlock()
	ctx := context.WithValue(req.Context(), exchangeKey, ex)
	return req.WithContext(c.trace.attemptContext(ctx, ex)), ex
}

// markSent records that the attempt is leaving for the server now.
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

// whenDone runs f once the exchange is complete: now, if it already is.
func (ex *exchange) whenDone(f func(*exchange)) {
	ex.mu.Lock()
	if !ex.done {
		ex.onDone = append(ex.onDone, f)
		ex.mu.Unlock()
		return
	}
	ex.mu.Unlock()
	f(ex)
}

// finish completes the exchange; only the first call has any effect.
func (ex *exchange) finish(u Usage, err error) {
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
	hooks := ex.onDone
	ex.onDone = nil
	ex.mu.Unlock()
	for _, f := range hooks {
		f(ex)
	}
}

// result returns what is known of the attempt so far.
func (ex *exchange) result() (status int, h RateLimitHeaders, apiErr *APIError) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.status, ex.headers, ex.apiErr
}
