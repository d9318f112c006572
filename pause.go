package tollgate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// A pause is a deadline until which no attempt of the pool is sent: one
// the breaker took (a retry-after, a limit at zero, overload, the spend
// cap), or one another Transport took, found in the shared Store. The
// Breaker layer waits on it, the Budget layer extends it from the Store's
// answers, and the Store sync publishes the breaker's own.
type pause struct {
	until  time.Time
	reason string
	cause  error // the server's error that asked for it, for OpenError.Err
	refuse bool  // waiting cannot help (spend cap): fail fast even in wait mode
	// pacing says tollgate chose the pause for its own pacing (the refill
	// the next request needs), not the server: the caller's context bounds
	// the wait, and WithMaxQueueWait when set, but WithMaxPause does not.
	pacing bool
	// answer is the server's 429 that asked for the pause, replayed to the
	// callers that cannot wait it out; nil for pauses of other kinds.
	answer *serverAnswer
}

// sharedSlack is how much later than the pause in force a pause found in
// the store must end to move it: the store's clock and this process's
// disagree by the time its answer took to arrive.
const sharedSlack = 10 * time.Millisecond

// extendLocked moves the pause to q when q ends later, and reports whether
// it did. A pause this process took is queued for the store.
func (p *pool) extendLocked(q pause, shared bool) bool {
	slack := time.Duration(0)
	if shared {
		slack = sharedSlack
	}
	if q.until.Sub(p.pause.until) <= slack {
		return false
	}
	p.pause = q
	if !shared {
		p.store.pause = &q
	}
	return true
}

// openError is the error for an attempt refused by the pause in force.
func (p *pool) openErrorLocked(until time.Time) *OpenError {
	return &OpenError{Key: p.key, Until: until, Reason: p.pause.reason, Err: p.pause.cause}
}

// hopelessLocked reports whether an attempt cannot wait out the pause in
// force: fail-fast mode, the spend cap, or a wait beyond ctx's deadline;
// for a pause the server asked for, one longer than what WithMaxPause
// leaves of its total once the attempt has waited paused on such pauses
// (its waits for anything else, such as its place in the queue, do not
// count); for a pacing pause, one that ends past the attempt's queue-wait
// deadline (zero: none). It returns the error to fail with: the server's
// 429 replayed when the server asked for the pause, a *QueueWaitError past
// the deadline, else an *OpenError.
func (p *pool) hopelessLocked(ctx context.Context, c *call, now time.Time, paused time.Duration, deadline time.Time) error {
	st := &p.state.cfg.breaker
	wait := p.pause.until.Sub(now)
	switch {
	case wait <= 0:
		return nil
	case st.failFast || p.pause.refuse:
		return p.openErrorLocked(p.pause.until)
	case p.pause.pacing:
		// tollgate's own pacing: waiting is not failing.
		if !deadline.IsZero() && p.pause.until.After(deadline) {
			return p.queueWaitErrorLocked(nil, c, now, deadline.Add(-p.budget.cfg.maxQueueWait), p.pause.reason)
		}
		if outlasts(ctx, wait) {
			return p.openErrorLocked(p.pause.until)
		}
		return nil
	case wait <= st.maxPause-paused && !outlasts(ctx, wait):
		return nil
	}
	if p.pause.answer != nil {
		// The server asked for this wait: a caller that cannot wait it out
		// gets the server's own answer, not ours.
		return &replay{answer: p.pause.answer, until: p.pause.until, now: now}
	}
	return p.openErrorLocked(p.pause.until)
}

// pacingReason reports whether a pause's reason (as a store reports it) is
// one of tollgate's own pacing: a refill.
func pacingReason(reason string) bool { return strings.HasSuffix(reason, " refill") }

// queueWaitErrorLocked is the error of an attempt (r, nil when it is not
// queued) of call c that gives up at now on waiting for pacing since since,
// for why.
func (p *pool) queueWaitErrorLocked(_ *reservation, c *call, now, since time.Time, why string) *QueueWaitError {
	return &QueueWaitError{Key: p.key, Priority: c.priority, Tenant: c.tenant, Waited: max(now.Sub(since), 0),
		Cap: p.budget.cfg.maxQueueWait, Reason: why}
}

// outlasts reports whether ctx's deadline comes before d has passed.
// Deadlines are wall-clock times whatever clock tollgate runs on.
func outlasts(ctx context.Context, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return ok && time.Until(deadline) < d
}

// A serverAnswer is a 429 the server sent with a retry-after: its status,
// headers and (bounded, as Observe read it ahead) error body, and the error
// that body holds.
type serverAnswer struct {
	status int
	header http.Header
	body   []byte
	apiErr *APIError
}

// refuse answers an attempt a layer will not send: with the server's 429
// replayed, recorded as the attempt's response, when err is a *replay; else
// with err. Either way the attempt is complete.
func refuse(req *http.Request, ex *exchange, err error) (*http.Response, error) {
	closeRequestBody(req)
	if rp, ok := err.(*replay); ok {
		resp := rp.response(req)
		ex.responded(response{status: resp.StatusCode, headers: parseHeaders(resp.Header, rp.now), apiErr: rp.answer.apiErr},
			rp.answer.body)
		ex.fail(nil)
		return resp, nil
	}
	ex.fail(err)
	return nil, err
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
