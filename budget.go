package tollgate

import (
	"net/http"
	"time"
)

// Budget returns the layer that admits each attempt against the limits of
// its (provider, model family). In this version it only establishes the call
// record; pacing against requests, input and output tokens per minute comes
// with the budget work.
func Budget(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return passthrough{state: s, next: orDefault(next)}
	}
}

// passthrough is a layer that only makes sure the call record exists.
type passthrough struct {
	state *State
	next  http.RoundTripper
}

func (p passthrough) RoundTrip(req *http.Request) (*http.Response, error) {
	req, _ = p.state.callFor(req)
	return p.next.RoundTrip(req)
}

// budget holds the Budget layer's state for every Key.
type budget struct{ cfg *config }

func newBudget(cfg *config) *budget { return &budget{cfg: cfg} }

// BudgetSnapshot is the Budget layer's view of one Key.
type BudgetSnapshot struct{}

func (b *budget) snapshot(k Key, now time.Time) BudgetSnapshot { return BudgetSnapshot{} }
