package tollgate

import (
	"math"
	"time"
)

// A bucket is a token bucket that holds at most limit tokens and refills
// continuously at limit tokens per minute, the way the providers describe
// their own limits. Like golang.org/x/time/rate's Limiter it has no goroutine
// and no ticker: the level is brought up to date lazily from the time of the
// last change, and every method takes the time as a parameter.
//
// It is hand-written because the budget needs three things rate.Limiter does
// not offer: giving back tokens after they were taken (an attempt's output is
// reserved at max_tokens and settled to what it produced; a 429 is refunded
// in full), taking more than was reserved (a level may go below zero, a debt
// that refill pays off), and pulling the level down to what the server says
// remains. It does no locking; its owner's mutex guards it.
//
// A bucket with a limit of zero or less is unknown: it admits everything and
// its level means nothing.
type bucket struct {
	limit float64   // capacity, and the refill per minute
	level float64   // tokens available at last; negative while in debt
	last  time.Time // when level was last brought up to date
}

// fitTolerance absorbs floating-point error so that a wait computed by
// waitFor really is enough.
const fitTolerance = 1e-6

// known reports whether the bucket has a limit.
func (b *bucket) known() bool { return b.limit > 0 }

// levelAt returns the level at now without changing the bucket. A time
// before the last change counts as the time of the last change.
func (b *bucket) levelAt(now time.Time) float64 {
	elapsed := now.Sub(b.last)
	if elapsed <= 0 || b.level >= b.limit {
		return b.level
	}
	return min(b.limit, b.level+b.limit*elapsed.Minutes())
}

// advance brings the level up to date at now.
func (b *bucket) advance(now time.Time) {
	b.level = b.levelAt(now)
	if now.After(b.last) {
		b.last = now
	}
}

// setLimit changes the capacity and refill rate from now on. The level of a
// bucket that had no limit starts full; a known level is kept, but never
// above the new capacity.
func (b *bucket) setLimit(now time.Time, limit float64) {
	if !b.known() {
		b.limit, b.level, b.last = limit, limit, now
		return
	}
	b.advance(now)
	b.limit = limit
	b.level = min(b.level, limit)
}

// waitFor returns how long from now until n tokens (at most the capacity)
// are available; zero when they are now.
func (b *bucket) waitFor(now time.Time, n float64) time.Duration {
	missing := min(n, b.limit) - b.levelAt(now)
	if missing <= fitTolerance {
		return 0
	}
	d := math.Ceil(missing / b.limit * float64(time.Minute))
	if d >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(d)
}

// take removes n tokens at now; the level may go below zero.
func (b *bucket) take(now time.Time, n float64) {
	b.advance(now)
	b.level -= n
}

// give returns n tokens at now, up to the capacity.
func (b *bucket) give(now time.Time, n float64) {
	b.advance(now)
	b.level = min(b.limit, b.level+n)
}

// pullDown lowers the level at now to target when it is above it; it never
// raises it.
func (b *bucket) pullDown(now time.Time, target float64) {
	b.advance(now)
	b.level = min(b.level, target)
}
