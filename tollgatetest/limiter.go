package tollgatetest

import (
	"math"
	"time"
)

// unitsPerToken is the fixed-point scale of a bucket level: one token (or one
// request) is 60,000,000 units, so a bucket whose limit is L per minute
// refills exactly L units per microsecond. Integer arithmetic keeps refills
// exact (60 RPM refills exactly one request per second).
const unitsPerToken = 60_000_000

// maxLimit is the largest per-minute limit a bucket accepts; larger values
// are clamped so that level arithmetic cannot overflow.
const maxLimit = math.MaxInt64 / unitsPerToken / 4

// bucket is a continuously refilled token bucket: capacity limit, refill
// limit/60 per second, starting full. Its level may go negative (debt), as
// when output tokens are counted as produced or Consume drains it.
type bucket struct {
	limit int64     // per minute, > 0
	level int64     // in units; may be negative
	last  time.Time // time up to which refill has been applied (whole µs steps)
}

func newBucket(limit int, now time.Time) *bucket {
	if limit <= 0 {
		return nil
	}
	l := int64(limit)
	if l > maxLimit {
		l = maxLimit
	}
	return &bucket{limit: l, level: l * unitsPerToken, last: now}
}

func (b *bucket) capacity() int64 { return b.limit * unitsPerToken }

// advance applies the refill earned between b.last and now. A clock that goes
// backwards refills nothing.
func (b *bucket) advance(now time.Time) {
	if !now.After(b.last) {
		return
	}
	full := b.capacity()
	if b.level >= full {
		b.level, b.last = full, now
		return
	}
	us := int64(now.Sub(b.last) / time.Microsecond)
	if us <= 0 {
		return // less than 1 µs: keep it for the next call
	}
	if us >= ceilDiv(full-b.level, b.limit) {
		b.level, b.last = full, now
		return
	}
	b.level += us * b.limit
	b.last = b.last.Add(time.Duration(us) * time.Microsecond)
}

// tokens is the whole number of tokens in the bucket (floor; may be negative).
func (b *bucket) tokens() int64 { return floorDiv(b.level, unitsPerToken) }

// covers reports whether the bucket holds at least n tokens.
func (b *bucket) covers(n int64) bool { return b.level >= n*unitsPerToken }

// waitFor is how long, from b.last, until the bucket holds n tokens.
func (b *bucket) waitFor(n int64) time.Duration {
	deficit := n*unitsPerToken - b.level
	if deficit <= 0 {
		return 0
	}
	return time.Duration(ceilDiv(deficit, b.limit)) * time.Microsecond
}

// fullAt is when the bucket will be full again if nothing else is taken.
func (b *bucket) fullAt() time.Time { return b.last.Add(b.waitFor(b.limit)) }

func (b *bucket) take(n int64) { b.level -= n * unitsPerToken }

// give returns n tokens, never filling the bucket past its capacity.
func (b *bucket) give(n int64) {
	b.level = min(b.capacity(), b.level+n*unitsPerToken)
}

func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) == (b < 0) {
		q++
	}
	return q
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// limiter is the server's one set of buckets; nil buckets are unlimited.
// It is guarded by Server.mu. countTokens is count_tokens' own pool.
type limiter struct {
	requests, input, output, combined *bucket
	countTokens                       *bucket
}

func newLimiter(cfg *Config, now time.Time) limiter {
	return limiter{
		requests:    newBucket(cfg.RequestsPerMinute, now),
		input:       newBucket(cfg.InputTokensPerMinute, now),
		output:      newBucket(cfg.OutputTokensPerMinute, now),
		combined:    newBucket(cfg.TokensPerMinute, now),
		countTokens: newBucket(cfg.CountTokensPerMinute, now),
	}
}

func (l *limiter) advance(now time.Time) {
	for _, b := range []*bucket{l.requests, l.input, l.output, l.combined, l.countTokens} {
		if b != nil {
			b.advance(now)
		}
	}
}

