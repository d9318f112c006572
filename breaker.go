package tollgate

import "net/http"

// Breaker returns the layer that stops sending what the server would refuse.
// In this version it only establishes the call record; the circuit breaker
// and the pause-until-refill gate come with the breaker work.
func Breaker(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return passthrough{state: s, next: orDefault(next)}
	}
}
