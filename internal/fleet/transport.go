package fleet

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// errStopped is what an attempt gets once its run has stopped.
var errStopped = errors.New("fleet: run stopped")

// baseTransport is the bottom of every client's HTTP stack in a run: a
// connection pool of the run's own that counts attempts, and refuses new
// ones once the run has stopped while letting those already sent finish
// (drained is closed when none is left).
type baseTransport struct {
	pool *http.Transport

	attempts    atomic.Int64
	rateLimited atomic.Int64 // 429 responses seen

	mu       sync.Mutex
	stopped  bool
	inFlight int // attempts sent whose response body is not yet finished
	drained  chan struct{}
}

func newBaseTransport() *baseTransport {
	pool := http.DefaultTransport.(*http.Transport).Clone()
	// As the Anthropic SDK's own default client: a bound on the wait for
	// response headers, none on the body.
	pool.ResponseHeaderTimeout = 10 * time.Minute
	// Enough idle connections for every agent, so that no run churns
	// connections (which costs no rate limit, only noise).
	pool.MaxIdleConnsPerHost = 64
	return &baseTransport{pool: pool, drained: make(chan struct{})}
}

func (b *baseTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, errStopped
	}
	b.inFlight++
	b.mu.Unlock()

	b.attempts.Add(1)
	countAttempt(req.Context())
	resp, err := b.pool.RoundTrip(req)
	if err != nil {
		b.done()
		return nil, err
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		b.rateLimited.Add(1)
	}
	resp.Body = &trackedBody{ReadCloser: resp.Body, done: b.done}
	return resp, nil
}

// CloseIdleConnections closes the pool's idle connections.
func (b *baseTransport) CloseIdleConnections() { b.pool.CloseIdleConnections() }

// stop refuses every later attempt.
func (b *baseTransport) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	if b.inFlight == 0 {
		close(b.drained)
	}
}

func (b *baseTransport) done() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inFlight--
	if b.stopped && b.inFlight == 0 {
		close(b.drained)
	}
}

// trackedBody calls done once, when the body has been read to the end, has
// failed, or is closed.
type trackedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (t *trackedBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err != nil {
		t.once.Do(t.done)
	}
	return n, err
}

func (t *trackedBody) Close() error {
	err := t.ReadCloser.Close()
	t.once.Do(t.done)
	return err
}
