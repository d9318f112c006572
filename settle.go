package tollgate

import (
	"math"
	"net/http"
	"slices"
	"time"
)

// This file is what happens to an attempt's reservation once the attempt is
// sent: what its response headers teach (limits, what remains), and how it
// is settled to what the response used when its body ends.

// responded learns from an attempt's response headers as soon as they
// arrive: it refunds a 429, learns limits, pulls levels down to what the
// server says remains and opens the cold-start gate. It queues for the
// store only what cannot wait for the attempt's settlement: the refund of
// a 429, the charge of a limit just learned, or news that less remains
// than the store held when this process last asked.
func (p *pool) responded(r *reservation, res response) {
	if p.unpaced {
		return
	}
	p.mu.Lock()
	now := p.state.cfg.clock.Now()
	r.status = res.status
	if !res.stream || res.status >= 300 {
		p.unwatchLocked(r) // its output will not show as it comes
	}
	if !res.stream && res.status < 300 {
		r.producedBy = now
	}
	learned := p.learnLocked(now, r, res.headers, res.stream)
	switch {
	case res.status == http.StatusTooManyRequests:
		p.refundAllLocked(r)
	case learned || p.newsLocked(now, r):
		p.syncLocked(r, true)
	}
	if res.status >= 200 && res.status < 300 && !p.budget.limitsKnown() {
		p.budget.unpaced = true
	}
	p.releaseProbeLocked(r)
	p.wakeHeadLocked()
	p.unlock(nil, nil)
}

// exchanged is called when r's exchange is done: it frees r's slot and
// settles its charges to the usage the response reported.
func (r *reservation) exchanged(ex *exchange) {
	p := r.p
	if p.unpaced {
		return
	}
	res := ex.result()
	u, _ := ex.outcome()
	p.mu.Lock()
	now := p.state.cfg.clock.Now()
	r.endedAt = now
	status := res.status
	if status == 0 {
		status = r.status
	}
	p.releaseLocked(r, false)
	switch {
	case r.refunded:
	case status == http.StatusTooManyRequests:
		p.refundAllLocked(r)
	case status == 0:
		r.charged[Tokens], r.charged[InputTokens], r.charged[OutputTokens] = 0, 0, 0
	default:
		p.settleUsageLocked(r, status, u)
		if u.Reported {
			p.boundLocked(now, r)
		}
		if status < 300 && u.Reported {
			p.reservedEvidenceLocked(r, float64(u.OutputTokens))
			in, out := r.counted[0], r.counted[1]
			defer ex.account(func(a *accounting) { a.counted, a.countedInput, a.countedOutput = true, in, out })
		}
	}
	p.syncLocked(r, true)
	p.doneLocked(r)
	for d := range NumDimensions {
		p.budget.window.add(now, d, r.charged[d])
	}
	p.evaluateAlertsLocked(now)
	p.wakeHeadLocked()
	p.unlock(nil, nil)
}

// boundLocked lowers r's floors to what its usage proves: the server's
// bucket held at most its limit before it counted r, so it held at most the
// limit less what it had taken of r at its reading (and after it, what it
// took later: floorNow). Remaining readings rounded to thousands say less
// than that where the bucket was full or nearly so: on the first call, when
// nothing else tells tollgate how much of a minute is left. Only a bound
// below the level this process will hold once r is settled is news worth a
// settlement.
func (p *pool) boundLocked(now time.Time, r *reservation) {
	b := &p.budget
	for d, l := range b.limits {
		if l <= 0 || !b.levelKnown[d] {
			continue
		}
		floor := float64(l) - r.charged[d] - r.afterReading(d)
		if r.hasFloor[d] && floor >= r.floor[d] {
			continue
		}
		level := min(b.levelNow(now, d)-(r.charged[d]-r.stored[d]), float64(l))
		if level > r.boundNow(d, b, floor, r.sentAt, now) {
			r.floor[d], r.hasFloor[d] = floor, true
		}
	}
}

