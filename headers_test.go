package tollgate

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Header parsing is a pure function: these tests read parseHeaders'
// results directly, a table per rule.

var trObservedAt = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func trHeaders(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseHeadersAnthropic(t *testing.T) {
	h := trHeaders(
		"anthropic-ratelimit-requests-limit", "50",
		"anthropic-ratelimit-requests-remaining", "49",
		"anthropic-ratelimit-requests-reset", "2026-11-26T12:00:01Z",
		"anthropic-ratelimit-tokens-limit", "38000",
		"anthropic-ratelimit-tokens-remaining", "37000",
		"anthropic-ratelimit-tokens-reset", "2026-11-26T12:00:02.5Z",
		"anthropic-ratelimit-input-tokens-limit", "30000",
		"anthropic-ratelimit-input-tokens-remaining", "29500",
		"anthropic-ratelimit-input-tokens-reset", "2026-11-26T12:00:01+00:00",
		"anthropic-ratelimit-output-tokens-limit", "8000",
		"anthropic-ratelimit-output-tokens-remaining", "0",
		"anthropic-ratelimit-output-tokens-reset", "2026-11-26T12:01:00Z",
		"retry-after", "7",
		"request-id", "req_011CT",
		"x-should-retry", "false",
	)
	got := parseHeaders(h, trObservedAt)
	assert.Equal(t, ProviderAnthropic, got.Provider)
	assert.Equal(t, trObservedAt, got.Observed)
	assert.Equal(t, Reading{50, true, 49, true, trObservedAt.Add(time.Second)}, got.Reading(Requests))
	assert.Equal(t, Reading{38000, true, 37000, true, trObservedAt.Add(2500 * time.Millisecond)}, got.Reading(Tokens))
	assert.Equal(t, int64(29500), got.Reading(InputTokens).Remaining)
	assert.True(t, got.Reading(InputTokens).Reset.Equal(trObservedAt.Add(time.Second)))
	assert.Equal(t, Reading{8000, true, 0, true, trObservedAt.Add(time.Minute)}, got.Reading(OutputTokens))
	assert.True(t, got.HasRetryAfter)
	assert.Equal(t, 7*time.Second, got.RetryAfter)
	assert.Equal(t, ShouldRetryFalse, got.ShouldRetry)
	assert.Equal(t, "req_011CT", got.RequestID)
}

func TestParseHeadersOpenAI(t *testing.T) {
	h := trHeaders(
		"x-ratelimit-limit-requests", "500",
		"x-ratelimit-remaining-requests", "499",
		"x-ratelimit-reset-requests", "120ms",
		"x-ratelimit-limit-tokens", "30000",
		"x-ratelimit-remaining-tokens", "29000",
		"x-ratelimit-reset-tokens", "6m0s",
		"x-request-id", "abc",
		"x-should-retry", "TRUE",
	)
	got := parseHeaders(h, trObservedAt)
	assert.Equal(t, ProviderOpenAI, got.Provider)
	assert.Equal(t, Reading{500, true, 499, true, trObservedAt.Add(120 * time.Millisecond)}, got.Reading(Requests))
	assert.Equal(t, Reading{30000, true, 29000, true, trObservedAt.Add(6 * time.Minute)}, got.Reading(Tokens))
	assert.False(t, got.Reading(InputTokens).Known())
	assert.False(t, got.Reading(OutputTokens).Known())
	assert.False(t, got.HasRetryAfter)
	assert.Equal(t, ShouldRetryTrue, got.ShouldRetry)
	assert.Equal(t, "abc", got.RequestID)
}

func TestParseHeadersNone(t *testing.T) {
	got := parseHeaders(http.Header{"Content-Type": {"application/json"}}, trObservedAt)
	assert.Equal(t, RateLimitHeaders{Observed: trObservedAt}, got)
	assert.Equal(t, Reading{}, got.Reading(Dimension(-1)))
	assert.Equal(t, Reading{}, got.Reading(NumDimensions))
}

func TestParseHeadersRequestIDPrefersAnthropics(t *testing.T) {
	got := parseHeaders(trHeaders("x-request-id", "openai", "request-id", "anthropic"), trObservedAt)
	assert.Equal(t, "anthropic", got.RequestID)
	assert.Empty(t, got.Provider, "an id alone names no dialect")
}

// Date is the server's clock when it wrote the response, in any of the
// formats HTTP allows; anything else leaves it zero.
func TestParseHeadersDate(t *testing.T) {
	for _, v := range []string{"Thu, 26 Nov 2026 12:00:05 GMT", "Thursday, 26-Nov-26 12:00:05 GMT", "Thu Nov 26 12:00:05 2026"} {
		got := parseHeaders(trHeaders("date", v), trObservedAt)
		assert.True(t, got.Date.Equal(trObservedAt.Add(5*time.Second)), "%q: %v", v, got.Date)
	}
	for _, v := range []string{"", "yesterday", "2026-11-26T12:00:05Z", "Thu, 99 Nov 2026 12:00:05 GMT"} {
		assert.True(t, parseHeaders(trHeaders("date", v), trObservedAt).Date.IsZero(), "%q", v)
	}
}

// A response shows that the server read its levels more than two seconds
// before it wrote the response where its requests reset, given as a time,
// less the refill its remaining lacks (49 of 50: 1.2 s), is that long
// before its Date; a reset given as a wait is on tollgate's clock and
// tells nothing beside the server's Date, nor does a full bucket's.
func TestReadBeforeWritten(t *testing.T) {
	for _, tc := range []struct {
		remaining, reset, date string
		want                   bool
	}{
		{"49", "2026-11-26T12:00:02Z", "Thu, 26 Nov 2026 12:00:10 GMT", true},  // read at 12:00:00.8
		{"49", "2026-11-26T12:00:02Z", "Thu, 26 Nov 2026 12:00:02 GMT", false}, // 1.2 s before
		{"49", "2026-11-26T12:00:02Z", "Thu, 26 Nov 2026 12:00:01 GMT", false}, // read as written
		{"40", "2026-11-26T12:00:12Z", "Thu, 26 Nov 2026 12:00:10 GMT", true},  // read at 12:00:00
		{"49", "1.2", "Thu, 26 Nov 2026 12:00:10 GMT", false},                  // a wait
		{"50", "2026-11-26T12:00:00Z", "Thu, 26 Nov 2026 12:00:10 GMT", false}, // full
		{"49", "2026-11-26T12:00:02Z", "", false},
		{"49", "", "Thu, 26 Nov 2026 12:00:10 GMT", false},
	} {
		h := parseHeaders(trHeaders(
			"anthropic-ratelimit-requests-limit", "50",
			"anthropic-ratelimit-requests-remaining", tc.remaining,
			"anthropic-ratelimit-requests-reset", tc.reset,
			"date", tc.date,
		), trObservedAt)
		assert.Equal(t, tc.want, readBeforeWritten(h), "%+v", tc)
	}
}

func TestParseHeadersValues(t *testing.T) {
	type want struct {
		limit     int64
		hasLimit  bool
		remaining int64
		hasRem    bool
		reset     time.Duration // from trObservedAt; -1 means unknown
	}
	tests := []struct {
		name                    string
		limit, remaining, reset string
		want                    want
	}{
		{"plain", "100", "7", "2026-11-26T12:00:30Z", want{100, true, 7, true, 30 * time.Second}},
		{"spaces", " 100 ", " 7", " 30 ", want{100, true, 7, true, 30 * time.Second}},
		{"float count without fraction", "100.0", "7.0", "", want{100, true, 7, true, -1}},
		{"fractional count", "100.5", "x", "", want{0, false, 0, false, -1}},
		{"negative", "-1", "-5", "-3s", want{0, false, 0, false, -1}},
		{"empty", "", "", "", want{0, false, 0, false, -1}},
		{"garbage", "lots", "some", "soon", want{0, false, 0, false, -1}},
		{"overflowing integer", "99999999999999999999999", "1e30", "", want{0, false, 0, false, -1}},
		{"nan and inf", "NaN", "Inf", "NaN", want{0, false, 0, false, -1}},
		{"zero remaining", "50", "0", "0", want{50, true, 0, true, 0}},
		{"duration reset", "1", "1", "1m30.5s", want{1, true, 1, true, 90*time.Second + 500*time.Millisecond}},
		{"fractional seconds reset", "1", "1", "0.25", want{1, true, 1, true, 250 * time.Millisecond}},
		{"rfc3339 with offset", "1", "1", "2026-11-26T13:00:10+01:00", want{1, true, 1, true, 10 * time.Second}},
		{"rfc3339 nano", "1", "1", "2026-11-26T12:00:00.123456789Z", want{1, true, 1, true, 123456789}},
		{"date only", "1", "1", "2026-11-26", want{1, true, 1, true, -1}},
		{"huge duration is clamped", "1", "1", "2562047h", want{1, true, 1, true, maxServerWait}},
		{"huge seconds are clamped", "1", "1", "1e300", want{1, true, 1, true, maxServerWait}},
	}
	for _, dialect := range []struct {
		name  string
		names func(field string) string
	}{
		{"anthropic", func(f string) string { return "anthropic-ratelimit-requests-" + f }},
		{"openai", func(f string) string { return "x-ratelimit-" + f + "-requests" }},
	} {
		for _, tt := range tests {
			t.Run(dialect.name+"/"+tt.name, func(t *testing.T) {
				h := http.Header{}
				for field, v := range map[string]string{"limit": tt.limit, "remaining": tt.remaining, "reset": tt.reset} {
					if v != "" {
						h.Set(dialect.names(field), v)
					}
				}
				r := parseHeaders(h, trObservedAt).Reading(Requests)
				assert.Equal(t, tt.want.limit, r.Limit, "limit")
				assert.Equal(t, tt.want.hasLimit, r.HasLimit, "has limit")
				assert.Equal(t, tt.want.remaining, r.Remaining, "remaining")
				assert.Equal(t, tt.want.hasRem, r.HasRemaining, "has remaining")
				if tt.want.reset < 0 {
					assert.True(t, r.Reset.IsZero(), "reset should be unknown, got %v", r.Reset)
				} else {
					assert.Equal(t, tt.want.reset, r.Reset.Sub(trObservedAt), "reset")
				}
			})
		}
	}
}

func TestParseHeadersRetryAfter(t *testing.T) {
	tests := []struct {
		name      string
		after, ms string
		want      time.Duration
		known     bool
	}{
		{"seconds", "3", "", 3 * time.Second, true},
		{"fractional seconds", "0.5", "", 500 * time.Millisecond, true},
		{"http date", trObservedAt.Add(90 * time.Second).Format(http.TimeFormat), "", 90 * time.Second, true},
		{"http date in the past", trObservedAt.Add(-time.Hour).Format(http.TimeFormat), "", 0, true},
		{"ms wins over seconds", "3", "1500", 1500 * time.Millisecond, true},
		{"fractional ms", "", "12.5", 12500 * time.Microsecond, true},
		{"bad ms falls back to seconds", "2", "soon", 2 * time.Second, true},
		{"negative ms falls back", "2", "-10", 2 * time.Second, true},
		{"negative seconds", "-1", "", 0, false},
		{"garbage", "later", "", 0, false},
		{"NaN", "NaN", "NaN", 0, false},
		{"huge", "1e12", "", maxServerWait, true},
		{"huge ms", "", "1e300", maxServerWait, true},
		{"absent", "", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.after != "" {
				h.Set("Retry-After", tt.after)
			}
			if tt.ms != "" {
				h.Set("retry-after-ms", tt.ms)
			}
			got := parseHeaders(h, trObservedAt)
			assert.Equal(t, tt.known, got.HasRetryAfter)
			assert.Equal(t, tt.want, got.RetryAfter)
		})
	}
}

