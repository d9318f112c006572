package tollgate

import (
	"cmp"
	"math"
	"time"

	"github.com/tollgate-go/tollgate/internal/usage"
)

// This file is what an attempt is estimated to cost before it is sent, and
// what it is charged once its response has said what it used.

// DefaultOutputTokens is the output reserved for a request that sets no
// max_tokens (OpenAI's chat completions may omit it), where max_tokens is
// reserved. It is settled to the real output when the response ends.
const DefaultOutputTokens = 4096

// OutputAccounting is how a provider counts an attempt's output against its
// output (or combined) limit.
type OutputAccounting int

// The ways output is counted.
const (
	// DetectOutputAccounting starts from the provider's documented rule
	// (Anthropic: CountAsProduced; OpenAI and others: ReserveMaxTokens) and
	// follows what the server shows: where a response's output-tokens
	// remaining, read at the start of the response, proves the other rule
	// (max_tokens already taken, or not), tollgate switches to it. Until a
	// response has confirmed CountAsProduced, attempts are charged their
	// max_tokens.
	DetectOutputAccounting OutputAccounting = iota
	// ReserveMaxTokens: max_tokens is taken at admission and what was not
	// used is given back when the response ends (Anthropic's older docs;
	// OpenAI counts max_tokens when the request is made; Bedrock-style
	// gateways).
	ReserveMaxTokens
	// CountAsProduced: output is counted as it is produced and max_tokens
	// does not factor in (Anthropic today). An attempt reserves what its
	// pool's calls are learned to produce, with a margin, never more than
	// its max_tokens.
	CountAsProduced
)

func (a OutputAccounting) String() string {
	switch a {
	case ReserveMaxTokens:
		return "reserve_max_tokens"
	case CountAsProduced:
		return "count_as_produced"
	}
	return "detect"
}

// WithOutputAccounting states how the server counts output, instead of
// letting tollgate start from the provider's documented rule and follow
// what the server shows (DetectOutputAccounting, the default). Other values
// keep the default.
func WithOutputAccounting(a OutputAccounting) Option {
	return func(c *config) {
		if a == ReserveMaxTokens || a == CountAsProduced {
			c.budget.output = a
		}
	}
}

// producedPrior is what an attempt counted as produced reserves before its
// pool has learned what its calls produce: a full reply's worth of a chat
// turn, or its max_tokens when that is less.
const producedPrior = 1024

// Estimating input tokens.
const (
	// defaultBytesPerToken is the starting guess for how many bytes of
	// prompt text make one token: English prose and code average about 4
	// bytes per token with the BPE tokenizers both providers use (other
	// languages need fewer, so this errs low).
	defaultBytesPerToken = 4.0
	// imageTokens is the estimate for one image or document block:
	// Anthropic bills an image at about width·height/750 tokens and scales
	// images down to about 1.15 megapixels, so a large image costs about
	// 1,600 tokens; OpenAI's high-detail images land in the same range. The
	// pixel size is not decoded, so every image counts at that ceiling.
	imageTokens = 1600
	// The learned prompt bytes per rate-limited input token stay in this
	// range, so that one odd response (or heavy prompt caching, which lowers
	// the tokens counted without lowering the bytes sent) cannot make the
	// estimate absurd.
	minBytesPerToken = 1.0
	maxBytesPerToken = 16.0
	// maxStreamBytesPerToken bounds what a stream's output events are
	// learned to take per token: more than any event framing of a token
	// (an OpenAI chunk of one token takes about 250 bytes), so that a
	// server whose deltas carry little cannot make a stream's output
	// counted low; the bound only ever counts more.
	maxStreamBytesPerToken = 256.0
	// minLearnWeight is the weight of a new sample once a few are known; the
	// first samples are averaged with equal weight, so the default guess is
	// replaced by the first real measurement.
	minLearnWeight = 0.25
	// producedLearnWeight is minLearnWeight for what a pool's calls produce:
	// replies vary far more from call to call than a tokenizer's ratio, and
	// a mean over a few of them is far off. Weighing the last score or so
	// keeps the margin that covers that error (tokenEstimate.sumDeviation)
	// small; a change in what calls produce still widens the margin at once,
	// through the deviation.
	producedLearnWeight = 0.1
	// paceMargin is how many times as fast as the fastest reply of its pool
	// (budgetState.perToken) an attempt in flight is taken to be able to
	// produce its output: replies from one model come at about one pace,
	// and a JSON reply timed from its send to its headers shows less than
	// its pace, its time to the first token included.
	paceMargin = 1.5
	// estimateMargin is how many learned standard deviations of the ratio
	// an estimate stays on the safe side of its mean. An attempt is admitted
	// the moment the level covers its estimate, so an estimate even a token
	// short of what the server counts draws a 429; over-estimating costs
	// nothing lasting, since settling gives the difference back.
	estimateMargin = 3.0
	// Until minRatioSamples measurements are in, the ratio's deviation is
	// taken to be at least initialRatioDeviation of its mean, and the
	// output of a pool's calls' at least initialProducedDeviation of its
	// mean: replies to calls alike still vary by about half their length
	// (the first reply of a pool says little of the next ones).
	minRatioSamples          = 3
	initialRatioDeviation    = 0.1
	initialProducedDeviation = 0.5
)

