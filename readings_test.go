package tollgate_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// What the responses said is kept per Key, field by field: a response that
// leaves a dimension out keeps the older reading of it.
func TestStateMergesReadingsPerKey(t *testing.T) {
	type answer struct {
		status int
		header []string
	}
	answers := make(chan answer, 3)
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		a := <-answers
		h := http.Header{"Content-Type": {"application/json"}}
		for i := 0; i+1 < len(a.header); i += 2 {
			h.Set(a.header[i], a.header[i+1])
		}
		return &http.Response{StatusCode: a.status, Header: h, Body: io.NopCloser(strings.NewReader(`{}`)), Request: req}, nil
	})
	clk := fakeclock.New(trEpoch)
	rt := tollgate.New(base, tollgate.WithClock(clk), tollgate.WithMaxAttempts(1))
	call := func(model string, a answer) {
		answers <- a
		req := trPost(t, context.Background(), "https://api.anthropic.com", `{"model":"`+model+`","max_tokens":10}`)
		resp, err, _ := driveClock(clk, func() (*http.Response, error) { return rt.RoundTrip(req) })
		require.NoError(t, err)
		require.Equal(t, a.status, resp.StatusCode)
		trReadAll(t, resp)
	}

	call("claude-sonnet-4-5", answer{200, []string{
		"anthropic-ratelimit-requests-limit", "50",
		"anthropic-ratelimit-requests-remaining", "40",
		"anthropic-ratelimit-output-tokens-remaining", "100",
		"request-id", "req_1"}})
	clk.Advance(time.Second)
	// A later response of the same family that lacks the output headers
	// keeps the older reading.
	call("claude-sonnet-4-5-20250929", answer{429, []string{
		"anthropic-ratelimit-requests-remaining", "39",
		"retry-after", "2",
		"request-id", "req_2"}})
	call("claude-haiku-4-5", answer{200, []string{
		"anthropic-ratelimit-requests-limit", "5",
		"anthropic-ratelimit-requests-remaining", "4"}})

	snap := rt.Snapshot()
	require.Len(t, snap.Keys, 2)
	sonnet, ok := snap.Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"})
	require.True(t, ok)
	h := sonnet.Headers
	assert.Equal(t, tollgate.ProviderAnthropic, h.Provider)
	assert.Equal(t, trEpoch.Add(time.Second), h.Observed, "when the newest response was read")
	assert.Equal(t, tollgate.Reading{Limit: 50, HasLimit: true, Remaining: 39, HasRemaining: true}, h.Reading(tollgate.Requests))
	assert.Equal(t, tollgate.Reading{Remaining: 100, HasRemaining: true}, h.Reading(tollgate.OutputTokens))
	assert.False(t, h.Reading(tollgate.InputTokens).Known())
	assert.True(t, h.HasRetryAfter)
	assert.Equal(t, 2*time.Second, h.RetryAfter)
	assert.Equal(t, "req_2", h.RequestID)
	assert.Equal(t, tollgate.Counters{Attempts: 2, RateLimited: 1}, sonnet.Counters)

	haiku, ok := snap.Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-haiku-4"})
	require.True(t, ok)
	assert.Equal(t, tollgate.Reading{Limit: 5, HasLimit: true, Remaining: 4, HasRemaining: true}, haiku.Headers.Reading(tollgate.Requests))
	assert.False(t, haiku.Headers.Reading(tollgate.OutputTokens).Known(), "another Key's readings are not shared")
	assert.False(t, haiku.Headers.HasRetryAfter)
	assert.Equal(t, tollgate.Counters{Attempts: 1}, haiku.Counters)

	_, ok = snap.Key(tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"})
	assert.False(t, ok)
}

func TestModelFamily(t *testing.T) {
	tests := []struct {
		provider tollgate.Provider
		model    string
		want     string
	}{
		{tollgate.ProviderAnthropic, "claude-sonnet-4-5-20250929", "claude-sonnet-4"},
		{tollgate.ProviderAnthropic, "claude-sonnet-4-5", "claude-sonnet-4"},
		{tollgate.ProviderAnthropic, "claude-sonnet-4-20250514", "claude-sonnet-4"},
		{tollgate.ProviderAnthropic, "claude-opus-4-1", "claude-opus-4"},
		{tollgate.ProviderAnthropic, "claude-3-5-haiku-latest", "claude-3-5-haiku"},
		{tollgate.ProviderAnthropic, "Claude-Haiku-4-5", "claude-haiku-4"},
		{tollgate.ProviderOpenAI, "gpt-4o-2024-08-06", "gpt-4o"},
		{tollgate.ProviderOpenAI, "gpt-4.1-mini", "gpt-4.1-mini"},
		{tollgate.ProviderOpenAI, "claude-sonnet-4-5", "claude-sonnet-4-5"}, // minor versions are pooled by Anthropic only
		{tollgate.ProviderAnthropic, "", ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tollgate.ModelFamily(tt.provider, tt.model), tt.model)
	}
}