// newsLocked reports whether r's response said less remains, in some
// dimension, than the store's level as this process last saw it.
func (p *pool) newsLocked(now time.Time, r *reservation) bool {
	for d := range NumDimensions {
		if r.hasFloor[d] && p.budget.limits[d] > 0 && p.budget.levelKnown[d] {
			if p.budget.levelNow(now, d) > r.floorNow(d, &p.budget, r.sentAt, now) {
				return true
			}
		}
	}
	return false
}

// syncLocked queues for the store what r is charged beyond what the store
// holds of it, in every dimension whose limit is known, and, when floors
// is set, what r's response said remains. The settlement rides with the
// next admission this process asks of the same store, or goes on its own
// when none is coming (pool.unlock sees to it). When the store cannot be
// reached, nothing is lost for good: its buckets refill on their own.
func (p *pool) syncLocked(r *reservation, floors bool) {
	st, g := r.store, p.state.guard
	if st == nil || !g.usable(st) {
		return
	}
	b := &p.budget
	now := p.state.cfg.clock.Now()
	b.advance(now)
	s := Settlement{Limits: g.limitsFor(st, b.limits), SentAt: r.storeSentAt}
	changed := false
	for d, l := range s.Limits {
		if l <= 0 {
			continue
		}
		if delta := r.charged[d] - r.stored[d]; delta != 0 {
			s.Charge[d], changed = delta, true
			if r.storeHas[d] {
				// What the store will do with the charge, shown at once. A
				// bucket the store had no limit for when r was admitted is
				// not the store's yet: it starts from what the server said
				// remains, which counts r already.
				b.level[d] = min(b.level[d]-delta, float64(b.limits[d]))
			}
			b.held[d] += delta
			r.stored[d] = r.charged[d]
		}
		if gave := max(r.afterReading(d), 0); gave != r.returned[d] {
			b.returned[d] += gave - r.returned[d]
			r.returned[d] = gave
		}
		if r.started[d] != notStarted && !r.storeHas[d] {
			// The bucket started from r's own response: what r is charged
			// since is news there.
			since := r.sinceStart(d)
			b.level[d] = min(b.level[d]+since-r.credited[d], float64(b.limits[d]))
			r.credited[d] = since
		}
		if floors && r.hasFloor[d] {
			// The floor is applied after the charges. The store adds the
			// refill since r was sent to it.
			refill := float64(b.limits[d]) * max(now.Sub(r.sentAt), 0).Minutes()
			floor := r.floorNow(d, b, r.sentAt, now)
			s.Floor[d], s.HasFloor[d], changed = floor-refill, true, true
			r.hasFloor[d] = false
			b.level[d] = min(b.level[d], floor)
		}
	}
	if changed {
		p.queueSettlementLocked(st, s)
	}
}

// floorNow is the most the server's level of dimension d can be now, by
// what r's response said remains (r.floor) as of since: that and the
// refill until r's response ended, up to the limit; what the server changed
// of r after the reading (afterReading); the refill since, up to the limit
// again; and what it gave back of the pool's other attempts since r was
// granted (othersReturned). The limit caps the refill before what the
// server took of r after its reading: a full bucket refills nothing, and
// output counted as produced is taken as it is produced. Those takes are
// put at the end of the response, the latest they can be: a server that
// took them earlier had room for more refill, and its level is then above
// the floor by at most that, a cost in throughput, never a 429.
//
// The server takes its reading when it admits r (a JSON response's headers
// carry it seconds later), so the max_tokens the attempts in flight with r
// reserved and did not use, given back meanwhile, raise the server's level
// past the reading; a floor without them held the level tens of thousands
// of tokens below the server's. What the attempts sent after r gave back
// counts too, their charges not: a server that reads its level when it
// writes the headers has counted both already. Either way the floor may be
// above the server's level, a weaker bound. Only what the
// server gives back counts: what tollgate itself charged too much (an input
// estimate, output counted as produced, a refused attempt) it never took.
func (r *reservation) floorNow(d int, b *budgetState, since, now time.Time) float64 {
	return r.boundNow(d, b, r.floor[d], since, now)
}

