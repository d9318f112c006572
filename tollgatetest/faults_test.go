package tollgatetest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestFaultStatusBodies(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{RequestsPerMinute: 100})
	rc := raw(t, srv)
	for status, want := range map[int]string{
		529: "overloaded_error", 500: "api_error", 502: "api_error", 503: "api_error", 504: "timeout_error",
		408: "timeout_error", 409: "conflict_error", 400: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error",
	} {
		srv.Inject(1, tollgatetest.Fault{Status: status})
		resp, body := rc.post("/v1/messages", msg("hi", 10))
		require.Equal(t, status, resp.StatusCode)
		var e struct {
			Type      string
			Error     struct{ Type, Message string }
			RequestID string `json:"request_id"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &e), body)
		assert.Equal(t, "error", e.Type)
		assert.Equal(t, want, e.Error.Type, status)
		assert.NotEmpty(t, e.Error.Message)
		assert.Equal(t, resp.Header.Get("request-id"), e.RequestID)
		assert.Equal(t, "100", resp.Header.Get("anthropic-ratelimit-requests-remaining"), "faults consume no budget")
		assert.Empty(t, resp.Header.Get("retry-after"))
	}
	// OpenAI shape.
	srv.Inject(1, tollgatetest.Fault{Status: 503, Message: "busy", ErrorType: "custom"})
	resp, body := rc.post("/v1/chat/completions", chat("hi", ""))
	require.Equal(t, 503, resp.StatusCode)
	assert.JSONEq(t, `{"error":{"message":"busy","type":"custom","param":null,"code":null}}`, body)
	assert.NotEmpty(t, resp.Header.Get("x-request-id"))

	for status, want := range map[int]string{500: "server_error", 529: "server_error", 400: "invalid_request_error",
		429: "requests", 504: "server_error", 408: "timeout", 403: "permission_error"} {
		srv.Inject(1, tollgatetest.Fault{Status: status})
		resp, body := rc.post("/v1/chat/completions", chat("hi", ""))
		require.Equal(t, status, resp.StatusCode)
		var e struct {
			Error struct{ Type, Message string }
		}
		require.NoError(t, json.Unmarshal([]byte(body), &e), body)
		assert.Equal(t, want, e.Error.Type, status)
		assert.NotEmpty(t, e.Error.Message)
	}

	st := srv.Stats()
	assert.Equal(t, 18, st.TotalFaults())
	assert.Equal(t, 2, st.Faults["status_503"])
	assert.Equal(t, 2, st.Faults["status_529"])
	assert.Zero(t, st.OK)
	assert.Zero(t, st.RateLimited, "injected 429s are not the limiter's")
	assert.Equal(t, 100, srv.Limits().Requests.Remaining)
}

func TestFaultRetryHeadersAndSDKError(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{})
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfter: "2", RetryAfterMS: "1500", ShouldRetry: "false"})
	client := anthropicClient(t, srv)
	_, err := client.Messages.New(context.Background(), userParams("hi", 10))
	var apiErr *anthropic.Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 529, apiErr.StatusCode)
	assert.Equal(t, "overloaded_error", string(apiErr.Type()))
	assert.Equal(t, "Overloaded", apiErr.Message)
	h := apiErr.Response.Header
	assert.Equal(t, "2", h.Get("retry-after"))
	assert.Equal(t, "1500", h.Get("retry-after-ms"))
	assert.Equal(t, "false", h.Get("x-should-retry"))

	// Headers on a success variant.
	srv.Inject(1, tollgatetest.Fault{RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"})
	resp, _ := raw(t, srv).post("/v1/messages", msg("hi", 10))
	assert.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "Wed, 21 Oct 2015 07:28:00 GMT", resp.Header.Get("retry-after"))
	assert.Equal(t, 1, srv.Stats().Faults["none"])
}

func TestSDKRetriesInjectedFaults(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{})
	srv.Inject(2, tollgatetest.Fault{Status: 529, RetryAfterMS: "1"})
	client := anthropicClient(t, srv)
	m, err := client.Messages.New(context.Background(), userParams("hi", 10), aoptionRetries(2))
	require.NoError(t, err)
	assert.NotEmpty(t, m.Content[0].Text)
	st := srv.Stats()
	assert.Equal(t, 3, st.Requests)
	assert.Equal(t, map[int]int{529: 2, 200: 1}, st.Status)
	assert.Zero(t, srv.PendingFaults())
}

func TestSpendLimit(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{RequestsPerMinute: 5})
	srv.Inject(1, tollgatetest.Fault{SpendLimit: true})
	client := anthropicClient(t, srv)
	_, err := client.Messages.New(context.Background(), userParams("hi", 10))
	var apiErr *anthropic.Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 429, apiErr.StatusCode)
	assert.Equal(t, "rate_limit_error", string(apiErr.Type()))
	assert.Equal(t, "enforced_spend_limit_reached", string(apiErr.ErrorCode()))
	assert.Empty(t, apiErr.Response.Header.Get("retry-after"))
	assert.Equal(t, "5", apiErr.Response.Header.Get("anthropic-ratelimit-requests-remaining"))

	srv.Inject(1, tollgatetest.Fault{SpendLimit: true})
	resp, body := raw(t, srv).post("/v1/chat/completions", chat("hi", ""))
	require.Equal(t, 429, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("retry-after"))
	assert.Contains(t, body, `"type":"insufficient_quota"`)
	assert.Equal(t, 2, srv.Stats().Faults["spend_limit"])
	assert.Zero(t, srv.Stats().RateLimited)
}

func TestMidStreamError(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 40, StreamChunkTokens: 10, OutputTokensPerMinute: 1000})
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	client := anthropicClient(t, srv)
	stream := client.Messages.NewStreaming(context.Background(), userParams("hi", 100))
	defer stream.Close()
	var acc anthropic.Message
	for stream.Next() {
		require.NoError(t, acc.Accumulate(stream.Current()))
	}
	var apiErr *anthropic.Error
	require.True(t, errors.As(stream.Err(), &apiErr), "%v", stream.Err())
	assert.Equal(t, "overloaded_error", string(apiErr.Type()))
	assert.Equal(t, 200, apiErr.StatusCode)
	assert.Equal(t, tollgatetest.GeneratedText(20), acc.Content[0].Text)
	st := srv.Stats()
	assert.Equal(t, 20, st.OutputTokens)
	assert.Equal(t, 1, st.OK)
	assert.Equal(t, 1, st.Faults["mid_stream_error"])
	assert.Equal(t, 980, srv.Limits().OutputTokens.Remaining, "reservation settled to what was sent")

	// Raw shape of the error event.
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	_, body := raw(t, srv).post("/v1/messages", strings.Replace(msg("hi", 100), `"max_tokens"`, `"stream":true,"max_tokens"`, 1))
	assert.True(t, strings.HasSuffix(body, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"), body)

	// Non-streaming requests are served normally.
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	_, err := client.Messages.New(context.Background(), userParams("hi", 100))
	require.NoError(t, err)
}

func TestMidStreamErrorOpenAI(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 8, StreamChunkTokens: 2})
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	client := openAIClient(t, srv)
	stream := client.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	defer stream.Close()
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	require.Error(t, stream.Err())
	assert.Contains(t, stream.Err().Error(), "server_error")
	assert.Equal(t, tollgatetest.GeneratedText(4), acc.Choices[0].Message.Content)
	assert.Equal(t, 4, srv.Stats().OutputTokens)
}

func TestDropConnection(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{RequestsPerMinute: 10})
	srv.Inject(1, tollgatetest.Fault{DropConnection: true})
	client := anthropicClient(t, srv)
	_, err := client.Messages.New(context.Background(), userParams("hi", 10))
	require.Error(t, err)
	var apiErr *anthropic.Error
	assert.False(t, errors.As(err, &apiErr), "a connection error, not an API error: %v", err)
	st := srv.Stats()
	assert.Equal(t, 1, st.Faults["drop_connection"])
	assert.Empty(t, st.Status)
	assert.Equal(t, 10, srv.Limits().Requests.Remaining)
	// The server still works.
	_, err = client.Messages.New(context.Background(), userParams("hi", 10))
	require.NoError(t, err)
}

func TestDropMidBody(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 50})
	srv.Inject(2, tollgatetest.Fault{DropMidBody: true})
	client := anthropicClient(t, srv)
	_, err := client.Messages.New(context.Background(), userParams("hi", 100))
	require.Error(t, err)

	resp, err := httpClient(t).Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(chat("hi", "")))
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)
	_, err = io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	resp.Body.Close()

	st := srv.Stats()
	assert.Equal(t, 2, st.Faults["drop_mid_body"])
	assert.Equal(t, 2, st.OK)
	assert.Equal(t, 100, st.OutputTokens, "a JSON reply cut in its body was generated in full")
}

func TestFaultDelayHonoursClientContext(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{})
	srv.Inject(1, tollgatetest.Fault{Delay: time.Minute})
	client := anthropicClient(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := client.Messages.New(ctx, userParams("hi", 10))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
	require.Eventually(t, func() bool { return srv.Stats().InFlight == 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, srv.Stats().Faults["delay"])

	srv.Inject(1, tollgatetest.Fault{Delay: 20 * time.Millisecond})
	start = time.Now()
	_, err = client.Messages.New(context.Background(), userParams("hi", 10))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
}

func TestInjectFIFOAndFaultFunc(t *testing.T) {
	var mu sync.Mutex
	var seen []int
	srv := newServer(t, tollgatetest.Config{FaultFunc: func(r *http.Request, n int) *tollgatetest.Fault {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, n)
		if strings.Contains(string(b), "please fail") {
			return &tollgatetest.Fault{Status: 500}
		}
		return nil
	}})
	srv.Inject(2, tollgatetest.Fault{Status: 503})
	srv.Inject(1, tollgatetest.Fault{Status: 409})
	assert.Equal(t, 3, srv.PendingFaults())
	rc := raw(t, srv)
	var got []int
	for _, p := range []string{"a", "b", "c", "d", "please fail", "e"} {
		resp, _ := rc.post("/v1/messages", msg(p, 10))
		got = append(got, resp.StatusCode)
	}
	assert.Equal(t, []int{503, 503, 409, 200, 500, 200}, got)
	assert.Equal(t, []int{4, 5, 6}, seen, "FaultFunc only when the queue is empty, with arrival numbers")
}

func TestSuccessVariantFaultIsRateLimited(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1})
	rc := raw(t, srv)
	resp, _ := rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 200, resp.StatusCode)
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode)
	st := srv.Stats()
	assert.Equal(t, 1, st.RateLimited)
	assert.Equal(t, 1, st.Faults["mid_stream_error"])
}

func TestFaultKind(t *testing.T) {
	for want, f := range map[string]tollgatetest.Fault{
		"drop_connection":  {DropConnection: true, Status: 500},
		"spend_limit":      {SpendLimit: true, Status: 500},
		"status_529":       {Status: 529, MidStreamError: true},
		"drop_mid_body":    {DropMidBody: true, Delay: time.Second},
		"mid_stream_error": {MidStreamError: true},
		"delay":            {Delay: time.Second, Status: 200},
		"none":             {RetryAfter: "1"},
	} {
		assert.Equal(t, want, f.Kind())
	}
}

// streamBody is a Messages body asking for a stream.
func streamBody(prompt string, maxTokens int) string {
	return strings.Replace(msg(prompt, maxTokens), `"max_tokens"`, `"stream":true,"max_tokens"`, 1)
}

func TestMidStreamDeltas(t *testing.T) {
	// 40 tokens in deltas of 10: four deltas.
	srv := newServer(t, tollgatetest.Config{OutputTokens: 40, StreamChunkTokens: 10})
	rc := raw(t, srv)
	for _, c := range []struct{ deltas, want int }{{-1, 0}, {0, 2}, {1, 1}, {3, 3}, {4, 4}, {9, 4}} {
		srv.Inject(1, tollgatetest.Fault{MidStreamError: true, MidStreamDeltas: c.deltas})
		before := srv.Stats().OutputTokens
		_, body := rc.post("/v1/messages", streamBody("hi", 100))
		assert.Equal(t, c.want, strings.Count(body, "event: content_block_delta"), "MidStreamDeltas %d: %s", c.deltas, body)
		assert.True(t, strings.HasPrefix(body, "event: message_start"), body)
		assert.True(t, strings.HasSuffix(body, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"), body)
		assert.NotContains(t, body, "message_stop")
		assert.Equal(t, 10*c.want, srv.Stats().OutputTokens-before, "MidStreamDeltas %d", c.deltas)

		// OpenAI: content chunks (the role chunk carries no text).
		srv.Inject(1, tollgatetest.Fault{MidStreamError: true, MidStreamDeltas: c.deltas})
		_, body = rc.post("/v1/chat/completions", chat("hi", `,"stream":true`))
		assert.Equal(t, c.want, strings.Count(body, `"delta":{"content":"`), "OpenAI, MidStreamDeltas %d: %s", c.deltas, body)
		assert.Contains(t, body, `"role":"assistant"`)
		assert.Contains(t, body, `"type":"server_error"`)
		assert.NotContains(t, body, "[DONE]")
	}

	// DropMidBody honours it too: no text at all, then the connection ends.
	srv.Inject(1, tollgatetest.Fault{DropMidBody: true, MidStreamDeltas: -1})
	resp, err := httpClient(t).Post(srv.URL+"/v1/messages", "application/json", strings.NewReader(streamBody("hi", 100)))
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Contains(t, string(b), "event: ping")
	assert.NotContains(t, string(b), "content_block_delta")

	// Without a stream failure it changes nothing.
	srv.Inject(1, tollgatetest.Fault{MidStreamDeltas: -1})
	_, body := rc.post("/v1/messages", streamBody("hi", 100))
	assert.Equal(t, 4, strings.Count(body, "event: content_block_delta"))
	assert.Contains(t, body, "event: message_stop")
}

func TestFaultBodyDelay(t *testing.T) {
	const delay = 150 * time.Millisecond
	srv := newServer(t, tollgatetest.Config{OutputTokens: 8, StreamChunkTokens: 4})
	c := httpClient(t)
	post := func(path, body string) (*http.Response, time.Time) {
		t.Helper()
		start := time.Now()
		resp, err := c.Post(srv.URL+path, "application/json", strings.NewReader(body))
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		return resp, start
	}

	// JSON: the headers and the first half come at once, the rest after the
	// delay; the request is in flight until then.
	srv.Inject(1, tollgatetest.Fault{BodyDelay: delay})
	resp, start := post("/v1/messages", msg("hi", 100))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, 1, srv.Stats().InFlight, "the rest of the body is still to come")
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), delay)
	var m struct{ Type string }
	require.NoError(t, json.Unmarshal(b, &m), "the whole document arrives: %s", b)
	assert.Equal(t, "message", m.Type)

	// An error body is slowed as well.
	srv.Inject(1, tollgatetest.Fault{Status: 529, BodyDelay: delay})
	resp, start = post("/v1/chat/completions", chat("hi", ""))
	require.Equal(t, 529, resp.StatusCode)
	b, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), delay)
	assert.Contains(t, string(b), `"type":"server_error"`)

	// A stream waits before each event after the first: message_start,
	// content_block_start, ping, two deltas, content_block_stop,
	// message_delta, message_stop make seven waits.
	const eventDelay = 30 * time.Millisecond
	srv.Inject(1, tollgatetest.Fault{BodyDelay: eventDelay})
	resp, start = post("/v1/messages", streamBody("hi", 100))
	b, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 7*eventDelay)
	assert.Equal(t, 8, strings.Count(string(b), "event: "), string(b))

	// A client that goes away ends the wait.
	srv.Inject(1, tollgatetest.Fault{BodyDelay: time.Hour})
	resp, _ = post("/v1/messages", msg("hi", 100))
	require.Equal(t, 200, resp.StatusCode)
	resp.Body.Close()
	require.Eventually(t, func() bool { return srv.Stats().InFlight == 0 }, 5*time.Second, 5*time.Millisecond)

	assert.Equal(t, 3, srv.Stats().Faults["body_delay"])
	assert.Equal(t, "body_delay", tollgatetest.Fault{BodyDelay: time.Second, RetryAfter: "1"}.Kind())
	assert.Equal(t, "delay", tollgatetest.Fault{BodyDelay: time.Second, Delay: time.Second}.Kind())
}