// A tokenEstimate is a learned mean and variance of a measure per call
// (the output tokens a pool's calls produce, the bytes per token of their
// streams), exponentially weighted.
type tokenEstimate struct {
	mean, variance float64
	samples        int
	// squaredWeights is the sum of the squared weights the samples have in
	// the mean: the mean's variance is the measure's times it.
	squaredWeights float64
	// least is the least weight of a new sample (the first 1/least are
	// averaged with equal weight); initial is the least deviation, as a
	// share of the mean, until minRatioSamples are in.
	least, initial float64
}

// newProducedEstimate is the estimate of the output a pool's calls produce.
func newProducedEstimate() tokenEstimate {
	return tokenEstimate{least: producedLearnWeight, initial: initialProducedDeviation}
}

// learn folds in one measurement.
func (e *tokenEstimate) learn(sample float64) {
	e.samples++
	weight := max(1/float64(e.samples), e.least)
	diff := sample - e.mean
	e.mean += weight * diff
	// The exponentially weighted variance that goes with the mean above.
	e.variance = (1 - weight) * (e.variance + weight*diff*diff)
	e.squaredWeights = (1-weight)*(1-weight)*e.squaredWeights + weight*weight
}

// deviation is the learned standard deviation, at least e.initial of the
// mean until minRatioSamples are in. ok is false before any sample.
func (e *tokenEstimate) deviation() (float64, bool) {
	deviation := math.Sqrt(e.variance)
	if e.samples < minRatioSamples {
		deviation = max(deviation, e.initial*e.mean)
	}
	return deviation, e.samples > 0
}

// sumDeviation is the standard deviation of what n new measures come to
// beyond n times the mean. Each varies by the measure's deviation, and the
// mean itself is off by the deviation of a weighted average of the samples,
// the same way for all n: σ·√(n + n²·Σw²). σ is the learned variance
// corrected for being taken around the samples' own mean (divided by
// 1 − Σw², as n−1 replaces n for equal weights), and at least deviation's.
// ok is false before any sample.
func (e *tokenEstimate) sumDeviation(n float64) (float64, bool) {
	deviation, ok := e.deviation()
	if e.squaredWeights < 1 {
		deviation = max(deviation, math.Sqrt(e.variance/(1-e.squaredWeights)))
	}
	return deviation * math.Sqrt(n+n*n*e.squaredWeights), ok
}

// low is the mean less estimateMargin deviations, and at least floor: a
// ratio that a measure is divided by errs on the side of more tokens. ok is
// false before any sample.
func (e *tokenEstimate) low(floor float64) (float64, bool) {
	deviation, ok := e.deviation()
	return max(e.mean-estimateMargin*deviation, floor), ok
}

// A ratioEstimate is the learned number of prompt bytes per rate-limited
// input token of one Key, starting from defaultBytesPerToken.
type ratioEstimate struct{ tokenEstimate }

