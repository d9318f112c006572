package usage

import (
	"bytes"
	"errors"
	"github.com/tollgate-go/tollgate/internal/sse"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate-go/tollgate/internal/testio"
)

// sse joins lines with "\n"; every event in the samples ends with a blank line.
func events(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

var (
	anthropicStream = events(
		`event: message_start`,
		`data: {"type":"message_start","message":{"id":"msg_01ABC","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":2}}}`,
		``,
		`event: content_block_start`,
		`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
		``,
		`event: ping`,
		`data: {"type": "ping"}`,
		``,
		`event: content_block_delta`,
		`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello \"usage\": {\"output_tokens\": 999}"}}`,
		``,
		`event: content_block_stop`,
		`data: {"type":"content_block_stop","index":0}`,
		``,
		`event: message_delta`,
		`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}`,
		``,
		`event: message_stop`,
		`data: {"type":"message_stop"}`,
		``,
	)
	anthropicStreamUsage = Usage{
		InputTokens: 472, OutputTokens: 15, CacheReadInputTokens: 2000, CacheCreationInputTokens: 100,
		Reported: true, ResponseID: "msg_01ABC", ResponseModel: "claude-sonnet-4-5-20250929",
		FinishReasons: []string{"end_turn"}, Complete: true,
	}

	chatStream = events(
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}`,
		``,
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}`,
		``,
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}`,
		``,
		`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}`,
		``,
		`data: [DONE]`,
		``,
	)
	chatStreamUsage = Usage{
		InputTokens: 36, OutputTokens: 20, CacheReadInputTokens: 64, Reported: true,
		ResponseID: "chatcmpl-1", ResponseModel: "gpt-4o-2024-08-06", FinishReasons: []string{"stop"}, Complete: true,
	}

	responsesStream = events(
		`event: response.created`,
		`data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-4.1-2025-04-14","output":[],"usage":null}}`,
		``,
		`event: response.output_text.delta`,
		`data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi","sequence_number":3}`,
		``,
		`event: response.completed`,
		`data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-4.1-2025-04-14","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":10},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":55}}}`,
		``,
	)
	responsesStreamUsage = Usage{
		InputTokens: 40, OutputTokens: 5, CacheReadInputTokens: 10, Reported: true,
		ResponseID: "resp_1", ResponseModel: "gpt-4.1-2025-04-14", FinishReasons: []string{"completed"}, Complete: true,
	}
)

