package tollgate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Retry returns the layer that sends each call up to the configured number
// of attempts (WithMaxAttempts), on go-retryablehttp's loop.
//
// It retries a connection error that happened before any response, and the
// statuses 408, 409, 429, 500, 502, 503, 504 and 529; nothing else. The
// server's x-should-retry header overrides an error status either way (a
// success is never retried), and a 429
// that says the spend cap is reached is never retried.
//
// The wait before the next attempt is the server's retry-after-ms, else its
// retry-after, else — when a response shows a limit with nothing remaining —
// the time that limit resets, else exponential backoff with full jitter
// (WithBackoff). A server-given wait is never shortened. No wait is longer
// than WithMaxWait: when the server asks for more, or the wait would outlast
// the request's context deadline, the caller gets the server's response at
// once. When attempts run out the caller gets the last response intact.
//
// Waits end early when the request context is done. Bodies are replayed with
// Request.GetBody; a request whose body cannot be replayed is sent once. A
// response is never retried once it has been returned, so nothing is retried
// after its body started flowing to the caller. Abandoned bodies are drained
// (up to 4 KiB) and closed; the base transport's idle connections are never
// closed.
//
// A nil s gets a State of its own with default options. The Observe layer
// is put under the layer when next has none of s's inside it.
func Retry(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		r := &retrier{state: s, next: s.observed(next)}
		r.client = &retryablehttp.Client{
			HTTPClient: &http.Client{
				// attempts lacks CloseIdleConnections, so retryablehttp's calls to
				// it on give-up never reach the caller's transport.
				Transport: attempts{r},
				// Redirects are the caller's client's business.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
			Logger:     nil,
			RetryMax:   s.cfg.maxAttempts - 1,
			CheckRetry: r.checkRetry,
			// The loop's own sleep is on the wall clock and unrecorded; the
			// wait checkRetry decides is served in PrepareRetry instead, on
			// tollgate's clock (which tests replace), ended by the context
			// and added to the call's Waits.
			Backoff:      func(time.Duration, time.Duration, int, *http.Response) time.Duration { return 0 },
			PrepareRetry: r.prepareRetry,
			ErrorHandler: r.giveUp,
		}
		return r
	}
}

type retrier struct {
	state  *State
	next   http.RoundTripper
	client *retryablehttp.Client
}

func (r *retrier) observes(s *State) bool { return observes(r.next, s) }

// attempts is the transport under retryablehttp's loop: each RoundTrip is a
// new attempt of the call.
type attempts struct{ r *retrier }

func (a attempts) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callFrom(req.Context())
	req, _ = c.newExchange(req)
	return a.r.next.RoundTrip(req)
}

func (r *retrier) RoundTrip(req *http.Request) (*http.Response, error) {
	req, _ = r.state.callFor(req)
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	if !replayable || r.state.cfg.maxAttempts <= 1 {
		return attempts{r}.RoundTrip(req)
	}
	// retryablehttp replaces Body between attempts; it must do so on a copy.
	// FromRequest would read the body whole into memory to make it
	// replayable, where the SDKs' requests are replayable already: hand it
	// none, and rewind with GetBody in prepareRetry instead.
	outbound := *req
	outbound.Body = nil
	rreq, err := retryablehttp.FromRequest(&outbound)
	if err != nil {
		return nil, err
	}
	rreq.Body = req.Body
	return r.client.Do(rreq)
}

// retryDecision is what checkRetry concluded about one attempt.
type retryDecision struct {
	retry  bool
	wait   time.Duration
	reason string // why it retries or why it stops, for traces and tests
}

func (r *retrier) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return false, ctxErr
	}
	c := callFrom(ctx)
	now := r.state.cfg.clock.Now()
	attempt, _ := c.progress()
	var d retryDecision
	var status int
	if resp == nil {
		d = decideRetryError(&r.state.cfg, attempt, unwrapURLError(err))
	} else {
		res := c.lastExchange().result()
		status = res.status
		d = decideRetry(&r.state.cfg, now, attempt, res)
	}
	if d.retry && outlasts(ctx, d.wait) {
		d = retryDecision{reason: "wait outlasts the context deadline"}
	}
	c.setRetryWait(d.wait)
	if c.observer != nil {
		c.observer.retryDecided(d, attempt, status)
	}
	return d.retry, nil
}

// retryableStatus is the set of statuses worth another attempt.
var retryableStatus = map[int]bool{
	http.StatusRequestTimeout: true, http.StatusConflict: true, http.StatusTooManyRequests: true,
	http.StatusInternalServerError: true, http.StatusBadGateway: true, http.StatusServiceUnavailable: true,
	http.StatusGatewayTimeout: true, 529: true,
}