// boundNow is floorNow for a reading of floor in place of r.floor.
func (r *reservation) boundNow(d int, b *budgetState, floor float64, since, now time.Time) float64 {
	l := float64(b.limits[d])
	end := now
	if !r.endedAt.IsZero() && r.endedAt.Before(now) {
		end = r.endedAt
	}
	level := min(floor+l*max(end.Sub(since), 0).Minutes(), l) + r.afterReading(d)
	return min(level+l*max(now.Sub(end), 0).Minutes(), l) + r.othersReturned(d, b)
}

// othersReturned is what the server gave back of the attempts of r's pool
// other than r since r was granted: the unused max_tokens they reserved
// (their afterReading, where positive).
func (r *reservation) othersReturned(d int, b *budgetState) float64 {
	return b.returned[d] - r.returnedAt[d] - r.returned[d]
}

// afterReading is what the server changed of r's count in dimension d
// after its response said what remains, as r's charge shows it now: where
// max_tokens is reserved, the output given back when the response ended
// (zero until then); where output is counted as produced, the output
// counted after the reading, taken to be all of it (the server reads its
// levels when it admits the attempt). The input the server counted before.
// Without max_tokens in the request, what the server reserved is not known,
// and nothing is assumed to have changed.
func (r *reservation) afterReading(d int) float64 {
	if d != int(OutputTokens) && d != int(Tokens) || r.output == ReserveMaxTokens && r.maxTokens <= 0 {
		return 0
	}
	return r.outAtReading - r.charged[OutputTokens]
}

// ceiling is the most that a bucket of limit l, started from r's response
// in dimension d, can hold: the limit, less, where the start counted all of
// r's charge (startBound), what the server counted of r after its reading.
// The server's bucket refills nothing while full, and output it counts as
// produced is taken after the reading: a bucket full before r stays full
// until then, however long r is out (floorNow caps its refill alike).
func (r *reservation) ceiling(d int, l float64) float64 {
	if r.started[d] == startBound {
		return l + min(r.afterReading(d), 0)
	}
	return l
}

// sinceStart is what r's charge in dimension d changed by since the bucket
// started from r's response, as far as the start did not count it: all of
// it from a start at the limit less r's charge, what the server changed
// after its reading (afterReading) from a start at the reading.
func (r *reservation) sinceStart(d int) float64 {
	if r.started[d] == startBound {
		return r.startCharge[d] - r.charged[d]
	}
	return r.afterReading(d)
}

// doneLocked marks r settled: its charges are final.
func (p *pool) doneLocked(r *reservation) {
	if !r.settled {
		r.settled = true
		for d, n := range r.stored {
			p.budget.held[d] -= n
		}
	}
}

// refundAllLocked gives back everything r is charged, once.
func (p *pool) refundAllLocked(r *reservation) {
	if !r.refunded && !r.settled {
		r.charged = [NumDimensions]float64{}
		r.refunded = true
		p.syncLocked(r, false)
	}
}

// releaseLocked gives up r's slot and cold-start gate and, when all is set,
// everything it is charged.
func (p *pool) releaseLocked(r *reservation, all bool) {
	if all {
		p.refundAllLocked(r)
	}
	if r.slot {
		r.slot = false
		b := &p.budget
		b.inFlight = slices.DeleteFunc(b.inFlight, func(x *reservation) bool { return x == r })
		b.cache.sending(r.writes, -1)
	}
	p.unwatchLocked(r)
	p.releaseProbeLocked(r)
}

// unwatchLocked stops counting r among the attempts whose output is seen
// as it is produced.
func (p *pool) unwatchLocked(r *reservation) {
	if r.watched {
		r.watched = false
		p.budget.watched--
	}
}

