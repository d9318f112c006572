package tollgate

import (
	"math"

	"github.com/tollgate-go/tollgate/internal/usage"
)

// This file is what an attempt is estimated to cost before it is sent, and
// what it is charged once its response has said what it used.

// DefaultOutputTokens is the output reserved for a request that sets no
// max_tokens (OpenAI's chat completions may omit it). It is settled to the
// real output when the response ends.
const DefaultOutputTokens = 4096

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

// A ratioEstimate is the learned number of prompt bytes per rate-limited
// input token of one Key: an exponentially weighted mean and variance.
type ratioEstimate struct {
	mean, variance float64
	samples        int
}

func newRatioEstimate() ratioEstimate { return ratioEstimate{mean: defaultBytesPerToken} }

// learn folds in one measurement.
func (e *ratioEstimate) learn(sample float64) {
	sample = min(max(sample, minBytesPerToken), maxBytesPerToken)
	e.samples++
	weight := max(1/float64(e.samples), minLearnWeight)
	diff := sample - e.mean
	e.mean += weight * diff
	// The exponentially weighted variance that goes with the mean above.
	e.variance = (1 - weight) * (e.variance + weight*diff*diff)
}

// divisor returns the bytes per token that estimates divide by: the
// learned mean less estimateMargin learned standard deviations, so that
// nearly every estimate covers what the server will count.
func (e *ratioEstimate) divisor() float64 {
	deviation := math.Sqrt(e.variance)
	if e.samples < minRatioSamples {
		deviation = max(deviation, initialRatioDeviation*e.mean)
	}
	return max(e.mean-estimateMargin*deviation, minBytesPerToken)
}

// estimateLocked fills r's cost from the request and the learned ratio.
func (p *pool) estimateLocked(r *reservation, info *requestInfo) {
	in := math.Ceil(float64(info.PromptBytes)/p.budget.ratio.divisor()) + float64(info.Images)*imageTokens
	out := float64(DefaultOutputTokens)
	if info.MaxTokens > 0 {
		out = float64(info.MaxTokens)
	}
	r.cost = [NumDimensions]float64{Requests: 1, Tokens: in + out, InputTokens: in, OutputTokens: out}
	r.promptBytes, r.images = info.PromptBytes, int64(info.Images)
}

// settleUsageLocked sets r's token charges to the usage its response
// reported, and learns the prompt bytes per token from it.
func (p *pool) settleUsageLocked(r *reservation, status int, u usage.Usage) {
	in, out := r.charged[InputTokens], r.charged[OutputTokens]
	switch {
	case u.Reported:
		out = float64(u.OutputTokens)
	case status >= 400:
		out = 0 // an error response generated nothing
	}
	if u.Reported && u.TotalInputTokens() > 0 {
		counted := u.InputTokens + u.CacheCreationInputTokens
		if dialectOf(p.key.Provider).cacheReads {
			counted += u.CacheReadInputTokens
		}
		in = float64(counted)
		if text := counted - r.images*imageTokens; status < 300 && r.promptBytes > 0 && text > 0 {
			p.budget.ratio.learn(float64(r.promptBytes) / float64(text))
		}
	}
	tokens := r.charged[Tokens] - (r.charged[InputTokens] + r.charged[OutputTokens]) + in + out
	r.charged[InputTokens], r.charged[OutputTokens], r.charged[Tokens] = in, out, max(tokens, 0)
}
