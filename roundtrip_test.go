package tollgate_test

import (
	"net/http"
	"time"

	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// rtResult is what a call driven by driveClock returned.
type rtResult struct {
	resp *http.Response
	err  error
}

// startRoundTrip sends req through rt on a goroutine of its own.
func startRoundTrip(rt http.RoundTripper, req *http.Request) <-chan rtResult {
	done := make(chan rtResult, 1)
	go func() {
		resp, err := rt.RoundTrip(req)
		done <- rtResult{resp, err}
	}()
	return done
}

// driveClock runs do while playing the clock: each wait do starts is
// recorded and then fired at once, so that retries and waits take no real
// time.
func driveClock(clk *fakeclock.Clock, do func() (*http.Response, error)) (*http.Response, error, []time.Duration) {
	done := make(chan rtResult, 1)
	go func() {
		resp, err := do()
		done <- rtResult{resp, err}
	}()
	var waits []time.Duration
	for {
		changed := clk.Changed()
		if p := clk.Pending(); len(p) > 0 {
			waits = append(waits, p[0])
			clk.AdvanceToNext()
			continue
		}
		select {
		case r := <-done:
			return r.resp, r.err, waits
		case <-changed:
		}
	}
}
