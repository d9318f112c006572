package tollgatetest_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestCountTokens(t *testing.T) {
	for text, want := range map[string]int{
		"":                     0,
		"  \n\t":               0,
		"hello":                1,
		"hello world":          2,
		"Hello, world!":        4,
		"input_schema":         3,
		`{"type":"object"}`:    9,
		"héllo wörld 42":       3,
		"a1b2 c3":              2,
		"日本語 テキスト":             2,
		"x = y + 1;":           6,
		"ends with space ":     3,
		"multi\nline\ntext":    3,
		"--":                   2,
		"tab\tseparated words": 3,
	} {
		assert.Equal(t, want, tollgatetest.CountTokens(text), "%q", text)
	}
}

func TestGeneratedTextHasExactlyNTokens(t *testing.T) {
	for n := range 200 {
		assert.Equal(t, n, tollgatetest.CountTokens(tollgatetest.GeneratedText(n)), n)
	}
	assert.Equal(t, "lorem ipsum dolor", tollgatetest.GeneratedText(3))
}

func TestAnthropicSDKMessage(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 10})
	client := anthropicClient(t, srv)
	params := userParams("What is a quaternion?", 100)
	params.System = []anthropic.TextBlockParam{{Text: "Be brief."}}
	params.Tools = []anthropic.ToolUnionParam{{OfTool: &anthropic.ToolParam{
		Name:        "get_weather",
		Description: anthropic.String("Weather now"),
		InputSchema: anthropic.ToolInputSchemaParam{Properties: map[string]any{"city": map[string]any{"type": "string"}}},
	}}}

	m, err := client.Messages.New(context.Background(), params)
	require.NoError(t, err)

	wantIn := tollgatetest.CountTokens("What is a quaternion?") + tollgatetest.CountTokens("Be brief.") +
		tollgatetest.CountTokens("get_weather") + tollgatetest.CountTokens("Weather now")
	// The schema adds its JSON text; check it is counted at all and agrees with count_tokens.
	assert.Greater(t, int(m.Usage.InputTokens), wantIn)
	count, err := client.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model: params.Model, Messages: params.Messages,
		System: anthropic.MessageCountTokensParamsSystemUnion{OfTextBlockArray: params.System},
		Tools:  []anthropic.MessageCountTokensToolUnionParam{{OfTool: params.Tools[0].OfTool}},
	})
	require.NoError(t, err)
	assert.Equal(t, m.Usage.InputTokens, count.InputTokens)

	assert.True(t, strings.HasPrefix(m.ID, "msg_"), m.ID)
	assert.Equal(t, "message", string(m.Type))
	assert.Equal(t, "assistant", string(m.Role))
	assert.Equal(t, "claude-sonnet-5", string(m.Model))
	require.Len(t, m.Content, 1)
	assert.Equal(t, "text", m.Content[0].Type)
	assert.Equal(t, tollgatetest.GeneratedText(10), m.Content[0].Text)
	assert.Equal(t, anthropic.StopReasonEndTurn, m.StopReason)
	assert.Empty(t, m.StopSequence)
	assert.Equal(t, int64(10), m.Usage.OutputTokens)
	assert.Zero(t, m.Usage.CacheCreationInputTokens)
	assert.Zero(t, m.Usage.CacheReadInputTokens)

	st := srv.Stats()
	assert.Equal(t, 2, st.Requests)
	assert.Equal(t, 2, st.OK)
	assert.Equal(t, int(m.Usage.InputTokens), st.InputTokens, "count_tokens is not served input")
	assert.Equal(t, 10, st.OutputTokens)
	assert.Equal(t, map[int]int{200: 2}, st.Status)
	assert.Zero(t, st.InFlight)
}

func TestAnthropicSDKMaxTokensStop(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 100})
	client := anthropicClient(t, srv)
	m, err := client.Messages.New(context.Background(), userParams("hi", 5))
	require.NoError(t, err)
	assert.Equal(t, anthropic.StopReasonMaxTokens, m.StopReason)
	assert.Equal(t, int64(5), m.Usage.OutputTokens)
	assert.Equal(t, tollgatetest.GeneratedText(5), m.Content[0].Text)
}

func TestOutputTokensFunc(t *testing.T) {
	var got []int
	srv := newServer(t, tollgatetest.Config{OutputTokensFunc: func(model string, maxTokens int) int {
		got = append(got, maxTokens)
		if model == "small" {
			return 3
		}
		return 1000
	}})
	client := anthropicClient(t, srv)
	p := userParams("hi", 50)
	p.Model = "small"
	m, err := client.Messages.New(context.Background(), p)
	require.NoError(t, err)
	assert.Equal(t, int64(3), m.Usage.OutputTokens)
	assert.Equal(t, anthropic.StopReasonEndTurn, m.StopReason)
	m, err = client.Messages.New(context.Background(), userParams("hi", 50))
	require.NoError(t, err)
	assert.Equal(t, int64(50), m.Usage.OutputTokens)
	assert.Equal(t, anthropic.StopReasonMaxTokens, m.StopReason)
	assert.Equal(t, []int{50, 50}, got)
}

