// Package fakeclock is a manually advanced clock for tests: time moves only
// when the test calls Advance, and a test can wait until the code under test
// has started waiting, so no test needs to sleep.
package fakeclock

import (
	"sort"
	"sync"
	"time"
)

// Clock is a fake clock. Its zero value is not usable; call New.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*waiter
	changed chan struct{} // closed and replaced whenever waiters change
}

type waiter struct {
	at       time.Time
	duration time.Duration
	ch       chan time.Time
}

// NewTimer returns a channel that receives the clock's time once Advance
// has moved it d or more forward (a d of zero or less fires at once), and a
// function that stops the wait: it reports whether the wait was pending,
// and after it the channel never receives. A stopped wait is no longer
// Pending.
func (c *Clock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch, func() bool { return false }
	}
	w := &waiter{at: c.now.Add(d), duration: d, ch: ch}
	c.waiters = append(c.waiters, w)
	c.notify()
	return ch, func() bool { return c.stop(w) }
}

// stop removes w from the pending waits, reporting whether it was there.
func (c *Clock) stop(w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, p := range c.waiters {
		if p == w {
			c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
			c.notify()
			return true
		}
	}
	return false
}

// New returns a Clock reading start.
func New(start time.Time) *Clock {
	return &Clock{now: start, changed: make(chan struct{})}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the clock's time once Advance has
// moved it d or more forward. A d of zero or less fires at once.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	ch, _ := c.NewTimer(d)
	return ch
}

// Advance moves the clock forward by d and fires every wait that is due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
	c.notify()
}

// Pending returns the durations asked for by the waits not yet fired, in the
// order they were asked for.
func (c *Clock) Pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]time.Duration, len(c.waiters))
	for i, w := range c.waiters {
		out[i] = w.duration
	}
	return out
}

// WaitForWaiters blocks until at least n waits are pending, or until limit
// (real time) has passed; it reports whether n were reached. The limit is a
// guard against a broken test hanging, not a timing assumption.
func (c *Clock) WaitForWaiters(n int, limit time.Duration) bool {
	deadline := time.After(limit)
	for {
		c.mu.Lock()
		count, changed := len(c.waiters), c.changed
		c.mu.Unlock()
		if count >= n {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

// AdvanceToNext moves the clock to the earliest pending wait and fires it,
// returning how far it moved (zero when nothing waits).
func (c *Clock) AdvanceToNext() time.Duration {
	c.mu.Lock()
	if len(c.waiters) == 0 {
		c.mu.Unlock()
		return 0
	}
	ws := append([]*waiter(nil), c.waiters...)
	sort.Slice(ws, func(i, j int) bool { return ws[i].at.Before(ws[j].at) })
	d := ws[0].at.Sub(c.now)
	c.mu.Unlock()
	c.Advance(d)
	return d
}

func (c *Clock) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel that is closed the next time a wait is added or
// fired. Fetch it before inspecting Pending, so that no change is missed.
func (c *Clock) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}
