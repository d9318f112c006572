package tollgate

import (
	"context"
	"time"
)

// Clock is the source of time for every wait and every reading tollgate
// makes. The default is the system clock; tests pass a fake one with
// WithClock so that no test has to sleep.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives the time once d has passed.
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// sleep waits for d on clock, or until ctx is done, whichever is first. It
// returns ctx's error when ctx ended the wait.
func sleep(ctx context.Context, clock Clock, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-clock.After(d):
		return nil
	}
}
