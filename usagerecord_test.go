package tollgate_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
)

func TestUsageRecordJSON(t *testing.T) {
	rec := tollgate.UsageRecord{
		Time: time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC), Duration: 1500 * time.Millisecond,
		RequestID: "req_1", Provider: tollgate.ProviderAnthropic, Operation: "chat", Model: "claude-sonnet-4-5",
		Stream: true, InputTokens: 10, OutputTokens: 20, CacheReadInputTokens: 30, CacheCreationInputTokens: 40,
		Status: 529, Error: "overloaded_error", Attempts: 3,
		Waits: tollgate.Waits{Budget: 250 * time.Millisecond, Pause: 2 * time.Second, Backoff: time.Second},
	}
	b, err := json.Marshal(rec)
	require.NoError(t, err)
	assert.JSONEq(t, `{"time":"2026-01-02T03:04:05.6Z","duration_s":1.5,"request_id":"req_1","provider":"anthropic",
		"operation":"chat","model":"claude-sonnet-4-5","stream":true,"input_tokens":10,"output_tokens":20,
		"cache_read_input_tokens":30,"cache_creation_input_tokens":40,"status":529,"error":"overloaded_error",
		"attempts":3,"budget_wait_s":0.25,"pause_wait_s":2,"backoff_wait_s":1,"priority":"normal"}`, string(b))
	assert.Equal(t, int64(80), rec.TotalInputTokens())

	rec.ResponseModel = "claude-sonnet-4-5-20250929"
	b, err = json.Marshal(rec)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"response_model":"claude-sonnet-4-5-20250929"`)

	b, err = json.Marshal(tollgate.UsageRecord{})
	require.NoError(t, err)
	assert.JSONEq(t, `{"time":"0001-01-01T00:00:00Z","duration_s":0,"stream":false,"input_tokens":0,"output_tokens":0,
		"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"status":0,"attempts":0,
		"budget_wait_s":0,"pause_wait_s":0,"backoff_wait_s":0,"priority":"normal"}`, string(b), "empty strings are left out, numbers kept")
}