// decideRetryError judges an attempt that got no response.
func decideRetryError(cfg *config, attempt int, err error) retryDecision {
	if !retryableError(err) {
		return retryDecision{reason: "error is not retryable"}
	}
	return retryDecision{retry: true, wait: backoff(cfg, attempt), reason: "connection error"}
}

// decideRetry judges the given attempt (1-based), which got response r.
func decideRetry(cfg *config, now time.Time, attempt int, r response) retryDecision {
	status, h, apiErr := r.status, r.headers, r.apiErr
	if status < 400 {
		return retryDecision{reason: "not an error"}
	}
	retry := retryableStatus[status]
	reason := http.StatusText(status)
	if status == 529 {
		reason = "overloaded"
	}
	switch h.ShouldRetry {
	case ShouldRetryTrue:
		retry, reason = true, "x-should-retry: true"
	case ShouldRetryFalse:
		retry, reason = false, "x-should-retry: false"
	}
	if status == http.StatusTooManyRequests && isSpendCap(apiErr) {
		return retryDecision{reason: "spend limit reached"}
	}
	if !retry {
		return retryDecision{reason: reason}
	}
	if h.HasRetryAfter {
		if h.RetryAfter > cfg.maxWait {
			return retryDecision{wait: h.RetryAfter, reason: "retry-after exceeds the maximum wait"}
		}
		return retryDecision{retry: true, wait: h.RetryAfter, reason: reason}
	}
	if reset, ok := exhaustedUntil(h); ok {
		// A reset is when the bucket is full again, an upper bound on the
		// wait rather than a request from the server: clamp it, don't give up.
		return retryDecision{retry: true, wait: min(max(reset.Sub(now), 0), cfg.maxWait), reason: reason}
	}
	return retryDecision{retry: true, wait: backoff(cfg, attempt), reason: reason}
}

// exhaustedUntil returns the latest reset among the limits a response shows
// with nothing remaining.
func exhaustedUntil(h RateLimitHeaders) (time.Time, bool) {
	var until time.Time
	for _, r := range h.Limits {
		if r.HasRemaining && r.Remaining == 0 && r.Reset.After(until) {
			until = r.Reset
		}
	}
	return until, !until.IsZero()
}

// backoff returns the full-jitter wait after the given attempt (1-based).
func backoff(cfg *config, attempt int) time.Duration {
	ceiling := cfg.backoffMax
	if shift := attempt - 1; shift < 32 {
		ceiling = min(cfg.backoffBase<<shift, cfg.backoffMax)
	}
	if ceiling <= 0 {
		return 0
	}
	return min(cfg.jitter(ceiling), cfg.maxWait)
}

// retryableError reports whether a transport error is a network failure that
// a new attempt may not meet; everything else (a cancelled context, a
// refused certificate, an open breaker, a malformed request) is final.
func retryableError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOpen) {
		return false
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) {
		return false
	}
	var netErr net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &netErr)
}

// prepareRetry serves the wait decided by checkRetry, then rewinds the body.
func (r *retrier) prepareRetry(req *http.Request) error {
	c := callFrom(req.Context())
	wait := c.takeRetryWait()
	start := r.state.cfg.clock.Now()
	err := sleep(req.Context(), r.state.cfg.clock, wait)
	c.addWait("backoff", r.state.cfg.clock.Now().Sub(start))
	if err != nil {
		return err
	}
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return err
		}
		req.Body = body
	}
	return nil
}

// giveUp is called when the loop ends without success: attempts ran out,
// an error is final, or the wait was cut short. The last response, when the
// loop still holds it unread, goes to the caller as it came.
func (r *retrier) giveUp(resp *http.Response, err error, _ int) (*http.Response, error) {
	if err == nil && resp != nil {
		return resp, nil
	}
	if resp != nil {
		// The loop drained it already when it stopped during a wait; otherwise
		// it is ours to close.
		drainAndClose(resp.Body)
	}
	if err == nil {
		err = errors.New("tollgate: retry loop ended without a response")
	}
	return nil, unwrapURLError(err)
}

// unwrapURLError removes the *url.Error the inner http.Client adds, which the
// caller's own client would add a second time.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		if direct, ok := err.(*url.Error); ok && direct == ue {
			return ue.Err
		}
	}
	return err
}

// drainAndClose reads a bounded amount of an abandoned body, so that the
// connection can be reused, and closes it.
func drainAndClose(body io.ReadCloser) {
	if body == nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 4<<10))
	_ = body.Close()
}
