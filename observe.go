package tollgate

import (
	"bytes"
	"io"
	"net/http"

	"github.com/tollgate-go/tollgate/internal/usage"
)

// Observe returns the layer that reads what the server says: it parses each
// response's rate-limit headers into s, reads the error document of a
// non-2xx response, and wraps the body so that token usage is parsed as the
// caller reads it. It is the only layer that wraps a response body; the
// others act on what it records. Every exchange it sends completes exactly
// once: when its body reaches EOF or is closed, or at once when the attempt
// fails or the response has no body.
//
// It is innermost in a chain: the other layers of s put an Observe of s
// under themselves when the transport they wrap has none, and Observe
// wrapping a transport that already has one of s's adds nothing. Where a
// middleware of the user's between two layers hides the inner Observe from
// the outer layer, which then puts in another, only the innermost reads
// each attempt; the others pass its response through. A nil s
// gets a State of its own with default options.
func Observe(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		next = orDefault(next)
		if observes(next, s) {
			return next
		}
		return &observer{state: s, next: next}
	}
}

// An observing transport knows whether an Observe layer of s runs inside
// it: every layer of this package is one.
type observing interface {
	observes(s *State) bool
}

// observes reports whether rt has an Observe layer of s inside it.
func observes(rt http.RoundTripper, s *State) bool {
	o, ok := rt.(observing)
	return ok && o.observes(s)
}

// observed returns next with an Observe layer of s under it, unless next
// has one already.
func (s *State) observed(next http.RoundTripper) http.RoundTripper {
	return Observe(s)(next)
}

type observer struct {
	state *State
	next  http.RoundTripper
}

func (o *observer) observes(s *State) bool { return s == o.state }

// maxErrorBody bounds how much of an error response is read ahead of the
// caller to learn its error type; provider error documents are far smaller.
const maxErrorBody = 64 << 10

func (o *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	req, c := o.state.callFor(req)
	req, ex := c.exchangeFor(req)
	clock := o.state.cfg.clock
	sent := clock.Now()
	resp, err := o.next.RoundTrip(req)
	if !ex.claimObserve() {
		// An Observe of s further in read it (one the layers above could
		// not see, behind a middleware of the user's between them), or a
		// layer further in refused the attempt before it was sent.
		return resp, err
	}
	ex.markSent(sent)
	if err != nil {
		c.pool.recordTransportError()
		ex.fail(err)
		return nil, err
	}
	now := clock.Now()
	ct := resp.Header.Get("Content-Type")
	r := response{status: resp.StatusCode, headers: parseHeaders(resp.Header, now), stream: usage.IsEventStream(ct)}
	var document []byte // the error document, when read whole
	if resp.StatusCode >= 300 && resp.Body != nil {
		head, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if e, ok := usage.ParseError(head); ok {
			r.apiErr = (*APIError)(&e)
		}
		if err == nil && len(head) < maxErrorBody {
			document = head
		}
		resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	}
	ex.responded(r, document)
	var answer *serverAnswer
	if r.status == http.StatusTooManyRequests && document != nil {
		answer = &serverAnswer{status: r.status, header: resp.Header.Clone(), body: document, apiErr: r.apiErr}
	}
	ex.tookPause(c.pool.observe(req.Context(), c, r, ex.sendTime(), answer))

	if resp.Body == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		ex.finish(usage.Usage{}, nil)
		return resp, nil
	}
	resp.Body = usage.NewReader(resp.Body, ct, ex)
	if !r.stream {
		// A body that is no stream has nothing more to show than its status.
		ex.Output()
	}
	return resp, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