func TestAnthropicSDKStream(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 23, StreamChunkTokens: 5})
	client := anthropicClient(t, srv)
	stream := client.Messages.NewStreaming(context.Background(), userParams("Tell me a story", 100))
	defer stream.Close()
	var acc anthropic.Message
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		require.NoError(t, acc.Accumulate(ev))
	}
	require.NoError(t, stream.Err())

	assert.Equal(t, []string{"message_start", "content_block_start",
		"content_block_delta", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_delta",
		"content_block_stop", "message_delta", "message_stop"}, types)
	require.Len(t, acc.Content, 1)
	assert.Equal(t, tollgatetest.GeneratedText(23), acc.Content[0].Text)
	assert.Equal(t, anthropic.StopReasonEndTurn, acc.StopReason)

	st := srv.Stats()
	assert.Equal(t, int64(st.InputTokens), acc.Usage.InputTokens)
	assert.Equal(t, int64(st.OutputTokens), acc.Usage.OutputTokens)
	assert.Equal(t, 4, st.InputTokens) // "Tell me a story"
	assert.Equal(t, 23, st.OutputTokens)
	assert.Equal(t, 1, st.OK)
}

func TestAnthropicRawStreamFormat(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 3, StreamChunkTokens: 2, RequestsPerMinute: 10})
	resp, body := raw(t, srv).post("/v1/messages", strings.Replace(msg("one two", 10), `"max_tokens"`, `"stream":true,"max_tokens"`, 1))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "text/event-stream; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Equal(t, "10", resp.Header.Get("anthropic-ratelimit-requests-limit"))
	assert.True(t, strings.HasPrefix(resp.Header.Get("request-id"), "req_"))

	events := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	require.Len(t, events, 8, body)
	var names []string
	for _, ev := range events {
		lines := strings.Split(ev, "\n")
		require.Len(t, lines, 2, ev)
		name, ok := strings.CutPrefix(lines[0], "event: ")
		require.True(t, ok, ev)
		data, ok := strings.CutPrefix(lines[1], "data: ")
		require.True(t, ok, ev)
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(data), &m), data)
		assert.Equal(t, name, m["type"])
		names = append(names, name)
	}
	assert.Equal(t, []string{"message_start", "content_block_start", "ping", "content_block_delta",
		"content_block_delta", "content_block_stop", "message_delta", "message_stop"}, names)
	assert.Contains(t, events[0], `"usage":{"input_tokens":2,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,`+
		`"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1}`)
	assert.Contains(t, events[0], `"stop_reason":null,"stop_sequence":null`)
	assert.Contains(t, events[3], `"delta":{"type":"text_delta","text":"lorem ipsum"}`)
	assert.Contains(t, events[4], `"delta":{"type":"text_delta","text":" dolor"}`)
	assert.Contains(t, events[6], `"delta":{"stop_reason":"end_turn","stop_sequence":null}`)
	assert.Contains(t, events[6], `"output_tokens":3`)
}

func TestAnthropicRawJSONShape(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 2})
	resp, body := raw(t, srv).post("/v1/messages", msg("hi there", 10))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &m))
	assert.Regexp(t, `^msg_[0-9A-Za-z]{24}$`, m["id"])
	delete(m, "id")
	assert.Equal(t, map[string]any{
		"type": "message", "role": "assistant", "model": "claude-sonnet-5",
		"content":     []any{map[string]any{"type": "text", "text": "lorem ipsum"}},
		"stop_reason": "end_turn", "stop_sequence": nil,
		"usage": map[string]any{"input_tokens": 2.0, "output_tokens": 2.0,
			"cache_creation_input_tokens": 0.0, "cache_read_input_tokens": 0.0,
			"cache_creation": map[string]any{"ephemeral_5m_input_tokens": 0.0, "ephemeral_1h_input_tokens": 0.0}},
	}, m)
}

func TestOpenAISDKChat(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 7})
	client := openAIClient(t, srv)
	c, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:     "gpt-4o",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello there")},
		MaxTokens: openai.Int(100),
	})
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(c.ID, "chatcmpl-"))
	assert.Equal(t, "gpt-4o", c.Model)
	require.Len(t, c.Choices, 1)
	assert.Equal(t, tollgatetest.GeneratedText(7), c.Choices[0].Message.Content)
	assert.Equal(t, "stop", c.Choices[0].FinishReason)
	assert.Equal(t, int64(5), c.Usage.PromptTokens) // Be brief. (3) + Hello there (2)
	assert.Equal(t, int64(7), c.Usage.CompletionTokens)
	assert.Equal(t, int64(12), c.Usage.TotalTokens)
	assert.True(t, c.Usage.PromptTokensDetails.JSON.CachedTokens.Valid())

	c, err = client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:               "gpt-4o",
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")},
		MaxCompletionTokens: openai.Int(3),
	})
	require.NoError(t, err)
	assert.Equal(t, "length", c.Choices[0].FinishReason)
	assert.Equal(t, int64(3), c.Usage.CompletionTokens)

	st := srv.Stats()
	assert.Equal(t, 6, st.InputTokens)
	assert.Equal(t, 10, st.OutputTokens)
}