var sseCases = []struct {
	name string
	body string
	want Usage
}{
	{"anthropic", anthropicStream, anthropicStreamUsage},
	{
		"anthropic truncated after a delta",
		anthropicStream[:strings.Index(anthropicStream, "event: content_block_stop")],
		Usage{
			InputTokens: 472, OutputTokens: 2, CacheReadInputTokens: 2000, CacheCreationInputTokens: 100,
			Reported: true, ResponseID: "msg_01ABC", ResponseModel: "claude-sonnet-4-5-20250929",
		},
	},
	{
		"anthropic truncated mid event",
		anthropicStream[:strings.Index(anthropicStream, `"usage":{"output_tokens":15}`)],
		Usage{
			InputTokens: 472, OutputTokens: 2, CacheReadInputTokens: 2000, CacheCreationInputTokens: 100,
			Reported: true, ResponseID: "msg_01ABC", ResponseModel: "claude-sonnet-4-5-20250929",
		},
	},
	{
		"anthropic overloaded after 200",
		events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_2","model":"claude-opus-4-1","usage":{"input_tokens":10,"output_tokens":1}}}`,
			``,
			`event: content_block_delta`,
			`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}`,
			``,
			`event: error`,
			`data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
			``,
		),
		Usage{
			InputTokens: 10, OutputTokens: 1, Reported: true, ResponseID: "msg_2", ResponseModel: "claude-opus-4-1",
			StreamError: &Error{Type: "overloaded_error", Message: "Overloaded"},
		},
	},
	{
		"anthropic error event that is not JSON",
		events(`event: error`, `data: upstream went away`, ``),
		Usage{StreamError: &Error{Type: "error", Message: "upstream went away"}},
	},
	{
		"anthropic message_delta repeats input and cache counts, output is cumulative",
		events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_3","model":"claude-haiku-4-5","usage":{"input_tokens":5,"cache_creation_input_tokens":7,"cache_read_input_tokens":0,"output_tokens":1}}}`,
			``,
			`event: message_delta`,
			`data: {"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10}}`,
			``,
			`event: message_delta`,
			`data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":6,"cache_creation_input_tokens":7,"cache_read_input_tokens":300,"output_tokens":25}}`,
			``,
			`event: message_stop`,
			`data: {"type":"message_stop"}`,
			``,
		),
		Usage{
			InputTokens: 6, OutputTokens: 25, CacheReadInputTokens: 300, CacheCreationInputTokens: 7, Reported: true,
			ResponseID: "msg_3", ResponseModel: "claude-haiku-4-5", FinishReasons: []string{"tool_use"}, Complete: true,
		},
	},
	{
		"anthropic without event lines: type from the data",
		events(
			`data: {"type":"message_start","message":{"id":"msg_4","model":"claude-sonnet-4-5","usage":{"input_tokens":3}}}`,
			``,
			`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}`,
			``,
			`data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":4}}`,
			``,
			`data: {"type":"message_stop"}`,
			``,
		),
		Usage{
			InputTokens: 3, OutputTokens: 4, Reported: true, ResponseID: "msg_4", ResponseModel: "claude-sonnet-4-5",
			FinishReasons: []string{"max_tokens"}, Complete: true,
		},
	},
	{
		"unknown events and unknown fields are ignored",
		events(
			`: a comment`,
			`retry: 3000`,
			`id: 7`,
			`event: future_event`,
			`data: {"type":"future_event","usage":{"output_tokens":999}}`,
			``,
			`event: message_delta`,
			`id: 8`,
			`x-unknown: whatever`,
			`data: {"type":"message_delta","usage":{"output_tokens":3}}`,
			``,
			`event: ping`,
			``,
		),
		Usage{OutputTokens: 3, Reported: true},
	},
	{
		"multi-line data is joined with newlines",
		events(
			`event: message_delta`,
			`data: {"type":"message_delta",`,
			`data: "delta":{"stop_reason":"end_turn"},`,
			`data:"usage":{"output_tokens":7}}`,
			``,
		),
		Usage{OutputTokens: 7, Reported: true, FinishReasons: []string{"end_turn"}},
	},
	{
		"malformed JSON in one event is skipped",
		events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_5","usage":{"input_tokens":11}}}`,
			``,
			`event: message_delta`,
			`data: {"type":"message_delta","usage":{"output_tokens":50}`,
			``,
			`event: message_delta`,
			`data: {"type":"message_delta","usage":{"output_tokens":12}}}`,
			``,
			`event: message_delta`,
			`data: not json at all`,
			``,
		),
		Usage{InputTokens: 11, Reported: true, ResponseID: "msg_5"},
	},
	{
		"malformed usage values are ignored one by one",
		events(
			`event: message_delta`,
			`data: {"type":"message_delta","usage":{"input_tokens":"ten","output_tokens":-3,"cache_read_input_tokens":4.0,"cache_creation_input_tokens":1.5}}`,
			``,
		),
		Usage{CacheReadInputTokens: 4, Reported: true},
	},
	{
		"usage that is not an object",
		events(`event: message_delta`, `data: {"type":"message_delta","usage":"lots"}`, ``),
		Usage{},
	},
	{
		"no usage at all",
		events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_6","model":"claude-sonnet-4-5"}}`,
			``,
			`event: message_stop`,
			`data: {"type":"message_stop"}`,
			``,
		),
		Usage{ResponseID: "msg_6", ResponseModel: "claude-sonnet-4-5", Complete: true},
	},
	{
		"an event without the final blank line is not dispatched",
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n",
		Usage{},
	},
	{
		"byte order mark",
		"\xEF\xBB\xBF" + events(`event: message_delta`, `data: {"type":"message_delta","usage":{"output_tokens":2}}`, ``),
		Usage{OutputTokens: 2, Reported: true},
	},
	{"openai chat", chatStream, chatStreamUsage},
	{
		"openai chat without include_usage",
		chatStream[:strings.Index(chatStream, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],`)] + "data: [DONE]\n\n",
		Usage{ResponseID: "chatcmpl-1", ResponseModel: "gpt-4o-2024-08-06", FinishReasons: []string{"stop"}, Complete: true},
	},
	{
		"openai chat truncated",
		chatStream[:strings.Index(chatStream, "data: [DONE]")],
		func() Usage { u := chatStreamUsage; u.Complete = false; return u }(),
	},
	{
		"openai chat with two choices finishing out of order",
		events(
			`data: {"id":"c2","model":"gpt-4o","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}`,
			``,
			`data: {"id":"c2","model":"gpt-4o","choices":[{"delta":{},"finish_reason":"stop","index":0}]}`,
			``,
			`data: [DONE]`,
			``,
		),
		Usage{ResponseID: "c2", ResponseModel: "gpt-4o", FinishReasons: []string{"stop", "length"}, Complete: true},
	},
	{
		"openai error chunk",
		events(
			`data: {"id":"c3","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}`,
			``,
			`data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}`,
			``,
		),
		Usage{
			ResponseID: "c3", ResponseModel: "gpt-4o",
			StreamError: &Error{Type: "server_error", Message: "The server had an error while processing your request."},
		},
	},
	{"responses", responsesStream, responsesStreamUsage},
	{
		"responses incomplete",
		events(
			`event: response.incomplete`,
			`data: {"type":"response.incomplete","response":{"id":"resp_2","model":"o3","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":8,"output_tokens":100}}}`,
			``,
		),
		Usage{
			InputTokens: 8, OutputTokens: 100, Reported: true, ResponseID: "resp_2", ResponseModel: "o3",
			FinishReasons: []string{"incomplete"}, Complete: true,
		},
	},
	{
		"responses failed",
		events(
			`event: response.created`,
			`data: {"type":"response.created","response":{"id":"resp_3","model":"gpt-4.1","status":"in_progress","usage":null}}`,
			``,
			`event: response.failed`,
			`data: {"type":"response.failed","response":{"id":"resp_3","model":"gpt-4.1","status":"failed","error":{"code":"server_error","message":"The model failed."},"usage":null}}`,
			``,
		),
		Usage{
			ResponseID: "resp_3", ResponseModel: "gpt-4.1", FinishReasons: []string{"failed"},
			StreamError: &Error{Type: "server_error", Message: "The model failed.", Code: "server_error"},
		},
	},
	{
		"responses error event",
		events(
			`event: error`,
			`data: {"type":"error","code":"rate_limit_exceeded","message":"Slow down","param":null,"sequence_number":1}`,
			``,
		),
		Usage{StreamError: &Error{Type: "rate_limit_exceeded", Message: "Slow down", Code: "rate_limit_exceeded"}},
	},
	{
		"escaped strings",
		events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_\u0037\"q\"","model":"claude-\u00e9"}}`,
			``,
		),
		Usage{ResponseID: `msg_7"q"`, ResponseModel: "claude-é"},
	},
}

var jsonCases = []struct {
	name string
	body string
	want Usage
}{
	{
		"anthropic message",
		`{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi \"there\" {[\\"},{"type":"tool_use","id":"toolu_1","name":"f","input":{"usage":{"input_tokens":999},"id":"nope"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":5,"output_tokens":3,"service_tier":"standard","server_tool_use":{"web_search_requests":0}}}`,
		Usage{
			InputTokens: 10, OutputTokens: 3, CacheReadInputTokens: 5, CacheCreationInputTokens: 2, Reported: true,
			ResponseID: "msg_1", ResponseModel: "claude-sonnet-4-5-20250929", FinishReasons: []string{"end_turn"}, Complete: true,
		},
	},
	{
		"anthropic count_tokens carries no usage",
		`{"input_tokens": 42}`,
		Usage{Complete: true},
	},
	{
		"openai chat completion",
		`{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":1,"message":{"role":"assistant","content":"B","refusal":null},"logprobs":null,"finish_reason":"length"},{"index":0,"message":{"role":"assistant","content":"A","finish_reason":"not this"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,"prompt_tokens_details":{"cached_tokens":30,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_1"}`,
		Usage{
			InputTokens: 70, OutputTokens: 20, CacheReadInputTokens: 30, Reported: true,
			ResponseID: "chatcmpl-9", ResponseModel: "gpt-4o-2024-08-06", FinishReasons: []string{"stop", "length"}, Complete: true,
		},
	},
	{
		"openai responses",
		`{"id":"resp_1","object":"response","created_at":1,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","status":"completed","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":10},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":55}}`,
		Usage{
			InputTokens: 40, OutputTokens: 5, CacheReadInputTokens: 10, Reported: true,
			ResponseID: "resp_1", ResponseModel: "gpt-4.1-2025-04-14", FinishReasons: []string{"completed"}, Complete: true,
		},
	},
	{
		"anthropic error body",
		`{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011"}`,
		Usage{
			StreamError: &Error{Type: "rate_limit_error", Message: "Number of request tokens has exceeded your per-minute rate limit"},
			Complete:    true,
		},
	},
	{
		"anthropic spend limit",
		`{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}`,
		Usage{StreamError: &Error{Type: "rate_limit_error", Message: "spend limit", Code: "enforced_spend_limit_reached"}, Complete: true},
	},
	{
		"openai error body",
		`{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`,
		Usage{StreamError: &Error{Type: "tokens", Message: "Rate limit reached", Code: "rate_limit_exceeded"}, Complete: true},
	},
	{
		"truncated body keeps what came before",
		`{"id":"msg_t","model":"claude-sonnet-4-5","content":[{"type":"text","text":"abc`,
		Usage{ResponseID: "msg_t", ResponseModel: "claude-sonnet-4-5"},
	},
	{
		"malformed body",
		`{"id":"msg_m",,"usage":{"input_tokens":1}}`,
		Usage{ResponseID: "msg_m"},
	},
	{
		"mismatched brackets",
		`{"id":"msg_b","content":[}`,
		Usage{ResponseID: "msg_b"},
	},
	{
		"malformed usage values",
		`{"usage":{"input_tokens":"ten","output_tokens":-1,"cache_read_input_tokens":3.0,"cache_creation_input_tokens":1e2,"prompt_tokens_details":"x"}}`,
		Usage{CacheReadInputTokens: 3, CacheCreationInputTokens: 100, Reported: true, Complete: true},
	},
	{
		"null usage",
		`{"id":"x","usage":null}`,
		Usage{ResponseID: "x", Complete: true},
	},
	{
		"deep nesting before usage",
		`{"content":` + strings.Repeat(`[{"a":`, 200) + `"x"` + strings.Repeat(`}]`, 200) + `,"usage":{"output_tokens":4}}`,
		Usage{OutputTokens: 4, Reported: true, Complete: true},
	},
	{
		"top-level array",
		`[{"usage":{"output_tokens":4}}]`,
		Usage{Complete: true},
	},
	{
		"whitespace everywhere",
		"\n{ \"id\" : \"w\" ,\r\n\t\"usage\" : { \"output_tokens\" : 8 } , \"stop_reason\" : \"end_turn\" }\n",
		Usage{OutputTokens: 8, Reported: true, ResponseID: "w", FinishReasons: []string{"end_turn"}, Complete: true},
	},
}

