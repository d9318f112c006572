package tollgate

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUsageRecordJSON(t *testing.T) {
	rec := UsageRecord{
		Time: time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC), Duration: 1500 * time.Millisecond,
		RequestID: "req_1", Provider: ProviderAnthropic, Operation: "chat", Model: "claude-sonnet-4-5",
		Stream: true, InputTokens: 10, OutputTokens: 20, CacheReadInputTokens: 30, CacheCreationInputTokens: 40,
		Status: 529, Error: "overloaded_error", Attempts: 3,
		Waits: Waits{Budget: 250 * time.Millisecond, Pause: 2 * time.Second, Backoff: time.Second},
	}
	b, err := json.Marshal(rec)
	require.NoError(t, err)
	assert.JSONEq(t, `{"time":"2026-01-02T03:04:05.6Z","duration_s":1.5,"request_id":"req_1","provider":"anthropic",
		"operation":"chat","model":"claude-sonnet-4-5","stream":true,"input_tokens":10,"output_tokens":20,
		"cache_read_input_tokens":30,"cache_creation_input_tokens":40,"status":529,"error":"overloaded_error",
		"attempts":3,"budget_wait_s":0.25,"pause_wait_s":2,"backoff_wait_s":1}`, string(b))
	assert.Equal(t, int64(80), rec.TotalInputTokens())

	b, err = json.Marshal(UsageRecord{})
	require.NoError(t, err)
	assert.NotContains(t, string(b), "request_id", "empty strings are left out")
}