func TestOpenAISDKStream(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 9, StreamChunkTokens: 4})
	client := openAIClient(t, srv)
	stream := client.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model:         "gpt-4o",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello there")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	defer stream.Close()
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		chunks++
		acc.AddChunk(stream.Current())
	}
	require.NoError(t, stream.Err())
	assert.Equal(t, 1+3+1+1, chunks) // role, 3 content chunks, finish, usage
	require.Len(t, acc.Choices, 1)
	assert.Equal(t, tollgatetest.GeneratedText(9), acc.Choices[0].Message.Content)
	assert.Equal(t, "stop", acc.Choices[0].FinishReason)
	st := srv.Stats()
	assert.Equal(t, int64(st.InputTokens), acc.Usage.PromptTokens)
	assert.Equal(t, int64(st.OutputTokens), acc.Usage.CompletionTokens)
	assert.Equal(t, 9, st.OutputTokens)
}

func TestOpenAIRawStreamWithoutUsage(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 2, StreamChunkTokens: 1})
	_, body := raw(t, srv).post("/chat/completions", chat("hi", `,"stream":true`))
	events := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	require.Len(t, events, 5, body) // role, 2 content, finish, [DONE]
	assert.Equal(t, "data: [DONE]", events[4])
	assert.NotContains(t, body, "usage")
	assert.Contains(t, events[0], `"delta":{"role":"assistant","content":""}`)
	assert.Contains(t, events[3], `"delta":{},"logprobs":null,"finish_reason":"stop"`)

	_, body = raw(t, srv).post("/v1/chat/completions", chat("hi", `,"stream":true,"stream_options":{"include_usage":true}`))
	events = strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	require.Len(t, events, 6, body)
	assert.Contains(t, events[0], `"usage":null`)
	assert.Contains(t, events[4], `"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0`)
}

// count_tokens has a pool of its own: it draws on CountTokensPerMinute's
// bucket only, shows that bucket in the requests-* headers, and neither
// draws on nor shows the Messages buckets.
func TestCountTokensEndpointHasItsOwnPool(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1, InputTokensPerMinute: 5,
		OutputTokensPerMinute: 1000, CountTokensPerMinute: 2})
	rc := raw(t, srv)
	count := `{"model":"m","messages":[{"role":"user","content":"` + words(50) + `"}]}`
	resp, body := rc.post("/v1/messages/count_tokens", count)
	require.Equal(t, 200, resp.StatusCode, body)
	assert.JSONEq(t, `{"input_tokens":50}`, body, "50 tokens counted, although the input limit is 5")
	assert.Equal(t, "2", resp.Header.Get("anthropic-ratelimit-requests-limit"))
	assert.Equal(t, "1", resp.Header.Get("anthropic-ratelimit-requests-remaining"))
	assert.Equal(t, t0.Add(30*time.Second).Format(time.RFC3339), resp.Header.Get("anthropic-ratelimit-requests-reset"))
	for _, h := range []string{"input-tokens", "output-tokens", "tokens"} {
		assert.Empty(t, resp.Header.Get("anthropic-ratelimit-"+h+"-remaining"), h)
	}
	lim := srv.Limits()
	assert.Equal(t, 1, lim.Requests.Remaining, "the Messages request bucket is untouched")
	assert.Equal(t, 5, lim.InputTokens.Remaining)
	assert.Equal(t, 1, lim.CountTokens.Remaining)

	resp, _ = rc.post("/v1/messages/count_tokens", count)
	require.Equal(t, 200, resp.StatusCode)
	resp, body = rc.post("/v1/messages/count_tokens", count)
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "30", resp.Header.Get("retry-after"), "2 a minute: one every 30 s")
	assert.Equal(t, "0", resp.Header.Get("anthropic-ratelimit-requests-remaining"))
	assert.Contains(t, body, "token counting requests")

	// The Messages pool is still whole: its one request goes through.
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("anthropic-ratelimit-requests-limit"))
	assert.Equal(t, "0", resp.Header.Get("anthropic-ratelimit-requests-remaining"))

	st := srv.Stats()
	assert.Equal(t, 1, st.InputTokens, "count_tokens serves no input")
	assert.Equal(t, 1, st.RateLimited)

	// Without CountTokensPerMinute, count_tokens is unlimited and sends no
	// rate-limit headers at all, even when the Messages pool is empty.
	srv2 := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1})
	srv2.Consume(5, 0, 0)
	resp, _ = raw(t, srv2).post("/v1/messages/count_tokens", count)
	require.Equal(t, 200, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("anthropic-ratelimit-requests-limit"))
	assert.True(t, strings.HasPrefix(resp.Header.Get("request-id"), "req_"))
}
