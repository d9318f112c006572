package tollgate

import (
	"encoding/json"
	"time"
)

// A UsageRecord is what one call cost and how it went: one row of a
// rate-limit log. The Trace layer hands one to WithUsageRecorder's function
// when each call ends. It holds no request or response content and no
// headers but the request id.
type UsageRecord struct {
	// Time is when the call ended: its response body reached EOF or was
	// closed, or the call failed.
	Time time.Time
	// Duration is from the start of the call to Time, waits included.
	Duration time.Duration
	// RequestID is the provider's id of the last response (request-id or
	// x-request-id); empty when no response arrived.
	RequestID string
	Provider  Provider
	// Operation is the GenAI operation ("chat", "count_tokens",
	// "embeddings"); empty for other requests.
	Operation string
	// Model is the model the request asked for; ResponseModel the one the
	// response named.
	Model         string
	ResponseModel string
	Stream        bool
	// The tokens the response reported, by kind; zero when it reported none.
	// InputTokens excludes the cache reads and writes (see TotalInputTokens).
	InputTokens              int64
	OutputTokens             int64
	CacheReadInputTokens     int64
	CacheCreationInputTokens int64
	// Status is the HTTP status of the last response; 0 when none arrived.
	Status int
	// Error is the error.type of the call's span: empty on success, else the
	// provider's error type (e.g. "rate_limit_error", "overloaded_error" in a
	// stream), the status code, or the kind of transport error ("timeout",
	// "canceled", "circuit_open", …).
	Error string
	// Attempts is how many times the call was sent (or refused before
	// sending); Waits how long it waited, by cause.
	Attempts int
	Waits    Waits
	// Priority and Tenant are the call's place in the queue (see
	// ContextWithPriority and ContextWithTenant; a long tenant name
	// shortened).
	Priority Priority
	Tenant   string
}

// TotalInputTokens returns InputTokens + CacheReadInputTokens +
// CacheCreationInputTokens, the input tokens the call was billed for at any
// rate (gen_ai.usage.input_tokens).
func (r UsageRecord) TotalInputTokens() int64 {
	return r.InputTokens + r.CacheReadInputTokens + r.CacheCreationInputTokens
}

// MarshalJSON encodes r as one flat object with snake_case names, times in
// RFC 3339 and durations in seconds, e.g.
//
//	{"time":"2026-01-02T15:04:05Z","duration_s":1.5,"request_id":"req_…",
//	 "provider":"anthropic","operation":"chat","model":"claude-sonnet-5",…}
func (r UsageRecord) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Time                     time.Time `json:"time"`
		Duration                 float64   `json:"duration_s"`
		RequestID                string    `json:"request_id,omitempty"`
		Provider                 Provider  `json:"provider,omitempty"`
		Operation                string    `json:"operation,omitempty"`
		Model                    string    `json:"model,omitempty"`
		ResponseModel            string    `json:"response_model,omitempty"`
		Stream                   bool      `json:"stream"`
		InputTokens              int64     `json:"input_tokens"`
		OutputTokens             int64     `json:"output_tokens"`
		CacheReadInputTokens     int64     `json:"cache_read_input_tokens"`
		CacheCreationInputTokens int64     `json:"cache_creation_input_tokens"`
		Status                   int       `json:"status"`
		Error                    string    `json:"error,omitempty"`
		Attempts                 int       `json:"attempts"`
		BudgetWait               float64   `json:"budget_wait_s"`
		PauseWait                float64   `json:"pause_wait_s"`
		BackoffWait              float64   `json:"backoff_wait_s"`
		Priority                 string    `json:"priority"`
		Tenant                   string    `json:"tenant,omitempty"`
	}{
		r.Time, r.Duration.Seconds(), r.RequestID, r.Provider, r.Operation, r.Model, r.ResponseModel, r.Stream,
		r.InputTokens, r.OutputTokens, r.CacheReadInputTokens, r.CacheCreationInputTokens,
		r.Status, r.Error, r.Attempts, r.Waits.Budget.Seconds(), r.Waits.Pause.Seconds(), r.Waits.Backoff.Seconds(),
		r.Priority.String(), r.Tenant,
	})
}