func sizes(s ...int) func() int {
	i := 0
	return func() int {
		if i < len(s) {
			i++
			return s[i-1]
		}
		return 1 << 30
	}
}

// readThrough reads body through a usage reader in reads of the given sizes
// and returns the usage and the bytes the caller saw.
func readThrough(t testing.TB, body []byte, contentType string, next func() int) (Usage, []byte) {
	t.Helper()
	var got Usage
	calls := 0
	r := NewReader(&testio.ChunkReader{Data: body, Next: next}, contentType, doneSink(func(u Usage, err error) {
		calls++
		got = u
		assert.NoError(t, err)
	}))
	out, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, 1, calls, "done calls")
	// What output events took depends on the line endings; it has a test
	// of its own (TestProducedCountsTheBytesOfOutputEvents).
	got.OutputBytes = 0
	return got, out
}

func TestUsageReaderSSE(t *testing.T) {
	for _, tc := range sseCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, ending := range []string{"\n", "\r\n", "\r"} {
				body := strings.ReplaceAll(tc.body, "\n", ending)
				got, out := readThrough(t, []byte(body), "text/event-stream; charset=utf-8", sizes())
				assert.Equal(t, tc.want, got, "line ending %q", ending)
				assert.Equal(t, body, string(out))
			}
		})
	}
}

