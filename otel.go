package tollgate

import "net/http"

// Trace returns the outermost layer, which opens the record of each logical
// call (all attempts). In this version it records nothing outside tollgate;
// OpenTelemetry spans and metrics come with the telemetry work.
func Trace(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return passthrough{state: s, next: orDefault(next)}
	}
}