func newRatioEstimate() ratioEstimate {
	return ratioEstimate{tokenEstimate{mean: defaultBytesPerToken, least: minLearnWeight, initial: initialRatioDeviation}}
}

// learn folds in one measurement, kept in range.
func (e *ratioEstimate) learn(sample float64) {
	e.tokenEstimate.learn(min(max(sample, minBytesPerToken), maxBytesPerToken))
}

// divisor returns the bytes per token that estimates divide by: the
// learned mean less estimateMargin learned standard deviations, so that
// nearly every estimate covers what the server will count.
func (e *ratioEstimate) divisor() float64 {
	d, _ := e.low(minBytesPerToken)
	return d
}

// estimateLocked fills r's cost and need at now from the request, the
// learned ratio, the prompt cache and the output rule in force. The need
// holds until the returned time (zero: for good), when another attempt in
// flight may have been counted more output than it is charged.
func (p *pool) estimateLocked(r *reservation, info *requestInfo, now time.Time) (until time.Time) {
	r.promptBytes, r.images, r.maxTokens, r.model = info.PromptBytes, int64(info.Images), info.MaxTokens, info.Model
	if p.own {
		r.cost = [NumDimensions]float64{Requests: 1} // count_tokens: a request, no tokens
		return time.Time{}
	}
	b := &p.budget
	dl := dialectOf(p.key.Provider)
	if !dl.countsCacheReads(info.Model) && len(info.Blocks) > 0 {
		r.blocks = info.Blocks
		r.cachedBytes = b.cache.predict(now, info.Blocks)
		r.writes = writes(info.Blocks, r.cachedBytes, b.ratio.mean, dl.minCached(info.Model))
	}
	in := math.Ceil(float64(info.PromptBytes-r.cachedBytes)/b.ratio.divisor()) + float64(info.Images)*imageTokens
	r.cachedTokens = int64(math.Round(float64(r.cachedBytes) / b.ratio.mean))
	maxOut := float64(DefaultOutputTokens)
	if info.MaxTokens > 0 {
		maxOut = float64(info.MaxTokens)
	}
	out, need := maxOut, 0.0
	r.output = p.chargedRuleLocked()
	if r.output == CountAsProduced {
		out, need, until = p.producedEstimateLocked(now)
		out = min(maxOut, out)
	}
	r.cost = [NumDimensions]float64{Requests: 1, Tokens: in + out, InputTokens: in, OutputTokens: out}
	// Each token bucket must hold more than the cost (cushion): it is held
	// back, not charged. Output counted as produced is admitted on a margin
	// of its own (need), which replaces the output bucket's cushion.
	for _, d := range []Dimension{InputTokens, OutputTokens, Tokens} {
		r.need[d] = r.cost[d] + b.cushion(d, in)
	}
	if need > 0 {
		r.need[OutputTokens], r.need[Tokens] = need, r.need[Tokens]-out+need
	}
	return until
}

// cacheHoldLocked reports whether r, at the head of the queue, waits for
// an attempt in flight that is writing a prefix of r's prompt to the cache,
// rather than being sent now and written it too: the server makes an entry
// usable only once the response that writes it has begun, so that calls
// sent together all pay for the prefix ("if you need cache hits for
// parallel requests, wait for the first response", Anthropic's docs). r
// waits until that attempt's usage is in (its end wakes the head, and the
// prefix is then predicted cached), at most as long as the input bucket
// takes to refill the tokens the wait saves: beyond that, the wait costs
// more than it spares. When it waits, r's waiter says until when.
func (p *pool) cacheHoldLocked(r *reservation, now time.Time) bool {
	b, w, info := &p.budget, &r.waiter, r.info
	rate := float64(cmp.Or(b.limits[InputTokens], b.limits[Tokens])) / 60 // a second
	w.held = false
	if info == nil || len(info.Blocks) == 0 || rate <= 0 || len(b.cache.writing) == 0 ||
		dialectOf(p.key.Provider).countsCacheReads(info.Model) {
		return false
	}
	cached := b.cache.predict(now, info.Blocks)
	soon := readable(info.Blocks, func(prefix uint64) bool {
		return b.cache.writing[prefix] > 0 || b.cache.valid(now, prefix)
	})
	if soon <= cached {
		return false
	}
	if w.heldFrom.IsZero() {
		w.heldFrom = now
	}
	saved := float64(soon-cached) / b.ratio.mean
	until := w.heldFrom.Add(time.Duration(saved / rate * float64(time.Second)))
	if !now.Before(until) || w.endsBefore(now, until) {
		return false // or it would give up waiting for what it can have now
	}
	w.held, w.retryAt, w.timed = true, until, true
	return true
}

