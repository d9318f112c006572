package tollgatetest

import (
	"net/http"
	"strconv"
	"strings"
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
	// part (max_tokens minus the tokens actually generated) is given back,
	// never filling a bucket past its capacity. A client that hangs up early
	// gets back everything that was not generated.
	ReserveMaxTokens OutputAccounting = iota

	// CountAsProduced is today's Anthropic model ("output tokens are counted
	// as they are produced; max_tokens does not factor in"): admission only
	// needs the output bucket (and the combined one, after the input tokens)
	// to hold at least one token, whatever max_tokens says (even more than
	// the limit); nothing is reserved, and each token is taken when it is
	// generated, streamed or not (TimePerOutputToken), so a non-streaming
	// reply drains the bucket while it is generated, before it is sent.
	// Buckets can go below zero this way; later requests then wait until
	// the debt is refilled. It applies to the
	// Anthropic Messages route only: chat completions always reserve, as
	// OpenAI counts max_tokens when the request is made.
	CountAsProduced
)

// RemainingRounding selects how the anthropic-ratelimit-*-tokens-remaining
// headers (input-tokens, output-tokens and tokens) are rounded. The
// requests-remaining header, and OpenAI's headers, are always exact.
type RemainingRounding int

const (
	// RoundDown (the default) rounds down to a multiple of 1,000: the header
	// never shows more than is left. 1,999 left reads "1000".
	RoundDown RemainingRounding = iota

	// RoundNearest rounds to the nearest multiple of 1,000, halves up, as
	// Anthropic's docs say the headers are today: 1,499 left reads "1000",
	// 1,500 reads "2000" (more than is left).
	RoundNearest

	// Exact sends the whole number of tokens left.
	Exact
)

// OutputTokensHeader is a request header that sets the length of the reply
// to that one request, in tokens (a decimal integer), before max_tokens caps
// it; it wins over Config.OutputTokens and Config.OutputTokensFunc (which is
// then not called). A value that is not a non-negative integer is ignored.
// Benchmarks use it to make the fake API's replies follow a workload.
const OutputTokensHeader = "X-Tollgatetest-Output-Tokens"

// DefaultCacheMaxEntries is the prompt cache's bound when
// Config.CacheMaxEntries is zero.
const DefaultCacheMaxEntries = 50_000

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
	// tokens; 0 means unlimited. It applies to Messages and chat
	// completions (not to count_tokens); input is charged as the input
	// bucket is, output as OutputAccounting says.
	TokensPerMinute int

	// CountTokensPerMinute limits POST /v1/messages/count_tokens requests;
	// 0 (or negative) means unlimited. Like Anthropic's token counting it is
	// a pool of its own: a bucket that count_tokens alone draws on (one per
	// request, no tokens), and count_tokens never draws on the other
	// buckets.
	CountTokensPerMinute int

	// OutputAccounting selects how output tokens are charged by the
	// Messages route; the zero value is ReserveMaxTokens. Chat completions
	// always reserve.
	OutputAccounting OutputAccounting

	// RoundRemaining selects how the anthropic-ratelimit-*-tokens-remaining
	// headers are rounded; the zero value is RoundDown. ExactRemaining, if
	// set, wins and means Exact.
	RoundRemaining RemainingRounding

	// NoPromptCaching turns prompt caching off: cache_control is still
	// validated, but nothing is written to or read from the cache, every
	// prompt token is reported (and charged) as uncached input, and OpenAI's
	// cached_tokens is always 0. Caching is on by default; it changes
	// nothing for requests that carry no cache_control and, on the OpenAI
	// route, nothing but the cached_tokens reported (cached tokens count
	// against OpenAI's limits all the same).
	NoPromptCaching bool

	// CacheMaxEntries bounds the prompt cache (Anthropic prefixes and
	// OpenAI's 128-token checkpoints together); when it is full, the entry
	// least recently written or read is dropped. 0 or negative means
	// DefaultCacheMaxEntries.
	CacheMaxEntries int

	// MinCacheableTokens returns the shortest prefix, in tokens, that a
	// cache_control breakpoint writes to the cache for model; nil means
	// DefaultMinCacheableTokens.
	MinCacheableTokens func(model string) int

	// CacheReadsCountAsInput reports whether cache reads count against the
	// input-tokens limit for model (Anthropic models); nil means
	// DefaultCacheReadsCountAsInput.
	CacheReadsCountAsInput func(model string) bool

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
	// carry the exact whole number of tokens left, as RoundRemaining: Exact
	// does (it is kept for compatibility and wins over RoundRemaining).
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

	// Latency is waited by every admitted request (not by errors and
	// 429s), after admission and before its response begins: before a
	// stream's headers, before a non-streaming reply is generated. What the
	// request wrote to the prompt cache is usable once it has passed.
	Latency time.Duration

	// StreamEventDelay is waited between consecutive events of a stream.
	StreamEventDelay time.Duration

	// TimePerOutputToken is waited per generated token, before the tokens
	// are counted: for a stream before each text delta (times the tokens it
	// carries), for a non-streaming reply chunk by chunk (StreamChunkTokens)
	// before its headers.
	TimePerOutputToken time.Duration

	// StreamChunkTokens is how many tokens each streamed text delta carries
	// (the last one may carry fewer), and how many a non-streaming reply's
	// generation counts at a time; 0 or negative means
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

