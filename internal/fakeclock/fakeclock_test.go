package fakeclock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestAfterFiresOnlyWhenAdvancedFarEnough(t *testing.T) {
	c := New(start)
	ch := c.After(2 * time.Second)
	assert.Equal(t, []time.Duration{2 * time.Second}, c.Pending())
	c.Advance(time.Second)
	select {
	case <-ch:
		t.Fatal("fired early")
	default:
	}
	c.Advance(time.Second)
	assert.Equal(t, start.Add(2*time.Second), <-ch)
	assert.Empty(t, c.Pending())
}

func TestAfterNonPositiveFiresAtOnce(t *testing.T) {
	c := New(start)
	assert.Equal(t, start, <-c.After(0))
	assert.Equal(t, start, <-c.After(-time.Second))
	assert.Empty(t, c.Pending())
}

func TestAdvanceToNextAndWaitForWaiters(t *testing.T) {
	c := New(start)
	done := make(chan time.Time)
	go func() { done <- <-c.After(5 * time.Second) }()
	assert.True(t, c.WaitForWaiters(1, 5*time.Second))
	c.After(9 * time.Second)
	assert.Equal(t, 5*time.Second, c.AdvanceToNext())
	assert.Equal(t, start.Add(5*time.Second), <-done)
	assert.Equal(t, []time.Duration{9 * time.Second}, c.Pending())
	assert.False(t, c.WaitForWaiters(2, 10*time.Millisecond))
	assert.Equal(t, 4*time.Second, c.AdvanceToNext())
	assert.Zero(t, c.AdvanceToNext())
}

func TestChangedClosesOnNewWait(t *testing.T) {
	c := New(start)
	changed := c.Changed()
	c.After(time.Second)
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed by a new wait")
	}
}

func TestStoppedTimerNeverFires(t *testing.T) {
	c := New(start)
	ch, stop := c.NewTimer(time.Second)
	kept := c.After(2 * time.Second)
	assert.Equal(t, []time.Duration{time.Second, 2 * time.Second}, c.Pending())
	assert.True(t, stop(), "stopped while pending")
	assert.False(t, stop(), "stopping again reports it was not pending")
	assert.Equal(t, []time.Duration{2 * time.Second}, c.Pending())
	c.Advance(3 * time.Second)
	select {
	case <-ch:
		t.Fatal("a stopped timer fired")
	default:
	}
	assert.Equal(t, start.Add(3*time.Second), <-kept)

	fired, stopFired := c.NewTimer(time.Second)
	c.Advance(time.Second)
	assert.False(t, stopFired(), "a timer that fired is not pending")
	assert.Equal(t, start.Add(4*time.Second), <-fired)
}
