package tollgate

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Dimension is one kind of rate limit a provider reports.
type Dimension int

// The dimensions. Anthropic reports all four; OpenAI reports Requests and
// Tokens (input and output combined).
const (
	Requests     Dimension = iota // requests per minute
	Tokens                        // tokens per minute; Anthropic: the most restrictive token limit in effect
	InputTokens                   // input tokens per minute
	OutputTokens                  // output tokens per minute
)

// NumDimensions is the number of dimensions: arrays indexed by Dimension
// (in Store's types, in snapshots) have this length.
const NumDimensions = 4

var dimensionNames = [NumDimensions]string{"requests", "tokens", "input-tokens", "output-tokens"}

// String returns the dimension's name as the headers spell it, e.g.
// "input-tokens".
func (d Dimension) String() string {
	if d < 0 || d >= NumDimensions {
		return "dimension(" + strconv.Itoa(int(d)) + ")"
	}
	return dimensionNames[d]
}

// Reading is what one response said about one dimension. A field the
// response did not carry, or carried malformed, is unknown: its Has flag is
// false (Reset: zero).
type Reading struct {
	Limit        int64
	HasLimit     bool
	Remaining    int64
	HasRemaining bool
	// Reset is when the bucket will be full again (Anthropic), or when the
	// window resets (OpenAI); relative resets are turned into absolute times
	// against the clock at the moment the response was observed.
	Reset time.Time
}

// Known reports whether the response said anything about this dimension.
func (r Reading) Known() bool { return r.HasLimit || r.HasRemaining || !r.Reset.IsZero() }

// merge overlays the known fields of newer onto r.
func (r Reading) merge(newer Reading) Reading {
	if newer.HasLimit {
		r.Limit, r.HasLimit = newer.Limit, true
	}
	if newer.HasRemaining {
		r.Remaining, r.HasRemaining = newer.Remaining, true
	}
	if !newer.Reset.IsZero() {
		r.Reset = newer.Reset
	}
	return r
}

// ShouldRetry is the server's x-should-retry advice.
type ShouldRetry int8

// The values of x-should-retry.
const (
	ShouldRetryUnset ShouldRetry = iota // header absent or malformed: judge by status
	ShouldRetryTrue                     // "true": retry whatever the status
	ShouldRetryFalse                    // "false": do not retry whatever the status
)

// RateLimitHeaders is everything one response said about rate limits, in
// either provider's dialect.
type RateLimitHeaders struct {
	// Provider is the dialect the limit headers were in; empty when the
	// response carried none.
	Provider Provider
	// Observed is when the response was read; relative values are measured
	// from it.
	Observed time.Time
	// Limits holds one Reading per Dimension.
	Limits [NumDimensions]Reading
	// RetryAfter is the server's requested wait: retry-after-ms when present
	// and valid, else retry-after (seconds, fractional seconds or HTTP date).
	// An HTTP date in the past gives a zero wait.
	RetryAfter    time.Duration
	HasRetryAfter bool
	ShouldRetry   ShouldRetry
	// RequestID is the request-id (Anthropic) or x-request-id (OpenAI).
	RequestID string
	// Date is the response's Date header: the server's clock, to the
	// second, when it wrote the response; zero when absent or malformed.
	// Set beside a reset given as a time (also the server's clock), it
	// tells when the server read its levels, whatever the two machines'
	// clocks say.
	Date time.Time
	// resetAt is, per Dimension, whether the reset was given as a time
	// (RFC 3339), on the server's clock, rather than as a wait, which is
	// taken from Observed, on tollgate's.
	resetAt [NumDimensions]bool
}

// Reading returns the reading for d, or a zero Reading for an unknown d.
func (h RateLimitHeaders) Reading(d Dimension) Reading {
	if d < 0 || d >= NumDimensions {
		return Reading{}
	}
	return h.Limits[d]
}

// maxServerWait bounds durations parsed from headers so that arithmetic on
// them cannot overflow; anything this long is "longer than any cap".
const maxServerWait = 365 * 24 * time.Hour

// parseHeaders reads the rate-limit headers of a response observed at now.
// It never fails: a malformed or absent value leaves its field unknown.
// Resets are accepted as RFC 3339 times, Go durations ("6m0s", "20ms") or
// plain seconds, in either dialect.
func parseHeaders(h http.Header, now time.Time) RateLimitHeaders {
	out := RateLimitHeaders{Observed: now}
	for _, dl := range dialects {
		for d, names := range dl.headers {
			if names.limit == "" {
				continue
			}
			r := out.Limits[d]
			if v, ok := parseCount(first(h, names.limit)); ok {
				r.Limit, r.HasLimit = v, true
			}
			if v, ok := parseCount(first(h, names.remaining)); ok {
				r.Remaining, r.HasRemaining = v, true
			}
			if t, at, ok := parseReset(first(h, names.reset), now); ok {
				r.Reset, out.resetAt[d] = t, at
			}
			if r != out.Limits[d] {
				out.Limits[d] = r
				out.Provider = dl.provider
			}
		}
	}
	if d, ok := parseRetryAfterMS(first(h, "Retry-After-Ms")); ok {
		out.RetryAfter, out.HasRetryAfter = d, true
	} else if d, ok := parseRetryAfter(first(h, "Retry-After"), now); ok {
		out.RetryAfter, out.HasRetryAfter = d, true
	}
	switch strings.ToLower(strings.TrimSpace(first(h, "X-Should-Retry"))) {
	case "true":
		out.ShouldRetry = ShouldRetryTrue
	case "false":
		out.ShouldRetry = ShouldRetryFalse
	}
	out.RequestID = first(h, "Request-Id")
	if out.RequestID == "" {
		out.RequestID = first(h, "X-Request-Id")
	}
	if t, err := http.ParseTime(first(h, "Date")); err == nil {
		out.Date = t
	}
	return out
}

// first returns the first value of a canonical key, without allocating.
func first(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// parseCount accepts a non-negative integer (or a float with no fraction,
// which some proxies send).
func parseCount(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, v >= 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f != math.Trunc(f) || f > math.MaxInt64/2 {
		return 0, false
	}
	return int64(f), true
}

// parseReset accepts an RFC 3339 time (at: given as a time), a Go
// duration or plain seconds (a wait from now).
func parseReset(s string, now time.Time) (t time.Time, at, ok bool) {
	if s == "" {
		return time.Time{}, false, false
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, true, true
	}
	if d, ok := parseSeconds(s); ok {
		return now.Add(d), false, true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(min(d, maxServerWait)), false, true
	}
	return time.Time{}, false, false
}

// parseRetryAfter accepts seconds (integer or fractional) or an HTTP date.
func parseRetryAfter(s string, now time.Time) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	if d, ok := parseSeconds(s); ok {
		return d, true
	}
	if t, err := http.ParseTime(s); err == nil {
		return min(max(t.Sub(now), 0), maxServerWait), true
	}
	return 0, false
}

// parseRetryAfterMS accepts milliseconds, integer or fractional.
func parseRetryAfterMS(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 {
		return 0, false
	}
	return clampSeconds(f / 1000), true
}

func parseSeconds(s string) (time.Duration, bool) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 {
		return 0, false
	}
	return clampSeconds(f), true
}

func clampSeconds(f float64) time.Duration {
	if f >= maxServerWait.Seconds() {
		return maxServerWait
	}
	return time.Duration(f * float64(time.Second))
}