func TestUsageReaderJSON(t *testing.T) {
	for _, tc := range jsonCases {
		t.Run(tc.name, func(t *testing.T) {
			got, out := readThrough(t, []byte(tc.body), "application/json", sizes())
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.body, string(out))
		})
	}
}

// TestUsageReaderSplits feeds every sample in one Read, one byte per Read,
// in two Reads split at every byte, and in random chunks: the usage and the
// bytes the caller gets must not depend on how the body was cut.
func TestUsageReaderSplits(t *testing.T) {
	type sample struct{ name, body, ct string }
	var samples []sample
	for _, tc := range sseCases {
		for _, ending := range []string{"\n", "\r\n", "\r"} {
			samples = append(samples, sample{tc.name + " " + strings.TrimSpace(strings.NewReplacer("\r", "CR", "\n", "LF").Replace(ending)),
				strings.ReplaceAll(tc.body, "\n", ending), "text/event-stream"})
		}
	}
	for _, tc := range jsonCases {
		samples = append(samples, sample{tc.name, tc.body, "application/json"})
	}
	for _, s := range samples {
		t.Run(s.name, func(t *testing.T) {
			body := []byte(s.body)
			want, _ := readThrough(t, body, s.ct, sizes())

			got, out := readThrough(t, body, s.ct, func() int { return 1 })
			require.Equal(t, want, got, "one byte per Read")
			require.Equal(t, body, out)

			for k := 1; k < len(body); k++ {
				got, out := readThrough(t, body, s.ct, sizes(k))
				require.Equal(t, want, got, "split at %d", k)
				require.Equal(t, body, out)
			}

			rng := rand.New(rand.NewPCG(1, 2))
			for range 20 {
				got, out := readThrough(t, body, s.ct, func() int { return 1 + rng.IntN(64) })
				require.Equal(t, want, got, "random chunks")
				require.Equal(t, body, out)
			}
		})
	}
}

