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
	// NewTimer returns a channel that receives the time once d has passed,
	// and a function that stops the timer: it reports whether it stopped it
	// before it fired, and after it the channel never receives.
	NewTimer(d time.Duration) (c <-chan time.Time, stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// sleep waits for d on clock, or until ctx is done, whichever is first. It
// returns ctx's error when ctx ended the wait.
func sleep(ctx context.Context, clock Clock, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	c, stop := clock.NewTimer(d)
	defer stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c:
		return nil
	}
}

// A timer is a reusable wait on a Clock for a loop that waits again and
// again; its zero value is stopped.
type timer struct {
	c    <-chan time.Time
	stop func() bool
	at   time.Time
}

// set makes t fire at at, unless it is set to fire then already.
func (t *timer) set(clock Clock, now, at time.Time) {
	if t.c != nil && t.at.Equal(at) {
		return
	}
	t.reset()
	t.c, t.stop = clock.NewTimer(at.Sub(now))
	t.at = at
}

// reset stops t.
func (t *timer) reset() {
	if t.stop != nil {
		t.stop()
	}
	*t = timer{}
}