func TestParseHeadersShouldRetry(t *testing.T) {
	for v, want := range map[string]ShouldRetry{
		"true": ShouldRetryTrue, "True": ShouldRetryTrue, "false": ShouldRetryFalse,
		" false ": ShouldRetryFalse, "yes": ShouldRetryUnset, "1": ShouldRetryUnset, "": ShouldRetryUnset,
	} {
		got := parseHeaders(trHeaders("x-should-retry", v), trObservedAt)
		assert.Equal(t, want, got.ShouldRetry, "x-should-retry: %q", v)
	}
}

func TestDimensionString(t *testing.T) {
	assert.Equal(t, "requests", Requests.String())
	assert.Equal(t, "tokens", Tokens.String())
	assert.Equal(t, "input-tokens", InputTokens.String())
	assert.Equal(t, "output-tokens", OutputTokens.String())
	assert.Equal(t, "dimension(9)", Dimension(9).String())
	assert.Equal(t, "dimension(-1)", Dimension(-1).String())
}

func FuzzParseHeaders(f *testing.F) {
	f.Add("anthropic-ratelimit-tokens-reset", "2026-11-26T12:00:01Z", "retry-after", "1.5")
	f.Add("x-ratelimit-reset-tokens", "6m0s", "retry-after-ms", "20")
	f.Add("anthropic-ratelimit-requests-remaining", "0", "retry-after", "Wed, 26 Nov 2026 12:00:00 GMT")
	f.Add("x-ratelimit-remaining-requests", "1e400", "x-should-retry", "true")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := http.Header{}
		h.Add(k1, v1)
		h.Add(k2, v2)
		got := parseHeaders(h, trObservedAt)
		for d := range Dimension(NumDimensions) {
			r := got.Reading(d)
			if r.HasLimit && r.Limit < 0 || r.HasRemaining && r.Remaining < 0 {
				t.Fatalf("negative count parsed: %+v", r)
			}
		}
		if got.RetryAfter < 0 || got.RetryAfter > maxServerWait {
			t.Fatalf("retry-after out of range: %v", got.RetryAfter)
		}
	})
}