func TestUsageReaderContentTypes(t *testing.T) {
	body := `{"id":"x","usage":{"output_tokens":1}}`
	parsed := Usage{OutputTokens: 1, Reported: true, ResponseID: "x", Complete: true}
	for _, tc := range []struct {
		ct, body string
		want     Usage
	}{
		{"application/json", body, parsed},
		{"Application/JSON; charset=utf-8", body, parsed},
		{"application/problem+json", body, parsed},
		{"", body, parsed},
		{"", "  \n" + body, parsed},
		{"", "x" + body, Usage{}},
		{"text/plain", body, Usage{}},
		{"application/octet-stream", body, Usage{}},
		{"text/event-stream", "data: " + body + "\n\n", Usage{OutputTokens: 1, Reported: true, ResponseID: "x"}},
		{"application/json", "", Usage{}},
		{"text/event-stream", "", Usage{}},
	} {
		t.Run(tc.ct+" "+tc.body[:min(len(tc.body), 4)], func(t *testing.T) {
			got, out := readThrough(t, []byte(tc.body), tc.ct, func() int { return 3 })
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.body, string(out))
		})
	}
}

func TestUsageTotalInputTokens(t *testing.T) {
	assert.Equal(t, int64(2572), anthropicStreamUsage.TotalInputTokens())
	assert.Equal(t, int64(100), chatStreamUsage.TotalInputTokens(), "OpenAI: the prompt_tokens as reported")
	assert.Equal(t, int64(50), responsesStreamUsage.TotalInputTokens(), "Responses API: the input_tokens as reported")
}

