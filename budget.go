package tollgate

import (
	"context"
	"maps"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Budget returns the layer that admits each attempt against the limits of
// its Key (provider, model family), so that the client stays inside the
// account's limits instead of learning them from 429s.
//
// Each Key has one continuously refilled bucket per known limit (see Limits),
// kept in the State's Store (WithStore; by default in memory, this
// Transport's alone):
// requests, input tokens and output tokens per minute, and tokens per minute
// (input and output combined) where the provider reports that instead, as
// OpenAI does. An attempt costs one request, its estimated input tokens and,
// reserved up front, its max_tokens of output (DefaultOutputTokens when the
// request sets none). A cost larger than a bucket's capacity waits for a full
// bucket and takes all of it. An attempt waits until every bucket covers its
// cost; waiters are served strictly in arrival order per Key, so a small
// attempt never overtakes a bigger one that came first.
//
// When an attempt's exchange is done (its response body read to the end or
// closed, or the attempt failed) its reservation is settled to the usage the
// response reported, which frees unused output capacity at once. A 429 gives
// its whole reservation back as soon as its headers arrive: the server did not
// count it. An attempt that got no response gives its tokens back and keeps
// its request, since the server may have counted the request before the
// connection failed, and keeping it paces reconnection storms. Other error
// responses give back their output reservation.
//
// Input tokens are estimated from the request's prompt bytes and images. The
// number of prompt bytes per rate-limited input token is learned per Key
// from the usage responses report (a moving average clamped to
// [minBytesPerToken, maxBytesPerToken], starting at DefaultBytesPerToken), so
// a systematic misestimate corrects itself within a few calls. Estimates
// divide by that mean less three learned standard deviations of it: an
// attempt is admitted the moment its estimate fits, so an estimate short of
// the server's count would draw a 429, while one too high only holds tokens
// until the attempt settles. Rate-limited
// input follows the provider: Anthropic counts input and cache-creation
// tokens but not cache reads; OpenAI counts every prompt token.
//
// Limits come from WithLimits or from the *-limit response headers; headers
// win. When an attempt's response headers arrive, each bucket whose level is
// above what the server's *-remaining header allows is pulled down to it,
// since other processes may share the Key: at once when the server says
// less remains than the store held when this process last asked it, else
// with the attempt's settlement. The reading is read as
// the most the level can be — the refill since the attempt was sent added,
// a value rounded to the thousand (Anthropic's token headers) read as the top
// of its rounding interval, nothing this process sent meanwhile subtracted —
// so a level is never pulled further down than the server's count requires
// (see the floor, below learnLocked). Until any limit is known for a Key, its attempts are
// admitted one at a time: the next one waits for the previous one's response
// headers. A Key whose successful responses carry no limit headers at all (a
// gateway that strips them) ends its cold start with that response and is
// not paced; give such endpoints WithLimits.
//
// The store is asked once per attempt to admit it, and once more to settle
// it; a settlement rides with the next admission this process asks of the
// store when one is coming (a shared store's grant ahead of time holds the
// head of the queue with others behind it), so that a busy fleet pays about
// one round trip per attempt. A shared store may grant an attempt ahead of
// time (Store.Admit): the attempt then waits out its delay at the head of
// this process's queue before it is sent.
//
// WithMaxConcurrency caps the attempts in flight per Key; an attempt is in
// flight from admission until its exchange is done.
//
// A wait ends at once when the request context is done; RoundTrip then
// returns the context's error and gives back everything the attempt held:
// its place in the queue, its concurrency slot and its tokens. The time
// spent waiting is recorded in the call's Waits.Budget. All waits use the
// clock given by WithClock.
//
// Budget sees usage and the end of a body through the Observe layer, which
// must run inside it (New does this). Without Observe, an attempt is done
// when its response headers arrive and its reservation is never settled.
//
// A nil s gets a State of its own with default options.
func Budget(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return &budgeter{state: s, next: orDefault(next)}
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

type budgeter struct {
	state *State
	next  http.RoundTripper
}

func (b *budgeter) RoundTrip(req *http.Request) (*http.Response, error) {
	s := b.state
	req, c := s.callFor(req)
	req, ex := s.exchangeFor(req, c)
	kb := s.budget.forKey(c.key)

	r := &reservation{kb: kb}
	waited, err := kb.admit(req.Context(), r, &c.info)
	if waited > 0 {
		c.addWait(func(w *Waits) { w.Budget += waited })
	}
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	ex.whenDone(r.settle)

	resp, err := b.next.RoundTrip(req)
	observed := ex.isSent() // Observe marks the exchange sent
	if resp != nil {
		status, h, _ := ex.result()
		if !observed || status != resp.StatusCode {
			status, h = resp.StatusCode, ParseRateLimitHeaders(resp.Header, s.cfg.clock.Now())
		}
		kb.responded(r, status, h)
	}
	if !observed {
		// Nothing inside will report the end of the body.
		ex.finish(Usage{}, err)
	}
	return resp, err
}

// Limits are rate limits per minute for one Key. A zero field is unknown:
// that dimension is not paced until a response header reports it.
type Limits struct {
	RequestsPerMinute     int
	InputTokensPerMinute  int
	OutputTokensPerMinute int
	// TokensPerMinute limits input and output tokens combined, as OpenAI
	// reports it. Anthropic's tokens-* headers only repeat the most
	// restrictive of its other limits and are not learned as a limit.
	TokensPerMinute int
}

func (l Limits) byDimension() [numDimensions]int64 {
	return [numDimensions]int64{
		Requests:     int64(l.RequestsPerMinute),
		Tokens:       int64(l.TokensPerMinute),
		InputTokens:  int64(l.InputTokensPerMinute),
		OutputTokens: int64(l.OutputTokensPerMinute),
	}
}

func limitsOf(v [numDimensions]int64) Limits {
	return Limits{
		RequestsPerMinute:     int(v[Requests]),
		TokensPerMinute:       int(v[Tokens]),
		InputTokensPerMinute:  int(v[InputTokens]),
		OutputTokensPerMinute: int(v[OutputTokens]),
	}
}

// LimitSource says where an effective limit came from.
type LimitSource uint8

// The sources of a limit.
const (
	LimitUnknown     LimitSource = iota // no limit known: not paced
	LimitFromOption                     // WithLimits
	LimitFromHeaders                    // a response's *-limit header
)

func (s LimitSource) String() string {
	switch s {
	case LimitFromOption:
		return "option"
	case LimitFromHeaders:
		return "headers"
	}
	return "unknown"
}

// DefaultOutputTokens is the output reserved for a request that sets no
// max_tokens (OpenAI's chat completions may omit it). It is settled to the
// real output when the response ends.
const DefaultOutputTokens = 4096

// The learned prompt bytes per rate-limited input token stay in this range,
// so that one odd response (or heavy prompt caching, which lowers the tokens
// counted without lowering the bytes sent) cannot make the estimate absurd.
const (
	minBytesPerToken = 1.0
	maxBytesPerToken = 16.0
	// minLearnWeight is the weight of a new sample once a few are known; the
	// first samples are averaged with equal weight, so the default guess is
	// replaced by the first real measurement.
	minLearnWeight = 0.25
	// estimateMargin is how many learned standard deviations of the ratio
	// an estimate stays on the safe side of its mean. An attempt is admitted
	// the moment the level covers its estimate, so an estimate even a token
	// short of what the server counts draws a 429; over-estimating costs
	// nothing lasting, since settling gives the difference back.
	estimateMargin = 3.0
	// Until minRatioSamples measurements are in, the ratio's deviation is
	// taken to be at least initialRatioDeviation of its mean.
	minRatioSamples       = 3
	initialRatioDeviation = 0.1
)

// DefaultUtilizationThreshold is the threshold WithUtilizationAlert uses
// when given zero or less.
const DefaultUtilizationThreshold = 0.8

// budgetConfig is the Budget layer's part of config.
type budgetConfig struct {
	limits         Limits
	maxConcurrency int
	alertThreshold float64
	onAlert        func(UtilizationAlert)
}

// WithLimits sets the limits of every Key before any response has reported
// them, which also ends the cold start (one attempt at a time) at once. A
// limit reported by a response's *-limit header replaces the one set here
// for that Key and dimension. Zero fields leave a dimension to the headers;
// negative values count as zero.
func WithLimits(l Limits) Option {
	return func(c *config) {
		v := l.byDimension()
		for d := range v {
			v[d] = max(v[d], 0)
		}
		c.budget.limits = limitsOf(v)
	}
}

// WithMaxConcurrency caps the attempts in flight per Key at n; more wait, in
// arrival order, in the same queue as attempts waiting for tokens. An attempt
// is in flight from admission until its response body is read to the end or
// closed, or it fails. n of zero or less means no cap (the default).
func WithMaxConcurrency(n int) Option {
	return func(c *config) { c.budget.maxConcurrency = max(n, 0) }
}

// UtilizationAlert reports that the use of one limit over the last minute
// crossed the threshold given to WithUtilizationAlert, upwards (Above) or
// back down.
type UtilizationAlert struct {
	Key       Key
	Dimension Dimension
	// Used is what settled attempts consumed of the limit in the minute
	// before At.
	Used        int64
	Limit       int64
	Utilization float64 // Used / Limit
	Above       bool    // whether Utilization is at or above the threshold
	At          time.Time
}

// WithUtilizationAlert calls f when the use of any known limit of a Key over
// the last minute reaches threshold (a fraction of the limit; 0.8 when zero
// or less), and again when it falls back below. Use is the actual
// consumption of settled attempts in a sliding one-minute window (in whole
// seconds). Nothing runs in the background: use is evaluated when an
// attempt is admitted or settled, so a fall is reported at the next such
// event. f runs on the goroutine of that event with no lock held; the alerts
// of one Key are delivered one at a time, in order. f should return quickly.
// A nil f turns alerts off.
func WithUtilizationAlert(threshold float64, f func(UtilizationAlert)) Option {
	return func(c *config) {
		if threshold <= 0 {
			threshold = DefaultUtilizationThreshold
		}
		c.budget.alertThreshold, c.budget.onAlert = threshold, f
	}
}

// BudgetSnapshot is the Budget layer's view of one Key at one moment.
type BudgetSnapshot struct {
	// Limits are the effective limits; a zero field is unknown.
	Limits Limits
	// Dimensions holds, per Dimension, the limit, its source, the bucket
	// level and the use over the last minute.
	Dimensions [numDimensions]DimensionBudget
	// ColdStart reports that no limit is known yet, so attempts are admitted
	// one at a time.
	ColdStart bool
	InFlight  int // attempts admitted whose exchange is not done
	Waiting   int // attempts queued for admission, or granted ahead of time by a shared store and waiting for their time
	// BytesPerToken is the learned number of prompt bytes per rate-limited
	// input token.
	BytesPerToken float64
	// Tier names the published tier the limits match (tier.go), TierCustom
	// when they match none, TierUnknown before any is known. It is
	// informational: pacing always uses Limits.
	Tier string
	// Fallback reports that the store given by WithStore failed, so that
	// this Transport paces by its local fallback budget meanwhile.
	Fallback bool
}

// DimensionBudget is the Budget layer's view of one dimension of a Key.
type DimensionBudget struct {
	Limit  int64 // per minute; zero when unknown
	Source LimitSource
	// Level is what the bucket holds now, as the store last reported it
	// plus the refill since: the amount an attempt can take without
	// waiting. It is below zero while the bucket is in debt: settled usage
	// exceeded what was reserved, or a shared store granted attempts ahead
	// of time. Zero when the limit is unknown.
	Level float64
	// Used is what settled attempts consumed in the last minute.
	Used int64
	// Utilization is Used / Limit; zero when the limit is unknown.
	Utilization float64
}

// budget holds the Budget layer's state for every Key.
type budget struct {
	cfg   *config
	guard *storeGuard
	// onPause tells the Breaker layer of a pause found in the store, taken
	// by another Transport, and returns the *OpenError to fail with when
	// waiting it out is hopeless. Set once by NewState.
	onPause func(ctx context.Context, k Key, d time.Duration, reason string) error

	mu   sync.RWMutex
	keys map[Key]*keyBudget
}

func newBudget(cfg *config, guard *storeGuard) *budget {
	return &budget{cfg: cfg, guard: guard, keys: make(map[Key]*keyBudget)}
}

// forKey returns the state of k, creating it.
func (b *budget) forKey(k Key) *keyBudget {
	b.mu.RLock()
	kb := b.keys[k]
	b.mu.RUnlock()
	if kb != nil {
		return kb
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if kb = b.keys[k]; kb == nil {
		kb = newKeyBudget(b, k, b.cfg.clock.Now())
		b.keys[k] = kb
	}
	return kb
}

// known returns the Keys the budget has state for.
func (b *budget) known() []Key {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return slices.Collect(maps.Keys(b.keys))
}

// tier names the tier k's limits match; TierUnknown for a Key not seen.
func (b *budget) tier(k Key) string {
	b.mu.RLock()
	kb := b.keys[k]
	b.mu.RUnlock()
	if kb == nil {
		return TierUnknown
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	return tierOf(kb.key.Provider, limitsOf(kb.limits))
}

func (b *budget) snapshot(k Key, now time.Time) BudgetSnapshot {
	b.mu.RLock()
	kb := b.keys[k]
	b.mu.RUnlock()
	if kb == nil {
		kb = newKeyBudget(b, k, now)
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	return kb.snapshotLocked(now)
}

// publishPause puts a pause the Breaker layer took into the store, so that
// every Transport sharing it waits too.
func (b *budget) publishPause(k Key, d time.Duration, reason string) {
	g := b.guard
	st, _ := g.pick()
	pause := func(ctx context.Context, st Store) error { return st.Pause(ctx, k.StoreName(), d, reason) }
	if err := g.call(context.Background(), st, pause); err != nil && g.local != nil {
		_ = pause(context.Background(), g.local)
	}
}

// keyBudget is the Budget layer's state for one Key, under one mutex. The
// bucket levels are in the store; the queue, the concurrency and the
// learning are this process's.
type keyBudget struct {
	key  Key
	name string // the Key's name in the store
	b    *budget
	cfg  *config

	mu      sync.Mutex
	limits  [numDimensions]int64
	sources [numDimensions]LimitSource
	// mirror is the levels the store reported last, at mirrorAt on this
	// process's clock: for Snapshot, and to tell when a response's
	// remaining header is news to the store.
	mirror   [numDimensions]float64
	mirrorAt time.Time
	// pending holds settlements for pendingStore not sent yet (syncLocked).
	pending      []Settlement
	pendingStore Store
	// held is what the store holds of the attempts not yet settled; zero
	// once all are.
	held     [numDimensions]float64
	queue    []*waiter // FIFO; only the head asks the store
	inFlight int
	probing  bool // cold start: one attempt awaits its response headers
	// unpaced: a successful response carried no limit headers, so this Key's
	// server (a gateway, a proxy) will not tell its limits; the cold start
	// ends rather than serialising every call forever.
	unpaced bool

	bytesPerToken float64 // learned mean
	ratioVariance float64 // learned variance of the per-call ratio
	samples       int

	window     usageWindow
	above      [numDimensions]bool
	alerts     []UtilizationAlert // to deliver, in order
	delivering bool               // a goroutine is delivering alerts
}

func newKeyBudget(b *budget, k Key, now time.Time) *keyBudget {
	kb := &keyBudget{key: k, name: k.StoreName(), b: b, cfg: b.cfg, bytesPerToken: DefaultBytesPerToken, mirrorAt: now}
	for d, l := range b.cfg.budget.limits.byDimension() {
		if l > 0 {
			kb.limits[d], kb.sources[d] = l, LimitFromOption
			kb.mirror[d] = float64(l)
		}
	}
	return kb
}

// A reservation is what one attempt holds of its Key's budget, from
// admission until it is settled.
type reservation struct {
	kb          *keyBudget
	cost        [numDimensions]float64 // what the attempt asks for
	charged     [numDimensions]float64 // what it is charged now
	sentAt      time.Time              // when it may be sent, on this process's clock
	promptBytes int64
	images      int64

	// store is the store that admitted it, stored what that store holds of
	// it per dimension, and storeSentAt when it may be sent on the store's
	// clock.
	store       Store
	stored      [numDimensions]float64
	storeSentAt time.Time
	// floor holds what a response said remains, per dimension, until it is
	// given to the store.
	floor    [numDimensions]float64
	hasFloor [numDimensions]bool

	status   int  // the response status, once headers arrived
	slot     bool // holds a place among the attempts in flight
	probe    bool // holds the cold-start gate
	refunded bool // gave everything back (429)
	settled  bool
}

// A waiter is an attempt queued for admission. Its fields are guarded by
// keyBudget.mu.
type waiter struct {
	r   *reservation
	ctx context.Context // the attempt's, for the store calls made on its behalf

	granted bool
	delay   time.Duration // granted ahead of time: wait this long before sending
	// Not granted: ask the store again after retry when timed; an attempt
	// blocked on a slot or the cold-start gate has no timer.
	retry time.Duration
	timed bool
	// paused is the time left of a pause in force in the store, and why.
	paused time.Duration
	reason string

	wake chan struct{} // capacity 1: granted, became head, or the head's wait may be shorter
}

// admit waits, in arrival order, until the store grants r's cost and the
// Key's concurrency allows one more attempt, then waits out the delay of a
// grant ahead of time. It returns how long it waited, and ctx's error when
// ctx ended the wait (or an *OpenError for a pause found in the store that
// cannot be waited out), in which case r holds nothing.
func (kb *keyBudget) admit(ctx context.Context, r *reservation, info *RequestInfo) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	clock := kb.cfg.clock
	kb.mu.Lock()
	start := clock.Now()
	kb.estimateLocked(r, info)
	w := &waiter{r: r, ctx: ctx, wake: make(chan struct{}, 1)}
	if len(kb.queue) == 0 {
		kb.tryLocked(w)
	}
	if !w.granted || w.delay > 0 {
		kb.queue = append(kb.queue, w)
	}
	// The head's timer is kept while a new answer does not bring its
	// deadline closer, so that a wake-up changes nothing it need not.
	var timer <-chan time.Time
	var timerAt time.Time
	for !w.granted {
		paused, reason := w.paused, w.reason
		if kb.queue[0] != w || !w.timed {
			timer = nil
		} else if at := clock.Now().Add(w.retry); timer == nil || at.Before(timerAt) {
			timer, timerAt = clock.After(w.retry), at
		}
		kb.mu.Unlock()
		var err error
		if paused > 0 {
			err = kb.b.onPause(ctx, kb.key, paused, reason)
		}
		if err == nil {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-w.wake:
			case <-timer:
				timer = nil
			}
		}
		kb.mu.Lock()
		now := clock.Now()
		if err != nil {
			kb.leaveLocked(now, w)
			kb.mu.Unlock()
			return now.Sub(start), err
		}
		if !w.granted {
			kb.serveLocked(now, false)
		}
	}
	deliver := kb.evaluateLocked(clock.Now())
	delay := w.delay
	kb.mu.Unlock()
	kb.deliverAlerts(deliver)
	if delay <= 0 {
		return clock.Now().Sub(start), nil
	}
	// Granted ahead of time: w holds the head of the queue until it may be
	// sent, so that this process has one grant ahead at a time and the
	// store's queue stays short enough for give-backs to count.
	err := sleep(ctx, clock, delay)
	kb.mu.Lock()
	now := clock.Now()
	if err != nil {
		kb.leaveLocked(now, w)
	} else {
		kb.removeLocked(w)
		kb.serveLocked(now, true)
	}
	kb.mu.Unlock()
	return now.Sub(start), err
}

// leaveLocked takes w out of the queue for good, as its context ended:
// everything it was granted is given back, and the next in line goes.
func (kb *keyBudget) leaveLocked(now time.Time, w *waiter) {
	head := kb.removeLocked(w) == 0
	switch {
	case w.granted:
		kb.cancelLocked(now, w.r)
	case head:
		kb.serveLocked(now, true)
	}
}

// cancelLocked gives back everything a granted attempt that will not be sent
// holds.
func (kb *keyBudget) cancelLocked(now time.Time, r *reservation) {
	kb.releaseLocked(r, true)
	kb.doneLocked(r)
	kb.serveLocked(now, true)
}

// grantAhead is the longest wait the store may grant r ahead of time: what
// is left of ctx's deadline, which no grant should outlast.
func grantAhead(ctx context.Context) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		return max(time.Until(deadline), 0)
	}
	return math.MaxInt64
}

// tryLocked asks the store to admit w's attempt, unless it waits for a slot
// or the cold-start gate, and records the answer in w. A store that fails
// is replaced by the local fallback for this attempt at once.
func (kb *keyBudget) tryLocked(w *waiter) {
	w.timed, w.paused, w.reason = false, 0, ""
	if kb.blockedLocked() {
		return
	}
	g := kb.b.guard
	a := Admission{Cost: w.r.cost, MaxWait: grantAhead(w.ctx)}
	var res Admitted
	admit := func(ctx context.Context, st Store) (err error) {
		a.Limits = g.limits(st, kb.limits)
		res, err = st.Admit(ctx, kb.name, a)
		return err
	}
	st, _ := g.pick()
	if len(kb.pending) > 0 {
		if kb.pendingStore != st {
			kb.flushLocked(kb.cfg.clock.Now())
		} else {
			a.Settle = kb.pending
		}
	}
	err := g.call(w.ctx, st, admit)
	if a.Settle != nil {
		// Carried, or lost with a failing store, whose buckets refill.
		clear(kb.pending)
		kb.pending, a.Settle = kb.pending[:0], nil
	}
	if err != nil && w.ctx.Err() == nil && g.local != nil {
		st = g.local
		err = admit(w.ctx, st)
	}
	if err != nil {
		w.retry, w.timed = 0, true // the context ended: the head's loop sees it at once
		return
	}
	now := kb.cfg.clock.Now()
	kb.mirrorLocked(now, res.Levels)
	switch {
	case res.Paused > 0:
		w.paused, w.reason, w.retry, w.timed = res.Paused, res.PauseReason, res.Paused, true
	case !res.Granted:
		w.retry, w.timed = res.Wait, true
	default:
		kb.grantLocked(now, w.r, st, a.Limits, res)
		w.granted, w.delay = true, res.Wait
	}
}

// mirrorLocked notes the levels the store reported.
func (kb *keyBudget) mirrorLocked(now time.Time, l Levels) {
	kb.mirror, kb.mirrorAt = l.Level, now
}

// levelLocked is the level of d as the store last reported it, refilled
// since.
func (kb *keyBudget) levelLocked(now time.Time, d Dimension) float64 {
	b := bucket{limit: float64(kb.limits[d]), level: kb.mirror[d], last: kb.mirrorAt}
	return b.levelAt(now)
}

// estimateLocked fills r's cost from the request and the learned ratio.
func (kb *keyBudget) estimateLocked(r *reservation, info *RequestInfo) {
	var in float64
	if info.PromptBytes > 0 {
		in = math.Ceil(float64(info.PromptBytes)/kb.estimateRatioLocked()) + float64(info.Images)*imageTokens
	} else {
		in = float64(info.EstimatedInputTokens)
	}
	out := float64(DefaultOutputTokens)
	if info.MaxTokens > 0 {
		out = float64(info.MaxTokens)
	}
	r.cost = [numDimensions]float64{Requests: 1, Tokens: in + out, InputTokens: in, OutputTokens: out}
	r.promptBytes, r.images = info.PromptBytes, int64(info.Images)
}

func (kb *keyBudget) limitsKnown() bool {
	return kb.limits != [numDimensions]int64{}
}

// blockedLocked reports whether an attempt must wait for something other
// than the store: a concurrency slot or the cold-start gate.
func (kb *keyBudget) blockedLocked() bool {
	if n := kb.cfg.budget.maxConcurrency; n > 0 && kb.inFlight >= n {
		return true
	}
	return !kb.limitsKnown() && !kb.unpaced && kb.probing
}

// grantLocked records what the store charged r and gives it a place among
// the attempts in flight.
func (kb *keyBudget) grantLocked(now time.Time, r *reservation, st Store, limits [numDimensions]int64, res Admitted) {
	for d, n := range r.cost {
		if l := kb.limits[d]; l > 0 {
			n = min(n, float64(l))
		}
		r.charged[d] = n
		if limits[d] > 0 {
			r.stored[d] = min(r.cost[d], float64(limits[d]))
			kb.held[d] += r.stored[d]
		}
	}
	r.store = st
	r.sentAt, r.storeSentAt = now.Add(res.Wait), res.Levels.At.Add(res.Wait)
	r.slot = true
	kb.inFlight++
	if !kb.limitsKnown() {
		r.probe, kb.probing = true, true
	}
}

// serveLocked admits queued attempts from the head while the store grants
// them. The head left waiting is woken when it is new, or when improved says
// its wait may have become shorter, so that it sets its timer anew. A head
// granted ahead of time holds its place until it may be sent.
func (kb *keyBudget) serveLocked(now time.Time, improved bool) {
	served := false
	for len(kb.queue) > 0 {
		w := kb.queue[0]
		if w.granted {
			break // holding: granted ahead of time
		}
		kb.tryLocked(w)
		if !w.granted {
			if served || improved {
				wake(w)
			}
			break
		}
		wake(w)
		if w.delay > 0 {
			break
		}
		kb.removeLocked(w)
		served = true
	}
	if len(kb.pending) > 0 && !kb.admissionComing() {
		kb.flushLocked(now)
	}
}

func wake(w *waiter) {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// removeLocked takes w out of the queue, keeping the order and the backing
// array, and returns the position it had (-1 when it was not queued).
func (kb *keyBudget) removeLocked(w *waiter) int {
	for i, q := range kb.queue {
		if q == w {
			copy(kb.queue[i:], kb.queue[i+1:])
			kb.queue[len(kb.queue)-1] = nil
			kb.queue = kb.queue[:len(kb.queue)-1]
			return i
		}
	}
	return -1
}

// syncLocked brings the store up to date with r: what r is charged in every
// dimension whose limit is known, and, when floors is set, what r's response
// said remains. The settlement waits in pending for the next admission this
// process asks of the same store, which carries it in the same round trip;
// serveLocked, which follows every call of syncLocked, sends it on its own
// when no admission is coming soon. When the store cannot be reached,
// nothing is lost for good: its buckets refill on their own.
func (kb *keyBudget) syncLocked(r *reservation, floors bool) {
	st, g := r.store, kb.b.guard
	if st == nil || !g.usable(st) {
		return
	}
	s := Settlement{Limits: g.limits(st, kb.limits), SentAt: r.storeSentAt}
	changed := false
	for d, l := range s.Limits {
		if l <= 0 {
			continue
		}
		if delta := r.charged[d] - r.stored[d]; delta != 0 {
			s.Charge[d], changed = delta, true
			kb.held[d] += delta
			r.stored[d] = r.charged[d]
		}
		if floors && r.hasFloor[d] {
			s.Floor[d], s.HasFloor[d], changed = r.floor[d], true, true
			r.hasFloor[d] = false
		}
	}
	if !changed {
		return
	}
	if kb.pendingStore != st {
		kb.flushLocked(kb.cfg.clock.Now())
		kb.pendingStore = st
	}
	kb.pending = append(kb.pending, s)
}

// admissionComing reports whether an admission this process asks of the
// store will follow without anything else happening: a head granted ahead
// of time holds its place with others behind it, the next of whom asks the
// moment it may be sent.
func (kb *keyBudget) admissionComing() bool {
	return len(kb.queue) > 1 && kb.queue[0].granted
}

// flushLocked sends the pending settlements on their own.
func (kb *keyBudget) flushLocked(now time.Time) {
	st, g := kb.pendingStore, kb.b.guard
	pending := kb.pending
	kb.pending = kb.pending[:0]
	for _, s := range pending {
		if !g.usable(st) {
			break
		}
		var levels Levels
		err := g.call(context.Background(), st, func(ctx context.Context, st Store) (err error) {
			levels, err = st.Settle(ctx, kb.name, s)
			return err
		})
		if err == nil {
			kb.mirrorLocked(now, levels)
		}
	}
	clear(pending)
}

// refundLocked gives back what r is charged in the given dimensions.
func (kb *keyBudget) refundLocked(r *reservation, dims ...Dimension) {
	for _, d := range dims {
		r.charged[d] = 0
	}
}

// doneLocked marks r settled: its charges are final.
func (kb *keyBudget) doneLocked(r *reservation) {
	if !r.settled {
		r.settled = true
		for d, n := range r.stored {
			kb.held[d] -= n
		}
	}
}

// refundAllLocked gives back everything r is charged, once.
func (kb *keyBudget) refundAllLocked(r *reservation) {
	if !r.refunded && !r.settled {
		kb.refundLocked(r, Requests, Tokens, InputTokens, OutputTokens)
		r.refunded = true
		kb.syncLocked(r, false)
	}
}

// releaseLocked gives up r's slot and cold-start gate and, when all is set,
// everything it is charged.
func (kb *keyBudget) releaseLocked(r *reservation, all bool) {
	if all {
		kb.refundAllLocked(r)
	}
	if r.slot {
		r.slot = false
		kb.inFlight--
	}
	kb.releaseProbeLocked(r)
}

func (kb *keyBudget) releaseProbeLocked(r *reservation) {
	if r.probe {
		r.probe, kb.probing = false, false
	}
}

// responded learns from an attempt's response headers as soon as they
// arrive: it refunds a 429, learns limits, pulls levels down to what the
// server says remains and opens the cold-start gate. It calls the store
// only when that cannot wait for the attempt's settlement: to refund a
// 429, to charge a limit just learned, or when the server says less remains
// than the store held when this process last asked.
func (kb *keyBudget) responded(r *reservation, status int, h RateLimitHeaders) {
	kb.mu.Lock()
	now := kb.cfg.clock.Now()
	r.status = status
	learned := kb.learnLocked(r, h)
	switch {
	case status == http.StatusTooManyRequests:
		kb.refundAllLocked(r)
	case learned || kb.newsLocked(now, r):
		kb.syncLocked(r, true)
	}
	if status >= 200 && status < 300 && !kb.limitsKnown() {
		kb.unpaced = true
	}
	kb.releaseProbeLocked(r)
	kb.serveLocked(now, true)
	kb.mu.Unlock()
}

// newsLocked reports whether r's response said less remains, in some
// dimension, than the store's level as this process last saw it.
func (kb *keyBudget) newsLocked(now time.Time, r *reservation) bool {
	for d := range numDimensions {
		if r.hasFloor[d] && kb.limits[d] > 0 {
			refill := float64(kb.limits[d]) * max(now.Sub(r.sentAt), 0).Minutes()
			if kb.levelLocked(now, d) > r.floor[d]+refill {
				return true
			}
		}
	}
	return false
}

// budgetDialect is how one provider's headers and usage map onto buckets.
type budgetDialect struct {
	provider Provider
	// learn marks the dimensions whose *-limit headers are limits to pace by
	// and whose *-remaining headers levels are pulled down to.
	learn [numDimensions]bool
	// rounding is the unit *-remaining values are rounded to.
	rounding [numDimensions]float64
	// cacheReads reports whether cache reads count against the input limit.
	cacheReads bool
}

var budgetDialects = []budgetDialect{
	{
		provider: ProviderAnthropic,
		// tokens-* is the most restrictive of the other token limits, a
		// view of them rather than a bucket of its own.
		learn:    [numDimensions]bool{Requests: true, InputTokens: true, OutputTokens: true},
		rounding: [numDimensions]float64{Tokens: 1000, InputTokens: 1000, OutputTokens: 1000},
	},
	{
		provider:   ProviderOpenAI,
		learn:      [numDimensions]bool{Requests: true, Tokens: true},
		cacheReads: true,
	},
}

// otherDialect is used for a provider not in the table: every reported
// limit is learned and every input token counts.
var otherDialect = budgetDialect{learn: [numDimensions]bool{true, true, true, true}, cacheReads: true}

func dialectOf(p Provider) *budgetDialect {
	for i := range budgetDialects {
		if budgetDialects[i].provider == p {
			return &budgetDialects[i]
		}
	}
	return &otherDialect
}

// learnLocked takes the limits the headers report and notes in r what they
// say remains (its floor, below). It reports whether a limit was learned or
// changed.
func (kb *keyBudget) learnLocked(r *reservation, h RateLimitHeaders) bool {
	p := h.Provider
	if p == "" {
		p = kb.key.Provider
	}
	dialect := dialectOf(p)
	learned := false
	for d := range numDimensions {
		reading := h.Limits[d]
		if !dialect.learn[d] {
			continue
		}
		if reading.HasLimit && reading.Limit > 0 &&
			(kb.limits[d] != reading.Limit || kb.sources[d] != LimitFromHeaders) {
			if kb.limits[d] <= 0 {
				kb.mirror[d] = float64(reading.Limit) // a bucket the store has not seen starts full
			}
			learned = learned || kb.limits[d] != reading.Limit
			kb.limits[d], kb.sources[d] = reading.Limit, LimitFromHeaders
		}
		if reading.HasRemaining && kb.limits[d] > 0 {
			r.floor[d] = min(float64(kb.limits[d]), float64(reading.Remaining)+dialect.rounding[d])
			r.hasFloor[d] = true
		}
	}
	return learned
}

// The floor of a dimension is what the server's remaining reading, in r's
// response, allows the level to have been when r was sent; the store lowers
// the level to it plus the refill since.
//
// The server took the reading when it admitted r, somewhere between r's
// send and the arrival of its headers. Which of the other attempts sharing
// the store it had counted by then cannot be known: concurrent attempts
// reach the server in any order. So the reading is turned into the most the
// level can be, never less:
//
//   - the refill since r was sent is added (the earliest the reading could
//     have been taken);
//   - nothing charged meanwhile is subtracted (the server may have counted
//     all of it), so attempts in flight are never counted twice;
//   - a value rounded to a unit (Anthropic's token headers, documented as
//     rounded to the nearest thousand, by some servers rounded down) may be up
//     to a unit below the truth: the unit is added.
//
// What this bound leaves out is the attempts in flight, which the level
// already holds; the pull-down is for what others spent. The level is only
// ever lowered: when the server knows of more room, the difference is the
// estimates being cautious, which settling corrects.

// settle is called when r's exchange is done: it frees r's slot and settles
// its charges to the usage the response reported.
func (r *reservation) settle(ex *exchange) {
	ex.mu.Lock()
	status, u := ex.status, ex.usage
	ex.mu.Unlock()

	kb := r.kb
	kb.mu.Lock()
	now := kb.cfg.clock.Now()
	if status == 0 {
		status = r.status
	}
	kb.releaseLocked(r, false)
	switch {
	case r.refunded:
	case status == http.StatusTooManyRequests:
		kb.refundAllLocked(r)
	case status == 0:
		kb.refundLocked(r, Tokens, InputTokens, OutputTokens)
	default:
		kb.settleUsageLocked(r, status, u)
	}
	kb.syncLocked(r, true)
	kb.doneLocked(r)
	for d := range numDimensions {
		kb.window.add(now, d, r.charged[d])
	}
	kb.serveLocked(now, true)
	deliver := kb.evaluateLocked(now)
	kb.mu.Unlock()
	kb.deliverAlerts(deliver)
}

// settleUsageLocked sets r's token charges to the usage its response
// reported, and learns the prompt bytes per token from it.
func (kb *keyBudget) settleUsageLocked(r *reservation, status int, u Usage) {
	in, out := r.charged[InputTokens], r.charged[OutputTokens]
	inKnown := u.Reported && u.TotalInputTokens() > 0
	switch {
	case u.Reported:
		out = float64(u.OutputTokens)
	case status >= 400:
		out = 0 // an error response generated nothing
	}
	if inKnown {
		counted := u.InputTokens + u.CacheCreationInputTokens
		if dialectOf(kb.key.Provider).cacheReads {
			counted += u.CacheReadInputTokens
		}
		in = float64(counted)
		if status < 300 {
			kb.learnRatioLocked(r, counted)
		}
	}
	tokens := r.charged[Tokens] - (r.charged[InputTokens] + r.charged[OutputTokens]) + in + out
	r.charged[InputTokens], r.charged[OutputTokens], r.charged[Tokens] = in, out, max(tokens, 0)
}

// learnRatioLocked folds one measurement of prompt bytes per rate-limited
// input token into the Key's estimate.
func (kb *keyBudget) learnRatioLocked(r *reservation, counted int64) {
	text := counted - r.images*imageTokens
	if r.promptBytes <= 0 || text <= 0 {
		return
	}
	sample := min(max(float64(r.promptBytes)/float64(text), minBytesPerToken), maxBytesPerToken)
	kb.samples++
	weight := max(1/float64(kb.samples), minLearnWeight)
	diff := sample - kb.bytesPerToken
	kb.bytesPerToken += weight * diff
	// The exponentially weighted variance that goes with the mean above.
	kb.ratioVariance = (1 - weight) * (kb.ratioVariance + weight*diff*diff)
}

// estimateRatioLocked returns the bytes per token that estimates divide by:
// the learned mean less estimateMargin learned standard deviations, so that
// nearly every estimate covers what the server will count.
func (kb *keyBudget) estimateRatioLocked() float64 {
	deviation := math.Sqrt(kb.ratioVariance)
	if kb.samples < minRatioSamples {
		deviation = max(deviation, initialRatioDeviation*kb.bytesPerToken)
	}
	return max(kb.bytesPerToken-estimateMargin*deviation, minBytesPerToken)
}

// evaluateLocked queues an alert for every known limit whose use over the
// last minute crossed the threshold since the last evaluation. It reports
// whether the caller must deliver them (after unlocking).
func (kb *keyBudget) evaluateLocked(now time.Time) bool {
	cfg := &kb.cfg.budget
	if cfg.onAlert == nil {
		return false
	}
	threshold := cfg.alertThreshold
	if threshold <= 0 {
		threshold = DefaultUtilizationThreshold
	}
	used := kb.window.sum(now)
	for d, limit := range kb.limits {
		if limit <= 0 {
			continue
		}
		u := float64(used[d]) / float64(limit)
		if above := u >= threshold; above != kb.above[d] {
			kb.above[d] = above
			kb.alerts = append(kb.alerts, UtilizationAlert{
				Key: kb.key, Dimension: Dimension(d), Used: used[d], Limit: limit,
				Utilization: u, Above: above, At: now,
			})
		}
	}
	if len(kb.alerts) == 0 || kb.delivering {
		return false
	}
	kb.delivering = true
	return true
}

// deliverAlerts calls the alert hook for every queued alert, in order, with
// no lock held, when deliver says this goroutine is the one to do it.
func (kb *keyBudget) deliverAlerts(deliver bool) {
	if !deliver {
		return
	}
	for {
		kb.mu.Lock()
		batch := kb.alerts
		kb.alerts = nil
		if len(batch) == 0 {
			kb.delivering = false
			kb.mu.Unlock()
			return
		}
		kb.mu.Unlock()
		for _, a := range batch {
			kb.cfg.budget.onAlert(a)
		}
	}
}

func (kb *keyBudget) snapshotLocked(now time.Time) BudgetSnapshot {
	used := kb.window.sum(now)
	snap := BudgetSnapshot{
		Limits:        limitsOf(kb.limits),
		ColdStart:     !kb.limitsKnown() && !kb.unpaced,
		InFlight:      kb.inFlight,
		Waiting:       len(kb.queue),
		BytesPerToken: kb.bytesPerToken,
		Tier:          tierOf(kb.key.Provider, limitsOf(kb.limits)),
		Fallback:      kb.b.guard.isDown(),
	}
	for d := range snap.Dimensions {
		db := DimensionBudget{Limit: kb.limits[d], Source: kb.sources[d], Used: used[d]}
		if db.Limit > 0 {
			db.Level = kb.levelLocked(now, Dimension(d))
			db.Utilization = float64(used[d]) / float64(db.Limit)
		}
		snap.Dimensions[d] = db
	}
	return snap
}

// usageWindow sums consumption per dimension over the last minute, in
// one-second slots.
type usageWindow struct {
	slots [60]usageSlot
}

type usageSlot struct {
	second int64 // Unix second the slot counts
	used   [numDimensions]int64
}

func (w *usageWindow) add(now time.Time, d Dimension, n float64) {
	if n <= 0 {
		return
	}
	sec := now.Unix()
	s := &w.slots[sec%int64(len(w.slots))]
	if s.second != sec {
		*s = usageSlot{second: sec}
	}
	s.used[d] += int64(math.Round(n))
}

// sum returns the consumption in the minute up to now.
func (w *usageWindow) sum(now time.Time) [numDimensions]int64 {
	var total [numDimensions]int64
	sec := now.Unix()
	for i := range w.slots {
		s := &w.slots[i]
		if s.second > sec-int64(len(w.slots)) && s.second <= sec {
			for d, n := range s.used {
				total[d] += n
			}
		}
	}
	return total
}
