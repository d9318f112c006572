package tollgate

import (
	"log/slog"
	"math/rand/v2"
	"time"
)

// Option configures a Transport (and the State its layers share).
type Option func(*config)

// Defaults. They match the official SDKs where those are sensible and cap
// what the SDKs leave open (the Go SDK will sleep as long as the server asks).
const (
	DefaultMaxAttempts = 5
	DefaultMaxWait     = 60 * time.Second
	DefaultBackoffBase = 500 * time.Millisecond
	DefaultBackoffMax  = 8 * time.Second
)

type config struct {
	clock       Clock
	maxAttempts int
	maxWait     time.Duration
	backoffBase time.Duration
	backoffMax  time.Duration
	modelFamily func(Provider, string) string
	// jitter returns a uniformly random duration in [0, n); tests replace it.
	jitter    func(n time.Duration) time.Duration
	budget    budgetConfig    // the Budget layer's options (budget.go)
	breaker   breakerSettings // the Breaker layer's options (breaker.go)
	store     storeConfig     // where budgets and pauses are kept (storesync.go)
	telemetry telemetryConfig // the Trace layer's options (metrics.go)
	logger    *slog.Logger
}

func newConfig(opts []Option) config {
	c := config{
		clock:       systemClock{},
		maxAttempts: DefaultMaxAttempts,
		maxWait:     DefaultMaxWait,
		backoffBase: DefaultBackoffBase,
		backoffMax:  DefaultBackoffMax,
		modelFamily: ModelFamily,
		jitter:      func(n time.Duration) time.Duration { return rand.N(n) },
		logger:      slog.Default(),
	}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	c.breaker.fillDefaults(c.maxWait)
	c.budget.fillDefaults()
	return c
}

// WithMaxAttempts sets how many times one call may be sent, the first
// attempt included (default 5). Values below 1 mean 1: no retries.
func WithMaxAttempts(n int) Option {
	return func(c *config) { c.maxAttempts = max(n, 1) }
}

// WithMaxWait caps any single wait between two attempts of a call (default
// 60 s): the wait the server asks for (retry-after), or a backoff. When the
// server asks for a longer wait, the caller gets the server's response at
// once instead of a silent long sleep. It does not bound the waits
// tollgate chooses for its own pacing (a place in the Budget layer's queue,
// a refill): those end with the request's context, or at
// WithMaxQueueWait. Values of zero or below keep the default.
func WithMaxWait(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.maxWait = d
		}
	}
}

// WithBackoff sets the exponential backoff used when the server gives no
// wait: attempt n waits a uniformly random time in [0, min(max, base·2ⁿ⁻¹))
// ("full jitter"). Defaults: base 500 ms, max 8 s, as the official SDKs.
// Values of zero or below keep the default.
func WithBackoff(base, max time.Duration) Option {
	return func(c *config) {
		if base > 0 {
			c.backoffBase = base
		}
		if max > 0 {
			c.backoffMax = max
		}
	}
}

// WithClock replaces the system clock, for tests.
func WithClock(clock Clock) Option {
	return func(c *config) {
		if clock != nil {
			c.clock = clock
		}
	}
}

// WithModelFamily replaces ModelFamily, the function that names the pool of
// limits a model belongs to. Calls whose models map to the same family share
// one budget and one breaker.
func WithModelFamily(family func(provider Provider, model string) string) Option {
	return func(c *config) {
		if family != nil {
			c.modelFamily = family
		}
	}
}

// WithLogger sets where tollgate logs what a caller cannot see in any one
// call's result: today, that a Store failed and the Transport fell back to a
// local budget, and that it recovered. It is called with no lock held. The
// default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}