// produced is told that r's stream has shown outputBytes of output so far.
// Where that is more than r is charged, at the bytes per token the pool's
// streams are learned to carry, less estimateMargin deviations (so as to
// count more tokens, not fewer), r is charged it, and a deviation of a
// call's output ahead, so that a long stream is charged again every so
// many tokens rather than at every read. The server's level then stays
// above tollgate's as the stream goes, whatever it produces.
func (r *reservation) produced(outputBytes int64) {
	p := r.p
	p.mu.Lock()
	b := &p.budget
	if r.watched && !r.settled && !r.refunded {
		perToken, _ := b.streamed.low(1)
		seen := math.Ceil(float64(outputBytes) / perToken)
		if seen > r.charged[OutputTokens] {
			ahead, _ := b.produced.deviation()
			more := seen + max(math.Ceil(ahead), 1) - r.charged[OutputTokens]
			r.charged[OutputTokens] += more
			r.charged[Tokens] += more
			p.syncLocked(r, false)
		}
	}
	p.unlock(nil, nil)
}

func (p *pool) releaseProbeLocked(r *reservation) {
	if r.probe {
		r.probe, p.budget.probing = false, false
	}
}

// learnLocked takes the limits the headers report and notes in r what they
// say remains (its floor, below); stream says the response body is an
// event stream. It reports whether a limit was learned or changed.
//
// The floor of a dimension is what the server's remaining reading allows
// the level to have been when r was sent; the store lowers the level to it
// plus the refill since. The server took the reading somewhere between r's
// send and the arrival of its headers, having counted any of the other
// attempts in flight, so the reading is turned into the most the level can
// be, never less: the refill since r was sent is added (by the store),
// nothing charged meanwhile is subtracted, and a value rounded to a unit
// (Anthropic's token headers) is read as the top of its interval. The level
// is only ever lowered: more room on the server's side is the estimates
// being cautious, which settling corrects.
func (p *pool) learnLocked(now time.Time, r *reservation, h RateLimitHeaders, stream bool) bool {
	b := &p.budget
	dl := dialectOf(cmpOr(h.Provider, p.key.Provider))
	learned := false
	var fresh [NumDimensions]bool
	// The moment the server read its levels: at the headers, unless the
	// response shows it read them when it admitted r (readAtSend); taken
	// then a second late, as a reset is: the server admits r a moment after
	// it was sent, and on a busy machine that moment can be long.
	at := now
	if readAtSend(now, r, h, dl) {
		if at = r.sentAt.Add(time.Second); at.After(now) {
			at = now
		}
	}
	for d := range NumDimensions {
		reading := h.Limits[d]
		if !dl.learn[d] {
			continue
		}
		if reading.HasLimit && reading.Limit > 0 && (b.limits[d] != reading.Limit || b.sources[d] != LimitFromHeaders) {
			fresh[d] = b.limits[d] <= 0
			learned = learned || b.limits[d] != reading.Limit
			b.limits[d], b.sources[d] = reading.Limit, LimitFromHeaders
		}
		if reading.HasRemaining && b.limits[d] > 0 {
			r.floor[d] = min(float64(b.limits[d]), float64(reading.Remaining)+dl.rounding[d])
			r.hasFloor[d] = true
			r.readAt, b.reading[d] = at, r
		}
	}
	untaken := false
	if rd := h.Limits[OutputTokens]; dl.detectOutput && rd.HasRemaining && rd.HasLimit && rd.Limit > 0 {
		r.outRemaining, r.outLimit = float64(rd.Remaining), float64(rd.Limit)
		untaken = maxTokensUntaken(r, dl.rounding[OutputTokens])
		if untaken && provesUntaken(r, h, stream) {
			p.producedEvidenceLocked()
		}
	}
	// The output the server had counted of r when it said so: none of a
	// refused attempt or of one whose output it counts as produced (as r's
	// reading may show, though r was charged max_tokens), the max_tokens it
	// reserved of the others.
	r.outAtReading = 0
	if r.status < 400 && r.output == ReserveMaxTokens && !untaken {
		r.outAtReading = min(r.charged[OutputTokens], float64(r.maxTokens))
	}
	if fresh != ([NumDimensions]bool{}) {
		p.startFreshLocked(now, at, r, fresh, h)
	}
	return learned
}