// cushion is what the token bucket of dimension d must hold besides the
// cost of an attempt of in input tokens.
//
// The buckets that count input hold a twentieth of in, and a second's
// refill while other attempts are in flight: input estimates may fall
// short, the attempt's own and those in flight together, until they settle,
// and the server reads its level at its own moment. Measured on a busy
// machine, a level that tracked the server's to the token drew 429s short
// by up to 2 % of a call's input when alone, and more with others in
// flight; a twentieth of what was in flight was not enough.
//
// The buckets that count output hold a quarter second's refill: the server
// counts an attempt a moment after tollgate does, and where its bucket was
// full in that moment, the refill of it was lost to the server and not to
// tollgate, whose level then leads the server's. Measured the same way,
// told the limits, calls reserving max_tokens drew 429s short by 1 to 4
// tokens of 8,000 a minute (up to 30 ms).
func (b *budgetState) cushion(d Dimension, in float64) float64 {
	limit, cushion := float64(b.limits[d]), 0.0
	if d == InputTokens || d == Tokens {
		cushion = in / 20
		if len(b.inFlight) > 0 {
			cushion += limit / 60
		}
	}
	if d == OutputTokens || d == Tokens {
		cushion += limit / 240
	}
	return cushion
}

// chargedRuleLocked is the output rule an attempt is charged by: the rule in
// force, except that a provider's documented CountAsProduced, which its
// headers can confirm, is not trusted before they have: until then the
// attempt is charged its max_tokens. That is the safe way to be wrong (a
// server that still reserves max_tokens draws no 429; one that counts as
// produced costs one response's wait), and it matters where the limits are
// told (WithLimits): the calls then go before any response, together, and no
// attempt is alone in flight to show the reserving rule by its reading.
func (p *pool) chargedRuleLocked() OutputAccounting {
	b := &p.budget
	if b.output == CountAsProduced && b.outputSource == "provider" && dialectOf(p.key.Provider).detectOutput {
		return ReserveMaxTokens
	}
	return b.output
}

// producedEstimateLocked returns what an attempt whose output is counted as
// produced costs, what the output bucket must hold at now to admit it, and
// until when that need holds (zero: for good). The server admits a request
// while one output token is left and counts output as it comes, so the
// attempt is charged what its pool's calls produce on average, and admitted
// as the server would, with a margin: what can draw a 429 is not its own
// output but the n attempts in flight that may have been counted more than
// they were charged by now (exceeding), together. Their excesses add
// up as independent draws do, so the margin grows with the square root of
// n, but all of them were charged the same learned mean, and what that is
// off by adds up n times: the margin is estimateMargin deviations of the
// sum (tokenEstimate.sumDeviation). To that comes a second's refill: the
// server reads its level at its own moment, on its own clock, in whole
// tokens, and counts a stream's output a moment before the stream shows
// it. Before anything was learned, the prior is charged and needed in full
// (need 0: the cost).
func (p *pool) producedEstimateLocked(now time.Time) (cost, need float64, until time.Time) {
	b := &p.budget
	n, until := b.exceeding(now)
	spread, ok := b.produced.sumDeviation(float64(n))
	if !ok {
		return producedPrior, 0, time.Time{}
	}
	margin := estimateMargin*spread + float64(b.limits[OutputTokens])/60
	return math.Ceil(max(b.produced.mean, 1)), 1 + math.Ceil(margin), until
}

