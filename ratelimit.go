package tollgate

import (
	"bytes"
	"io"
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
	numDimensions
)

var dimensionNames = [numDimensions]string{"requests", "tokens", "input-tokens", "output-tokens"}

func (d Dimension) String() string {
	if d < 0 || d >= numDimensions {
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
	Limits [numDimensions]Reading
	// RetryAfter is the server's requested wait: retry-after-ms when present
	// and valid, else retry-after (seconds, fractional seconds or HTTP date).
	// An HTTP date in the past gives a zero wait.
	RetryAfter    time.Duration
	HasRetryAfter bool
	ShouldRetry   ShouldRetry
	// RequestID is the request-id (Anthropic) or x-request-id (OpenAI).
	RequestID string
}

// Reading returns the reading for d, or a zero Reading for an unknown d.
func (h RateLimitHeaders) Reading(d Dimension) Reading {
	if d < 0 || d >= numDimensions {
		return Reading{}
	}
	return h.Limits[d]
}

// limitHeader names the three headers of one dimension in one dialect.
type limitHeader struct {
	provider                  Provider
	dim                       Dimension
	limit, remaining, resetAt string // canonical header keys
}

// limitHeaders is the table of dialects: a new dialect is new rows here.
var limitHeaders = func() []limitHeader {
	var rows []limitHeader
	add := func(p Provider, d Dimension, name func(field string) string) {
		rows = append(rows, limitHeader{p, d,
			http.CanonicalHeaderKey(name("limit")),
			http.CanonicalHeaderKey(name("remaining")),
			http.CanonicalHeaderKey(name("reset"))})
	}
	for _, d := range []Dimension{Requests, Tokens, InputTokens, OutputTokens} {
		add(ProviderAnthropic, d, func(f string) string { return "anthropic-ratelimit-" + d.String() + "-" + f })
	}
	for _, d := range []Dimension{Requests, Tokens} {
		add(ProviderOpenAI, d, func(f string) string { return "x-ratelimit-" + f + "-" + d.String() })
	}
	return rows
}()

// maxServerWait bounds durations parsed from headers so that arithmetic on
// them cannot overflow; anything this long is "longer than any cap".
const maxServerWait = 365 * 24 * time.Hour

// ParseRateLimitHeaders reads the rate-limit headers of a response observed
// at now. It never fails: a malformed or absent value leaves its field
// unknown. Resets are accepted as RFC 3339 times, Go durations ("6m0s",
// "20ms") or plain seconds, in either dialect.
func ParseRateLimitHeaders(h http.Header, now time.Time) RateLimitHeaders {
	out := RateLimitHeaders{Observed: now}
	for _, row := range limitHeaders {
		r := out.Limits[row.dim]
		if v, ok := parseCount(first(h, row.limit)); ok {
			r.Limit, r.HasLimit = v, true
		}
		if v, ok := parseCount(first(h, row.remaining)); ok {
			r.Remaining, r.HasRemaining = v, true
		}
		if t, ok := parseReset(first(h, row.resetAt), now); ok {
			r.Reset = t
		}
		if r != out.Limits[row.dim] {
			out.Limits[row.dim] = r
			out.Provider = row.provider
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

// parseReset accepts an RFC 3339 time, a Go duration or plain seconds.
func parseReset(s string, now time.Time) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, true
	}
	if d, ok := parseSeconds(s); ok {
		return now.Add(d), true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(min(d, maxServerWait)), true
	}
	return time.Time{}, false
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
	f, err := strconv.ParseFloat(s, 64)
	if s == "" || err != nil || math.IsNaN(f) || f < 0 {
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

// Observe returns the layer that reads what the server says: it parses each
// response's rate-limit headers into s, reads the error document of a non-2xx
// response, and wraps the body so that token usage is parsed as the caller
// reads it. It is the only layer that wraps a response body; the others act
// on what it records. A nil s gets a State of its own with default options.
func Observe(s *State) Middleware {
	s = orNewState(s)
	return func(next http.RoundTripper) http.RoundTripper {
		return &observer{state: s, next: orDefault(next)}
	}
}

type observer struct {
	state *State
	next  http.RoundTripper
}

// maxErrorBody bounds how much of an error response is read ahead of the
// caller to learn its error type; provider error documents are far smaller.
const maxErrorBody = 64 << 10

func (o *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	req, c := o.state.callFor(req)
	req, ex := o.state.exchangeFor(req, c)
	ex.markSent(o.state.cfg.clock.Now())

	resp, err := o.next.RoundTrip(req)
	if err != nil {
		o.state.recordTransportError(c.key)
		ex.finish(Usage{}, err)
		return nil, err
	}
	h := ParseRateLimitHeaders(resp.Header, o.state.cfg.clock.Now())
	var apiErr *APIError
	var head []byte
	if resp.StatusCode >= 300 && resp.Body != nil {
		head, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if e, ok := parseAPIError(head); ok {
			apiErr = &e
		}
		resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	}
	ex.mu.Lock()
	ex.status, ex.headers, ex.apiErr, ex.errorBody = resp.StatusCode, h, apiErr, head
	ex.mu.Unlock()
	o.state.observe(c.key, resp.StatusCode, h)

	if resp.Body == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		ex.finish(Usage{}, nil)
		return resp, nil
	}
	body := &firstChunk{ReadCloser: resp.Body, ex: ex, clock: o.state.cfg.clock}
	resp.Body = newUsageReader(body, c.info.Provider, resp.Header.Get("Content-Type"), ex.finish)
	return resp, nil
}

// firstChunk notes when the first bytes of a body reach the caller: for a
// stream, the time to first chunk.
type firstChunk struct {
	io.ReadCloser
	ex    *exchange
	clock Clock
	seen  bool // Reads are not concurrent with each other
}

func (f *firstChunk) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if n > 0 && !f.seen {
		f.seen = true
		f.ex.mu.Lock()
		f.ex.firstChunkAt = f.clock.Now()
		f.ex.mu.Unlock()
	}
	return n, err
}

type readCloser struct {
	io.Reader
	io.Closer
}