func TestParseAPIError(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       Error
		ok         bool
	}{
		{"anthropic", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}`,
			Error{Type: "overloaded_error", Message: "Overloaded"}, true},
		{"anthropic details", `{"type":"error","error":{"type":"rate_limit_error","message":"m","details":{"error_code":"enforced_spend_limit_reached"}}}`,
			Error{Type: "rate_limit_error", Message: "m", Code: "enforced_spend_limit_reached"}, true},
		{"openai", `{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}`,
			Error{Type: "requests", Message: "Rate limit reached for gpt-4o", Code: "rate_limit_exceeded"}, true},
		{"openai numeric code", `{"error":{"message":"m","type":"t","code":429}}`, Error{Type: "t", Message: "m", Code: "429"}, true},
		{"responses", `{"error":{"code":"server_error","message":"m"}}`, Error{Type: "server_error", Message: "m", Code: "server_error"}, true},
		{"odd field types", `{"error":{"type":7,"message":["x"],"code":{},"details":"y"}}`, Error{Type: "7", Code: ""}, true},
		{"error null", `{"id":"resp_1","error":null}`, Error{}, false},
		{"error string", `{"error":"bad"}`, Error{}, false},
		{"empty error", `{"error":{}}`, Error{}, false},
		{"not an error", `{"id":"msg_1","type":"message"}`, Error{}, false},
		{"array", `[{"error":{"type":"x"}}]`, Error{}, false},
		{"html", `<html>502 Bad Gateway</html>`, Error{}, false},
		{"empty", ``, Error{}, false},
		{"truncated", `{"type":"error","error":{"type":"overloaded_error","mess`, Error{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ParseError([]byte(tc.body))
			assert.Equal(t, tc.ok, ok)
			if tc.ok {
				assert.Equal(t, tc.want, got)
			}
		})
	}
}

// genReader produces size bytes of filler (JSON string contents with an
// escape now and then) without holding them.
type genReader struct{ left int64 }

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), g.left))
	for i := range n {
		p[i] = 'a' + byte(i%26)
	}
	if n >= 8 {
		copy(p[n/2:], `\"\\`)
	}
	g.left -= int64(n)
	return n, nil
}

