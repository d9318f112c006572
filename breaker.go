package tollgate

import (
	"net/http"
	"time"
)

// Breaker returns the layer that stops sending what the server would refuse.
// In this version it only establishes the call record; the circuit breaker
// and the pause-until-refill gate come with the breaker work.
func Breaker(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return passthrough{state: s, next: orDefault(next)}
	}
}

// breakers holds the Breaker layer's state for every Key.
type breakers struct{ cfg *config }

func newBreakers(cfg *config) *breakers { return &breakers{cfg: cfg} }

// BreakerSnapshot is the Breaker layer's view of one Key.
type BreakerSnapshot struct{}

func (b *breakers) snapshot(k Key, now time.Time) BreakerSnapshot { return BreakerSnapshot{} }