// readAtSend reports whether r's response shows that the server read its
// levels when it admitted r, not when it wrote the headers: its requests
// remaining is the limit less r itself, though r was out longer than the
// server takes to refill one request, which a reading at the headers would
// have counted back. (A JSON response's headers come seconds after the
// send; where they were read at it, the refill since is the server's too.)
//
// It is only asked of a provider whose output rule is fixed (dl.output,
// not detected): there the server counted at the send what r was charged,
// and what r is charged later changes both alike. Where the rule is yet to
// be detected, r may be charged max_tokens the server never took, whose
// refund on top of the refill would put the level above the server's; and
// those providers' resets are timestamps, which tell the refill anyway.
func readAtSend(now time.Time, r *reservation, h RateLimitHeaders, dl *dialect) bool {
	rd := h.Limits[Requests]
	if dl.detectOutput || r.status >= 400 || !rd.HasRemaining || !rd.HasLimit || rd.Limit <= 0 {
		return false
	}
	return rd.Remaining == rd.Limit-1 && now.Sub(r.sentAt) > time.Minute/time.Duration(rd.Limit)
}

// startFreshLocked starts the buckets of the dimensions whose limits r's
// response made known (fresh), from what it said remains as of at, when
// the server read it.
func (p *pool) startFreshLocked(now, at time.Time, r *reservation, fresh [NumDimensions]bool, h RateLimitHeaders) {
	b := &p.budget
	// A bucket the store has not seen holds, until the store reports it,
	// what the next admission will start it at (Admission.Start). The
	// level is kept as of levelAt: it is set back by the refill since.
	for d, f := range fresh {
		if !f {
			continue
		}
		// The bucket starts at what the response said remains, or, where
		// that is rounded (or not said) and the bucket was full before r,
		// the limit less r's charge: the bucket held at most its limit
		// before the server counted r. Both are as of at, with the refill
		// since. What r is charged later counts from there (syncLocked).
		l := float64(b.limits[d])
		level := l
		r.started[d] = startBound
		if r.hasFloor[d] {
			level, r.started[d] = min(r.floorNow(d, b, at, now), l), startReading
		}
		if bound := l - r.charged[d] + l*now.Sub(at).Minutes(); bound < level {
			level, r.started[d] = bound, startBound
		}
		level = min(level, r.ceiling(d, l))
		// Where the response does not show when the server took its
		// reading, it may be any time from r's send to the arrival of its
		// headers, and both are taken to be as of the headers. The refill
		// since the send is then only credited where the reading says when
		// the bucket will be full again (its reset), which tells the level
		// now whenever it was read; taken a second late, for a reset rounded
		// to the second or a clock a little off. The reset lowers no start:
		// it only credits refill.
		if full := h.Limits[d].Reset.Add(time.Second).Sub(now); at.Equal(now) && !h.Limits[d].Reset.IsZero() && full <= 2*time.Minute {
			refilled := min(level+l*max(now.Sub(r.sentAt), 0).Minutes(), r.ceiling(d, l))
			fromReset := l - l*max(full, 0).Minutes() + r.afterReading(d)
			switch {
			case refilled <= fromReset:
				level = refilled
			case level < fromReset:
				level, r.started[d] = fromReset, startReading // it counted r as the server had
			}
		}
		r.startCharge[d] = r.charged[d]
		r.credited[d] = r.sinceStart(d)
		b.level[d], b.levelKnown[d] = level-l*max(now.Sub(b.levelAt), 0).Minutes(), true
	}
}

// The output rule is detected from what a response's output-tokens
// remaining says at the start of the response, R (rounded to a unit u, up
// or down), of a limit L, for an attempt with max_tokens M:
//
//   - Were M taken at admission, R could never exceed L - M by more than
//     the rounding: R - u > L - M proves output counted as produced, at once.
//   - For an attempt that was alone in flight, with the level known to be
//     B before it (the limit, for a pool's first response), R is near B - M
//     when M was taken, and within [B - o, B] when output is counted as it
//     is produced (o, the output, once the body has ended; the headers may
//     come before or after it). When the first is nearer by more than half a
//     unit, and M - o is more than a unit, M was taken. Reserving M is the
//     safe way to be wrong: it costs throughput, never a 429, and a later
//     response proves the other rule when it can.