func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestUsageReaderBoundedMemory(t *testing.T) {
	const bound = 4 << 20
	drain := func(r io.Reader) {
		buf := make([]byte, 32<<10)
		for {
			if _, err := r.Read(buf); err != nil {
				require.ErrorIs(t, err, io.EOF)
				return
			}
		}
	}

	t.Run("50 MB JSON body", func(t *testing.T) {
		const size = 50 << 20
		var got Usage
		alloc := allocated(func() {
			body := io.MultiReader(
				strings.NewReader(`{"id":"msg_big","model":"claude-sonnet-4-5","content":[{"type":"text","text":"`),
				&genReader{left: size},
				strings.NewReader(`"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":34}}`),
			)
			r := NewReader(io.NopCloser(body), "application/json", doneSink(func(u Usage, _ error) { got = u }))
			drain(r)
		})
		t.Logf("allocated %d bytes reading a %d-byte body", alloc, size)
		assert.Less(t, alloc, uint64(bound))
		assert.Equal(t, Usage{
			InputTokens: 12, OutputTokens: 34, Reported: true, ResponseID: "msg_big", ResponseModel: "claude-sonnet-4-5",
			FinishReasons: []string{"end_turn"}, Complete: true,
		}, got)
	})

	for _, tc := range []struct {
		name, event string
		partial     bool
	}{
		{"10 MB content delta", "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"", false},
		{"10 MB untyped event", "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"", true},
		{"10 MB comment", ": ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Usage
			alloc := allocated(func() {
				body := io.MultiReader(
					strings.NewReader(events(`event: message_start`,
						`data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":1}}}`, ``)),
					strings.NewReader(tc.event),
					&genReader{left: 10 << 20},
					strings.NewReader("\"}}\n\n"),
					strings.NewReader(anthropicStream[strings.Index(anthropicStream, "event: message_delta"):]),
				)
				r := NewReader(io.NopCloser(body), "text/event-stream", doneSink(func(u Usage, _ error) { got, got.OutputBytes = u, 0 }))
				drain(r)
			})
			t.Logf("allocated %d bytes", alloc)
			assert.Less(t, alloc, uint64(bound))
			assert.Equal(t, Usage{
				InputTokens: 5, OutputTokens: 15, Reported: true, ResponseID: "msg_1",
				FinishReasons: []string{"end_turn"}, Complete: true, Partial: tc.partial,
			}, got)
		})
	}
}

// TestSSELineCap pins the cap on one line: a line up to sse.MaxLine bytes
// (without its end) is parsed, a longer one is skipped and marks the usage
// partial, whether or not the line arrived in one Read.
func TestSSELineCap(t *testing.T) {
	for _, extra := range []int{-1, 0, 1, 7} {
		prefix := `data: {"usage":{"output_tokens":5},"pad":"`
		line := prefix + strings.Repeat("x", sse.MaxLine+extra-len(prefix)-2) + `"}`
		require.Len(t, line, sse.MaxLine+extra)
		body := []byte(line + "\n\n")
		want := Usage{OutputTokens: 5, Reported: true}
		if extra > 0 {
			want = Usage{Partial: true}
		}
		for _, chunk := range []int{len(body), 4096, 1000} {
			got, _ := readThrough(t, body, "text/event-stream", func() int { return chunk })
			assert.Equal(t, want, got, "line of cap%+d bytes in reads of %d", extra, chunk)
		}
	}
}

// scriptBody is a body whose reads follow a script, for the done-once tests.
type scriptBody struct {
	reads  []func() (string, error)
	closes int
}

func (b *scriptBody) Read(p []byte) (int, error) {
	if b.closes > 0 {
		return 0, errors.New("read on closed body")
	}
	if len(b.reads) == 0 {
		return 0, io.EOF
	}
	s, err := b.reads[0]()
	b.reads = b.reads[1:]
	return copy(p, s), err
}

func (b *scriptBody) Close() error { b.closes++; return nil }

func TestUsageReaderDoneOnce(t *testing.T) {
	boom := errors.New("connection reset")
	event := events(`event: message_delta`, `data: {"type":"message_delta","usage":{"output_tokens":3}}`, ``)
	type call struct {
		u   Usage
		err error
	}

	t.Run("EOF then Close", func(t *testing.T) {
		var calls []call
		body := &scriptBody{reads: []func() (string, error){func() (string, error) { return event, io.EOF }}}
		r := NewReader(body, "text/event-stream", doneSink(func(u Usage, err error) { calls = append(calls, call{u, err}) }))
		_, err := io.ReadAll(r)
		require.NoError(t, err)
		require.Len(t, calls, 1)
		assert.Equal(t, int64(3), calls[0].u.OutputTokens)
		assert.NoError(t, calls[0].err)
		require.NoError(t, r.Close())
		require.NoError(t, r.Close())
		assert.Len(t, calls, 1)
		assert.Equal(t, 1, body.closes, "Close is idempotent")
	})

	t.Run("Close then Read", func(t *testing.T) {
		var calls []call
		body := &scriptBody{reads: []func() (string, error){func() (string, error) { return event, nil }}}
		r := NewReader(body, "text/event-stream", doneSink(func(u Usage, err error) { calls = append(calls, call{u, err}) }))
		require.NoError(t, r.Close())
		require.Len(t, calls, 1)
		assert.NoError(t, calls[0].err)
		assert.False(t, calls[0].u.Reported)
		_, err := r.Read(make([]byte, 10))
		assert.Error(t, err)
		assert.Len(t, calls, 1)
	})

	t.Run("read error", func(t *testing.T) {
		var calls []call
		body := &scriptBody{reads: []func() (string, error){
			func() (string, error) { return event, nil },
			func() (string, error) { return "data: {", boom },
		}}
		r := NewReader(body, "text/event-stream", doneSink(func(u Usage, err error) { calls = append(calls, call{u, err}) }))
		_, err := io.ReadAll(r)
		require.ErrorIs(t, err, boom)
		require.Len(t, calls, 1)
		assert.ErrorIs(t, calls[0].err, boom)
		assert.Equal(t, int64(3), calls[0].u.OutputTokens, "the usage seen before the error")
		require.NoError(t, r.Close())
		assert.Len(t, calls, 1)
	})

	t.Run("pass-through", func(t *testing.T) {
		var calls []call
		body := &scriptBody{reads: []func() (string, error){func() (string, error) { return "hello", io.EOF }}}
		r := NewReader(body, "text/plain", doneSink(func(u Usage, err error) { calls = append(calls, call{u, err}) }))
		out, err := io.ReadAll(r)
		require.NoError(t, err)
		assert.Equal(t, "hello", string(out))
		require.NoError(t, r.Close())
		require.Len(t, calls, 1)
		assert.Equal(t, Usage{}, calls[0].u)
	})

	t.Run("nil done", func(t *testing.T) {
		r := NewReader(io.NopCloser(strings.NewReader(event)), "text/event-stream", nil)
		_, err := io.ReadAll(r)
		require.NoError(t, err)
		require.NoError(t, r.Close())
	})

	t.Run("concurrent Close and Read", func(t *testing.T) {
		for range 50 {
			pr, pw := io.Pipe()
			var mu sync.Mutex
			calls := 0
			r := NewReader(pr, "text/event-stream", doneSink(func(Usage, error) {
				mu.Lock()
				calls++
				mu.Unlock()
			}))
			firstRead := make(chan struct{})
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				buf := make([]byte, 7)
				once := false
				for {
					if _, err := r.Read(buf); err != nil {
						return
					}
					if !once {
						once = true
						close(firstRead)
					}
				}
			}()
			writerDone := make(chan struct{})
			go func() {
				defer close(writerDone)
				for {
					if _, err := pw.Write([]byte(event)); err != nil {
						return
					}
				}
			}()
			<-firstRead
			require.NoError(t, r.Close())
			<-readerDone
			<-writerDone
			mu.Lock()
			assert.Equal(t, 1, calls)
			mu.Unlock()
		}
	})
}