// rounding is the effective RoundRemaining.
func (c *Config) rounding() RemainingRounding {
	if c.ExactRemaining {
		return Exact
	}
	return c.RoundRemaining
}

// replyLength is the number of tokens to generate and whether max_tokens
// capped it (reply length == maxTokens > 0). header is the request's
// OutputTokensHeader value ("" when absent).
func (c *Config) replyLength(model string, maxTokens int, header string) (n int, capped bool) {
	want := c.OutputTokens
	if want <= 0 {
		want = DefaultOutputTokens
	}
	if v, err := strconv.Atoi(strings.TrimSpace(header)); err == nil && v >= 0 {
		want = v
	} else if c.OutputTokensFunc != nil {
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

func (c *Config) cacheMaxEntries() int {
	if c.CacheMaxEntries > 0 {
		return c.CacheMaxEntries
	}
	return DefaultCacheMaxEntries
}

func (c *Config) minCacheable(model string) int {
	if c.MinCacheableTokens != nil {
		return c.MinCacheableTokens(model)
	}
	return DefaultMinCacheableTokens(model)
}

func (c *Config) readsCount(model string) bool {
	if c.CacheReadsCountAsInput != nil {
		return c.CacheReadsCountAsInput(model)
	}
	return DefaultCacheReadsCountAsInput(model)
}

// minCacheableTable maps model-name substrings to the minimum cacheable
// prefix, first match wins; other models take defaultMinCacheable.
var minCacheableTable = []struct {
	contains string
	tokens   int
}{
	{"haiku", 2048},
}

const defaultMinCacheable = 1024

// DefaultMinCacheableTokens is the minimum cacheable prompt length of
// Anthropic's docs by model name: 2,048 tokens for names containing "haiku",
// 1,024 for every other model (Sonnet, Opus).
func DefaultMinCacheableTokens(model string) int {
	m := strings.ToLower(model)
	for _, row := range minCacheableTable {
		if strings.Contains(m, row.contains) {
			return row.tokens
		}
	}
	return defaultMinCacheable
}

// readsCountTable lists model-name substrings of the models whose cache
// reads count against the input-tokens limit.
var readsCountTable = []string{"haiku-3-5", "3-5-haiku"}

// DefaultCacheReadsCountAsInput reports whether Anthropic counts cache reads
// against the input-tokens limit for model: true for Claude Haiku 3.5 (names
// containing "haiku-3-5" or "3-5-haiku", the exception the docs mark), false
// for every other model ("only uncached input tokens count").
func DefaultCacheReadsCountAsInput(model string) bool {
	m := strings.ToLower(model)
	for _, sub := range readsCountTable {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}
