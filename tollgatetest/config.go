package tollgatetest

import (
	"net/http"
	"time"
)

// DefaultOutputTokens is the length, in tokens, of a generated reply when
// neither Config.OutputTokens nor Config.OutputTokensFunc says otherwise
// (and max_tokens allows it).
const DefaultOutputTokens = 64

// DefaultStreamChunkTokens is how many tokens each streamed text delta
// carries when Config.StreamChunkTokens is zero.
const DefaultStreamChunkTokens = 4

// OutputAccounting selects how generated tokens are charged to the output
// (and combined) buckets. The providers' documentation has described both.
type OutputAccounting int

const (
	// ReserveMaxTokens (the default) is the older Anthropic model: at
	// admission the request's max_tokens (for OpenAI requests without a
	// limit, the reply's actual length) must be available and is taken from
	// the output and combined buckets; when the response ends, the unused
	// part (max_tokens minus the tokens actually sent) is given back, never
	// filling a bucket past its capacity. A client that hangs up early gets
	// back everything it was not sent.
	ReserveMaxTokens OutputAccounting = iota

	// CountAsProduced is the newer model: admission only needs the output
	// bucket (and the combined one, after the input tokens) to hold at least
	// one token; nothing is reserved, and each token is taken when it is sent
	// (streamed deltas one by one, a non-streaming reply all at once just
	// before it is written). Buckets can go below zero this way; later
	// requests then wait until the debt is refilled.
	CountAsProduced
)

// Config configures a Server. The zero Config is valid: no limits, no
// authentication, no delays, 64-token replies, real clock.
type Config struct {
	// RequestsPerMinute limits requests; 0 (or negative) means unlimited.
	// Like every limit here it is a token bucket of capacity
	// RequestsPerMinute that starts full and refills continuously at
	// RequestsPerMinute/60 per second. All models and all endpoints share
	// the server's one set of buckets.
	RequestsPerMinute int

	// InputTokensPerMinute limits prompt tokens (as counted by CountTokens
	// over the prompt; see the package documentation); 0 means unlimited.
	InputTokensPerMinute int

	// OutputTokensPerMinute limits generated tokens, charged as
	// OutputAccounting says; 0 means unlimited.
	OutputTokensPerMinute int

	// TokensPerMinute is an OpenAI-style combined limit on input plus output
	// tokens; 0 means unlimited. It applies to every endpoint but
	// count_tokens; output is charged as OutputAccounting says.
	TokensPerMinute int

	// OutputAccounting selects how output tokens are charged; the zero value
	// is ReserveMaxTokens.
	OutputAccounting OutputAccounting

	// OutputTokens is the length of every generated reply, in tokens, before
	// max_tokens caps it; 0 or negative means DefaultOutputTokens. Ignored
	// when OutputTokensFunc is set.
	OutputTokens int

	// OutputTokensFunc, if set, returns the length of the reply to a request
	// for model with the given max_tokens (0 when an OpenAI request sets no
	// limit). A negative result means 0; a result above maxTokens is capped
	// to it. It may be called concurrently.
	OutputTokensFunc func(model string, maxTokens int) int

	// ExactRemaining makes the anthropic-ratelimit-*-tokens-remaining headers
	// carry the exact whole number of tokens left. By default they are
	// rounded down to a multiple of 1,000 (the requests header, and OpenAI's
	// headers, are always exact).
	ExactRemaining bool

	// APIKey, if set, is required: Anthropic requests must send it in
	// x-api-key or as "Authorization: Bearer <APIKey>" (the Go SDK v2 sends
	// the latter), OpenAI requests as "Authorization: Bearer <APIKey>";
	// others get 401 (authentication_error / invalid_api_key). Unauthorised
	// requests do not touch the buckets.
	APIKey string

	// Now is the clock for the limiter, reset headers, ids' timestamps and
	// the Stats timeline; nil means time.Now. Delays (Latency and friends)
	// always use real timers: an injected clock does not speed them up.
	Now func() time.Time

	// Latency is waited, after admission and before the response headers,
	// by every admitted request (not by errors and 429s).
	Latency time.Duration

	// StreamEventDelay is waited between consecutive events of a stream.
	StreamEventDelay time.Duration

	// TimePerOutputToken is waited per generated token: for a stream before
	// each text delta (times the tokens it carries), for a non-streaming
	// reply once, before the headers, for the whole reply.
	TimePerOutputToken time.Duration

	// StreamChunkTokens is how many tokens each streamed text delta carries
	// (the last one may carry fewer); 0 or negative means
	// DefaultStreamChunkTokens.
	StreamChunkTokens int

	// FaultFunc, if set, is asked for a fault for every request that finds
	// the Inject queue empty. r is the request with its body already read
	// and replaced by an equivalent reader (FaultFunc may read it); n is the
	// request's 1-based arrival number since the server was created
	// (ResetStats does not restart it). A nil result means no fault. It may
	// be called concurrently.
	FaultFunc func(r *http.Request, n int) *Fault
}

func (c *Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// replyLength is the number of tokens to generate and whether max_tokens
// capped it (reply length == maxTokens > 0).
func (c *Config) replyLength(model string, maxTokens int) (n int, capped bool) {
	want := c.OutputTokens
	if want <= 0 {
		want = DefaultOutputTokens
	}
	if c.OutputTokensFunc != nil {
		want = max(0, c.OutputTokensFunc(model, maxTokens))
	}
	if maxTokens > 0 && want >= maxTokens {
		return maxTokens, true
	}
	return want, false
}

func (c *Config) chunkTokens() int {
	if c.StreamChunkTokens > 0 {
		return c.StreamChunkTokens
	}
	return DefaultStreamChunkTokens
}