func TestFaultHeader(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 2})
	rc := raw(t, srv)
	f := tollgatetest.Fault{Header: http.Header{
		"anthropic-ratelimit-requests-remaining": {"-5"}, // lower case: canonicalized
		"Anthropic-Ratelimit-Requests-Reset":     {"yesterday"},
		"X-Extra":                                {"a", "b"},
		"Request-Id":                             nil, // removed
		"Content-Type":                           {"text/plain"},
	}}
	srv.Inject(1, f)
	resp, body := rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, []string{"-5"}, resp.Header.Values("anthropic-ratelimit-requests-remaining"), "overrides the server's")
	assert.Equal(t, "yesterday", resp.Header.Get("anthropic-ratelimit-requests-reset"))
	assert.Equal(t, "2", resp.Header.Get("anthropic-ratelimit-requests-limit"), "the others stay")
	assert.Equal(t, []string{"a", "b"}, resp.Header.Values("x-extra"))
	assert.Empty(t, resp.Header.Values("request-id"))
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), "framing headers are the server's")
	assert.Contains(t, body, `"type":"message"`)

	// On a stream, a limiter 429 (whose retry-after it overrides) and an
	// injected error.
	srv.Inject(1, f)
	resp, body = rc.post("/v1/messages", streamBody("hi", 10))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "-5", resp.Header.Get("anthropic-ratelimit-requests-remaining"))
	assert.Equal(t, "text/event-stream; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, body, "event: message_stop")

	srv.Inject(1, tollgatetest.Fault{Header: http.Header{"Retry-After": {"abc"}}})
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode, "two requests a minute are spent")
	assert.Equal(t, "abc", resp.Header.Get("retry-after"))
	assert.Equal(t, 1, srv.Stats().RateLimited)

	srv.Inject(1, tollgatetest.Fault{Status: 529, Header: http.Header{"X-Ratelimit-Remaining-Requests": {"99999999999999999999999"}}})
	resp, _ = rc.post("/v1/chat/completions", chat("hi", ""))
	require.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, "99999999999999999999999", resp.Header.Get("x-ratelimit-remaining-requests"))
	assert.Equal(t, "2", resp.Header.Get("x-ratelimit-limit-requests"))

	assert.Equal(t, 3, srv.Stats().Faults["none"], "a fault that changes only headers")
}
