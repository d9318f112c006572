package tollgate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
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

// hopelessLocked reports whether an attempt that started waiting at start
// cannot wait out the pause in force: fail-fast mode, the spend cap, a
// pause longer than WithMaxPause allows in total, or beyond ctx's
// deadline. It returns the error to fail with: the server's 429 replayed
// when the server asked for the pause, else an *OpenError.
func (p *pool) hopelessLocked(ctx context.Context, now, start time.Time) error {
	st := &p.state.cfg.breaker
	wait := p.pause.until.Sub(now)
	if wait <= 0 {
		return nil
	}
	if !st.failFast && !p.pause.refuse && wait <= st.maxPause-now.Sub(start) && !outlasts(ctx, wait) {
		return nil
	}
	if p.pause.answer != nil && !st.failFast && !p.pause.refuse {
		// The server asked for this wait: a caller that cannot wait it out
		// gets the server's own answer, not ours.
		return &replay{answer: p.pause.answer, until: p.pause.until, now: now}
	}
	return p.openErrorLocked(p.pause.until)
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