func sampleSSE(n int) []byte {
	var b bytes.Buffer
	i := strings.Index(anthropicStream, "event: content_block_delta")
	j := strings.Index(anthropicStream, "event: content_block_stop")
	b.WriteString(anthropicStream[:i])
	for range n {
		b.WriteString("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The quick brown fox jumps over the lazy dog. \"}}\n\n")
	}
	b.WriteString(anthropicStream[j:])
	return b.Bytes()
}

// sampleChatSSE builds an OpenAI chat stream of n content chunks.
func sampleChatSSE(n int) []byte {
	var b bytes.Buffer
	i := strings.Index(chatStream, "data: ")
	j := strings.Index(chatStream[i+1:], "data: ") + i + 1
	b.WriteString(chatStream[:j])
	for range n {
		b.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"The quick brown fox "},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n")
	}
	b.WriteString(chatStream[j:])
	return b.Bytes()
}

// sampleJSONBody builds an Anthropic message of about size bytes.
func sampleJSONBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[`)
	for b.Len() < size {
		b.WriteString(`{"type":"text","text":"The quick brown fox jumps over the lazy dog.\nIt said \"hi\" and left."},`)
	}
	b.WriteString(`{"type":"tool_use","id":"t","name":"f","input":{"a":[1,2,{"b":null}]}}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":3}}`)
	return b.Bytes()
}

func TestSamplesParse(t *testing.T) {
	got, _ := readThrough(t, sampleSSE(100), "text/event-stream", func() int { return 4096 })
	assert.Equal(t, anthropicStreamUsage, got)
	got, _ = readThrough(t, sampleChatSSE(100), "text/event-stream", func() int { return 4096 })
	assert.Equal(t, chatStreamUsage, got)
	got, _ = readThrough(t, sampleJSONBody(100<<10), "application/json", func() int { return 4096 })
	assert.Equal(t, Usage{InputTokens: 10, OutputTokens: 3, Reported: true, ResponseID: "msg_1", ResponseModel: "claude-sonnet-4-5",
		FinishReasons: []string{"end_turn"}, Complete: true}, got)
}

func benchmarkUsageReader(b *testing.B, body []byte, contentType string) {
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	buf := make([]byte, 32<<10)
	rd := bytes.NewReader(body)
	for b.Loop() {
		rd.Reset(body)
		var got Usage
		r := NewReader(io.NopCloser(rd), contentType, doneSink(func(u Usage, _ error) { got = u }))
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		if !got.Complete {
			b.Fatal("incomplete")
		}
	}
}

func BenchmarkUsageReaderSSE(b *testing.B) {
	b.Run("anthropic", func(b *testing.B) { benchmarkUsageReader(b, sampleSSE(1000), "text/event-stream") })
	b.Run("openai", func(b *testing.B) { benchmarkUsageReader(b, sampleChatSSE(1000), "text/event-stream") })
}

func BenchmarkUsageReaderJSON(b *testing.B) {
	benchmarkUsageReader(b, sampleJSONBody(100<<10), "application/json")
}

// doneSink is a Sink that only hands Done to f.
type doneSink func(Usage, error)

func (f doneSink) FirstByte()     {}
func (f doneSink) Output()        {}
func (f doneSink) Produced(int64) {}
func (f doneSink) Done(u Usage, err error) {
	if f != nil {
		f(u, err)
	}
}