// maxTokensUntaken reports whether r's response proves that the server did
// not take r's max_tokens at admission: output remaining, rounded to u,
// more than the limit less max_tokens.
func maxTokensUntaken(r *reservation, u float64) bool {
	return r.maxTokens > 0 && r.outRemaining-u > r.outLimit-float64(r.maxTokens)
}

// provesUntaken reports whether r's response, whose reading says its
// max_tokens was not taken (maxTokensUntaken), proves it: only a response
// the server admitted, and only a reading taken while the server still held
// what it reserved of r. A stream's headers (of a response that is one,
// whatever the request asked) come before its output, so before the server
// settles it. A JSON response's headers come with its
// body, and a server may show its levels as of their writing, after it gave
// back the max_tokens r did not use: that looks like max_tokens never
// taken, and believing it drew 160 429s per 100 OK against such a server
// that reserves. A JSON response proves it where max_tokens is above the
// output limit, which a server that reserves cannot admit at all, or where
// it shows the server read its levels well before it wrote the response
// (readBeforeWritten).
func provesUntaken(r *reservation, h RateLimitHeaders, stream bool) bool {
	if r.status >= 300 {
		return false // refused or failed: nothing was taken, whatever the rule
	}
	return stream || float64(r.maxTokens) > r.outLimit || readBeforeWritten(h)
}

// readBeforeWritten reports whether a response shows that the server read
// its levels well before it wrote the response, so before it settled the
// reply: the requests bucket's reset, less the refill its remaining lacks,
// is when the server read it, and that is more than two seconds before the
// Date the server wrote (each is to the second; both are the server's
// clock, whatever tollgate's says, where the reset is given as a time: a
// wait is on tollgate's clock, which tells nothing beside the server's
// Date). A JSON reply of more than about four
// seconds from a server that reads its levels when it admits a call shows
// it; one that reads them when it writes the headers never does.
func readBeforeWritten(h RateLimitHeaders) bool {
	rd := h.Limits[Requests]
	if h.Date.IsZero() || !h.resetAt[Requests] || !rd.HasRemaining || !rd.HasLimit || rd.Limit <= 0 || rd.Remaining >= rd.Limit {
		return false
	}
	lacking := time.Duration(float64(rd.Limit-rd.Remaining) / float64(rd.Limit) * float64(time.Minute))
	return rd.Reset.Add(-lacking).Add(2 * time.Second).Before(h.Date)
}

// producedEvidenceLocked switches to counting output as produced, where a
// response proved it (maxTokensUntaken, provesUntaken).
func (p *pool) producedEvidenceLocked() {
	b := &p.budget
	if b.outputSource == "option" || b.outputSource == "detected" && b.output == CountAsProduced {
		return
	}
	b.output, b.outputSource = CountAsProduced, "detected"
}

// reservedEvidenceLocked switches to reserving max_tokens when r's
// response, settled with output out, shows M was taken.
func (p *pool) reservedEvidenceLocked(r *reservation, out float64) {
	b := &p.budget
	dl := dialectOf(p.key.Provider)
	if b.outputSource == "option" || b.output != CountAsProduced || !dl.detectOutput ||
		!r.alone || r.outLimit <= 0 || r.maxTokens <= 0 {
		return
	}
	u, m, got := dl.rounding[OutputTokens], float64(r.maxTokens), r.outRemaining
	before := r.outputBefore
	if before < 0 {
		before = r.outLimit // a pool's first attempt: a full bucket
	}
	if m-out <= u {
		return // the two rules look alike within the rounding
	}
	taken := math.Abs(got - (before - m))
	produced := 0.0
	switch {
	case got < before-out:
		produced = before - out - got
	case got > before:
		produced = got - before
	}
	if taken+u/2 < produced {
		b.output, b.outputSource = ReserveMaxTokens, "detected"
	}
}

func cmpOr(p, q Provider) Provider {
	if p != "" {
		return p
	}
	return q
}
