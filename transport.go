package tollgate

import (
	"context"
	"net/http"
)

// Middleware is one layer of the chain: it wraps a RoundTripper in another.
type Middleware func(http.RoundTripper) http.RoundTripper

// Transport is an http.RoundTripper that paces, retries, pauses and traces
// requests to a rate-limited LLM API. Use it as the Transport of any
// http.Client, including the one given to the official SDKs with
// option.WithHTTPClient. It is safe for concurrent use; share one Transport
// among all the agents that share an API key.
type Transport struct {
	state *State
	base  http.RoundTripper
	chain http.RoundTripper
}

// New returns a Transport that sends requests through base (nil means
// http.DefaultTransport), composed of the layers, outer to inner: Trace,
// Retry, Breaker, Budget, Observe (see the package documentation).
func New(base http.RoundTripper, opts ...Option) *Transport {
	base = orDefault(base)
	s := NewState(opts...)
	return &Transport{
		state: s,
		base:  base,
		chain: Chain(base, Trace(s), Retry(s), Breaker(s), Budget(s), Observe(s)),
	}
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.chain.RoundTrip(req)
}

// Snapshot returns a copy of what the Transport has learned: limits,
// remaining amounts and counters per (provider, model family).
func (t *Transport) Snapshot() Snapshot { return t.state.Snapshot() }

// Flush sends the Store what the Transport owes it and has not sent yet,
// and returns once it is in: see State.Flush.
func (t *Transport) Flush(ctx context.Context) error { return t.state.Flush(ctx) }

// State returns the State the Transport's layers share.
func (t *Transport) State() *State { return t.state }

// CloseIdleConnections closes the base transport's idle connections when it
// has such a method, as http.Client.CloseIdleConnections expects of a
// wrapper.
func (t *Transport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// Chain wraps base in the given layers, the first outermost:
// Chain(base, a, b) sends a request through a, then b, then base.
// A nil base means http.DefaultTransport. Each layer of a State puts the
// State's Observe layer under itself when it finds none inside, so a chain
// of tollgate's layers always reads its responses exactly once, innermost.
func Chain(base http.RoundTripper, layers ...Middleware) http.RoundTripper {
	rt := orDefault(base)
	for i := len(layers) - 1; i >= 0; i-- {
		if layers[i] != nil {
			rt = layers[i](rt)
		}
	}
	return rt
}

func orDefault(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		return http.DefaultTransport
	}
	return rt
}