// cost is what a request needs at admission.
type cost struct {
	countTokens bool  // count_tokens: only its own bucket applies
	input       int64 // prompt tokens the input limit counts (taken at admission)
	outNeed     int64 // output tokens that must be available at admission
	outTake     int64 // output tokens taken at admission (the reservation)
}

// limitKind names a bucket in messages and in OpenAI's error type.
type limitKind int

const (
	kindRequests limitKind = iota
	kindInput
	kindOutput
	kindCombined
	kindCountTokens
)

// rejection describes why admission failed.
type rejection struct {
	kind  limitKind
	limit int64 // the first short bucket's limit
	need  int64 // what the request needed from it
	have  int64 // whole tokens it held
	wait  time.Duration
	never bool // need exceeds the bucket's capacity: waiting cannot help
}

// admit takes the cost from every limited bucket if all of them cover it, or
// returns why not. The limiter must have been advanced to now.
func (l *limiter) admit(now time.Time, c cost) *rejection {
	type check struct {
		b          *bucket
		kind       limitKind
		need, take int64
	}
	checks := []check{{l.countTokens, kindCountTokens, 1, 1}}
	if !c.countTokens {
		checks = []check{{l.requests, kindRequests, 1, 1},
			{l.input, kindInput, c.input, c.input},
			{l.output, kindOutput, c.outNeed, c.outTake},
			{l.combined, kindCombined, c.input + c.outNeed, c.input + c.outTake}}
	}
	var rej *rejection
	for _, ch := range checks {
		if ch.b == nil || ch.b.covers(ch.need) {
			continue
		}
		r := &rejection{kind: ch.kind, limit: ch.b.limit, need: ch.need, have: max(0, ch.b.tokens())}
		if ch.need > ch.b.limit {
			r.never = true
			return r
		}
		w := ch.b.last.Add(ch.b.waitFor(ch.need)).Sub(now)
		if rej == nil {
			rej = r
		}
		rej.wait = max(rej.wait, w)
	}
	if rej != nil {
		return rej
	}
	for _, ch := range checks {
		if ch.b != nil {
			ch.b.take(ch.take)
		}
	}
	return nil
}

// consume drains the buckets unconditionally (levels may go negative).
func (l *limiter) consume(requests, input, output int64) {
	if l.requests != nil {
		l.requests.take(requests)
	}
	if l.input != nil {
		l.input.take(input)
	}
	if l.output != nil {
		l.output.take(output)
	}
	if l.combined != nil {
		l.combined.take(input + output)
	}
}

// adjustOutput takes n output tokens (give them back when n < 0) from the
// output and combined buckets.
func (l *limiter) adjustOutput(n int64) {
	for _, b := range []*bucket{l.output, l.combined} {
		if b == nil || n == 0 {
			continue
		}
		if n > 0 {
			b.take(n)
		} else {
			b.give(-n)
		}
	}
}

// bucketState is one bucket as the headers describe it.
type bucketState struct {
	set       bool
	limit     int64
	remaining int64 // whole tokens, >= 0
	reset     time.Time
}

func stateOf(b *bucket) bucketState {
	if b == nil {
		return bucketState{}
	}
	return bucketState{set: true, limit: b.limit, remaining: max(0, b.tokens()), reset: b.fullAt()}
}

// snapshot is the limiter as of one instant, for response headers.
type snapshot struct {
	now                               time.Time
	requests, input, output, combined bucketState
	countTokens                       bucketState
}

func (l *limiter) snapshot(now time.Time) snapshot {
	return snapshot{now: now, requests: stateOf(l.requests), input: stateOf(l.input),
		output: stateOf(l.output), combined: stateOf(l.combined), countTokens: stateOf(l.countTokens)}
}

// mostRestrictive picks, among the set states, the one with the fewest
// remaining tokens (ties: the smaller limit, then the earlier argument).
func mostRestrictive(states ...bucketState) bucketState {
	var best bucketState
	for _, s := range states {
		if !s.set {
			continue
		}
		if !best.set || s.remaining < best.remaining || (s.remaining == best.remaining && s.limit < best.limit) {
			best = s
		}
	}
	return best
}