// exceeding counts the attempts in flight that the server may have counted
// more output than they are charged by now, and returns when another one
// may have (zero: none will). Only an attempt charged less than its
// max_tokens for output counted as produced can (a watched stream,
// reservation.produced, is charged its excess as it shows it). And the
// server counts output as it is produced, so an attempt cannot have
// exceeded its charge before it could have produced it: its charge at
// paceMargin times the fastest pace a reply of the pool came at
// (budgetState.perToken) after it was sent. Until a reply is timed, every
// one may have.
func (b *budgetState) exceeding(now time.Time) (n int, next time.Time) {
	for _, r := range b.inFlight {
		out := r.charged[OutputTokens]
		if r.output != CountAsProduced || r.watched || (r.maxTokens > 0 && out >= float64(r.maxTokens)) {
			continue
		}
		at := r.sentAt.Add(time.Duration(out * float64(b.perToken) / paceMargin))
		switch {
		case !b.timed || !now.Before(at):
			n++
		case next.IsZero() || at.Before(next):
			next = at
		}
	}
	return n, next
}

// settleUsageLocked sets r's token charges to the usage its response
// reported, and learns from it: the prompt bytes per token (of the part of
// the prompt the server did not read from its cache), what the pool's calls
// produce and how fast a JSON reply came, and what the prompt cache holds.
func (p *pool) settleUsageLocked(r *reservation, status int, u usage.Usage) {
	model := r.model
	b := &p.budget
	in, out := r.charged[InputTokens], r.charged[OutputTokens]
	switch {
	case u.Reported:
		out = float64(u.OutputTokens)
	case status >= 400:
		out = 0 // an error response generated nothing
	}
	if u.Reported && u.TotalInputTokens() > 0 {
		counted := u.InputTokens + u.CacheCreationInputTokens
		if dialectOf(p.key.Provider).countsCacheReads(model) {
			counted += u.CacheReadInputTokens
		}
		in = float64(counted)
		uncached := r.promptBytes
		if r.blocks != nil && status < 300 {
			// Where the read ended is found at this prompt's own bytes per
			// token, not the learned ratio: a ratio that is off would put
			// the end at the wrong block, and the sample learned from the
			// rest would put the ratio further off.
			perToken := defaultBytesPerToken
			if text := u.TotalInputTokens() - r.images*imageTokens; text > 0 {
				perToken = float64(r.promptBytes) / float64(text)
			}
			// An entry lives from the start of the request that wrote or
			// read it, not from the end of the reply (Anthropic's docs).
			read := b.cache.learn(cmp.Or(r.sentAt, p.state.cfg.clock.Now()), r.blocks, u.CacheReadInputTokens, u.CacheCreationInputTokens,
				perToken, dialectOf(p.key.Provider).minCached(model))
			uncached -= read
		}
		text := u.InputTokens + u.CacheCreationInputTokens - r.images*imageTokens
		if r.blocks == nil {
			text = counted - r.images*imageTokens
		}
		if status < 300 && uncached > 0 && text > 0 {
			b.ratio.learn(float64(uncached) / float64(text))
		}
	}
	if u.Reported && status < 300 && u.Complete {
		b.produced.learn(float64(u.OutputTokens))
		if !r.producedBy.IsZero() && u.OutputTokens > 0 {
			perToken := max(r.producedBy.Sub(r.sentAt), 0) / time.Duration(u.OutputTokens)
			if !b.timed || perToken < b.perToken {
				b.perToken, b.timed = perToken, true
			}
		}
		if u.OutputBytes > 0 && u.OutputTokens > 0 {
			b.streamed.learn(min(float64(u.OutputBytes)/float64(u.OutputTokens), maxStreamBytesPerToken))
		}
	}
	r.counted = [2]int64{int64(in), int64(out)}
	tokens := r.charged[Tokens] - (r.charged[InputTokens] + r.charged[OutputTokens]) + in + out
	r.charged[InputTokens], r.charged[OutputTokens], r.charged[Tokens] = in, out, max(tokens, 0)
}
