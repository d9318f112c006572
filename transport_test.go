package tollgate_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	ooption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// tier1 is a tier-1-like limit, scaled so that tests never wait for it.
var tier1 = tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30000, OutputTokensPerMinute: 8000}

func newFake(t *testing.T, cfg tollgatetest.Config) *tollgatetest.Server {
	t.Helper()
	srv := tollgatetest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// newTransport is tollgate.New with short backoffs, so that retries without
// a server-given wait take milliseconds.
func newTransport(t *testing.T, opts ...tollgate.Option) *tollgate.Transport {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	return tollgate.New(base, append([]tollgate.Option{tollgate.WithBackoff(time.Millisecond, 5*time.Millisecond)}, opts...)...)
}

func anthropicClient(srv *tollgatetest.Server, rt http.RoundTripper) anthropic.Client {
	return anthropic.NewClient(
		aoption.WithBaseURL(srv.URL),
		aoption.WithAPIKey("sk-ant-test"),
		aoption.WithHTTPClient(&http.Client{Transport: rt}),
		aoption.WithMaxRetries(0), // tollgate owns the retry loop
	)
}

var messageParams = anthropic.MessageNewParams{
	Model:     anthropic.ModelClaudeSonnet4_5,
	MaxTokens: 64,
	Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Write a haiku about rate limits."))},
}

// retryFaults injects a 429 and a 529, each asking for a short wait, in
// front of the next request.
func retryFaults(srv *tollgatetest.Server) {
	srv.Inject(1, tollgatetest.Fault{Status: 429, RetryAfterMS: "5"})
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "5"})
}

func TestAnthropicSDKMessagesNewThroughFaults(t *testing.T) {
	srv := newFake(t, tier1)
	retryFaults(srv)
	rt := newTransport(t)
	client := anthropicClient(srv, rt)

	msg, err := client.Messages.New(context.Background(), messageParams)
	require.NoError(t, err)
	assert.NotEmpty(t, msg.Content)
	stats := srv.Stats()
	assert.Equal(t, 3, stats.Requests, "one 429, one 529, one success")
	assert.Equal(t, int64(stats.InputTokens), msg.Usage.InputTokens)
	assert.Equal(t, int64(stats.OutputTokens), msg.Usage.OutputTokens)

	ks, ok := rt.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"})
	require.True(t, ok)
	assert.Equal(t, int64(50), ks.Headers.Reading(tollgate.Requests).Limit)
	assert.Equal(t, int64(1), ks.Counters.RateLimited)
	assert.Equal(t, int64(1), ks.Counters.Overloaded)
}

func TestAnthropicSDKStreamingThroughFaults(t *testing.T) {
	srv := newFake(t, tier1)
	retryFaults(srv)
	client := anthropicClient(srv, newTransport(t))

	stream := client.Messages.NewStreaming(context.Background(), messageParams)
	var msg anthropic.Message
	for stream.Next() {
		require.NoError(t, msg.Accumulate(stream.Current()))
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.NotEmpty(t, msg.Content)
	assert.NotEmpty(t, msg.Content[0].Text)
	stats := srv.Stats()
	assert.Equal(t, 3, stats.Requests)
	assert.Equal(t, int64(stats.OutputTokens), msg.Usage.OutputTokens)
}

func TestAnthropicSDKGetsItsErrorWhenRetriesRunOut(t *testing.T) {
	srv := newFake(t, tier1)
	srv.Inject(10, tollgatetest.Fault{Status: 429, RetryAfterMS: "2"})
	client := anthropicClient(srv, newTransport(t, tollgate.WithMaxAttempts(3)))

	_, err := client.Messages.New(context.Background(), messageParams)
	var apiErr *anthropic.Error
	require.True(t, errors.As(err, &apiErr), "want *anthropic.Error, got %T: %v", err, err)
	assert.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
	assert.Contains(t, apiErr.RawJSON(), "rate_limit_error", "the server's body reaches the SDK")
	assert.Equal(t, 3, srv.Stats().Requests)
}

func TestAnthropicSDKStreamSurfacesMidStreamError(t *testing.T) {
	srv := newFake(t, tier1)
	srv.Inject(1, tollgatetest.Fault{MidStreamError: true})
	client := anthropicClient(srv, newTransport(t))

	stream := client.Messages.NewStreaming(context.Background(), messageParams)
	for stream.Next() {
	}
	require.Error(t, stream.Err(), "an error event after a 200 reaches the caller")
	assert.Contains(t, stream.Err().Error(), "overloaded")
	stream.Close()
	assert.Equal(t, 1, srv.Stats().Requests, "a stream that started is never retried")
}

func openaiClient(srv *tollgatetest.Server, rt http.RoundTripper) openai.Client {
	return openai.NewClient(
		ooption.WithBaseURL(srv.URL+"/v1"),
		ooption.WithAPIKey("sk-test"),
		ooption.WithHTTPClient(&http.Client{Transport: rt}),
		ooption.WithMaxRetries(0),
	)
}

var chatParams = openai.ChatCompletionNewParams{
	Model:     "gpt-4o-mini",
	MaxTokens: openai.Int(64),
	Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Write a haiku about rate limits.")},
}

func TestOpenAISDKChatThroughFaults(t *testing.T) {
	srv := newFake(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 200000})
	retryFaults(srv)
	rt := newTransport(t)
	client := openaiClient(srv, rt)

	cc, err := client.Chat.Completions.New(context.Background(), chatParams)
	require.NoError(t, err)
	require.NotEmpty(t, cc.Choices)
	stats := srv.Stats()
	assert.Equal(t, 3, stats.Requests)
	assert.Equal(t, int64(stats.InputTokens), cc.Usage.PromptTokens)

	ks, ok := rt.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o-mini"})
	require.True(t, ok)
	assert.Equal(t, int64(200000), ks.Headers.Reading(tollgate.Tokens).Limit)
}

func TestOpenAISDKStreamingThroughFaults(t *testing.T) {
	srv := newFake(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 200000})
	retryFaults(srv)
	client := openaiClient(srv, newTransport(t))

	params := chatParams
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(context.Background(), params)
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	require.NoError(t, stream.Err())
	stream.Close()
	require.NotEmpty(t, acc.Choices)
	assert.NotEmpty(t, acc.Choices[0].Message.Content)
	stats := srv.Stats()
	assert.Equal(t, 3, stats.Requests)
	assert.Equal(t, int64(stats.OutputTokens), acc.Usage.CompletionTokens)
}

func TestOpenAISDKGetsItsErrorWhenRetriesRunOut(t *testing.T) {
	srv := newFake(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 200000})
	srv.Inject(10, tollgatetest.Fault{Status: 429, RetryAfterMS: "2"})
	client := openaiClient(srv, newTransport(t, tollgate.WithMaxAttempts(2)))

	_, err := client.Chat.Completions.New(context.Background(), chatParams)
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "want *openai.Error, got %T: %v", err, err)
	assert.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
	assert.Equal(t, 2, srv.Stats().Requests)
}

func TestAnthropicSDKLongRetryAfterGivesEveryCallerTheServers429(t *testing.T) {
	srv := newFake(t, tier1)
	srv.Inject(1, tollgatetest.Fault{Status: 429, RetryAfter: "3600"})
	client := anthropicClient(srv, newTransport(t))

	for i := range 3 {
		_, err := client.Messages.New(context.Background(), messageParams)
		var apiErr *anthropic.Error
		require.True(t, errors.As(err, &apiErr), "call %d: want *anthropic.Error, got %T: %v", i, err, err)
		assert.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode, "call %d", i)
		assert.Contains(t, apiErr.RawJSON(), "rate_limit_error", "call %d", i)
	}
	assert.Equal(t, 1, srv.Stats().Requests, "one hour is longer than any wait: only the first call reached the server")
}

func TestOpenAISDKSpendCapIsNotRetried(t *testing.T) {
	srv := newFake(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 200000})
	srv.Inject(5, tollgatetest.Fault{SpendLimit: true})
	client := openaiClient(srv, newTransport(t))

	_, err := client.Chat.Completions.New(context.Background(), chatParams)
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "want *openai.Error, got %T: %v", err, err)
	assert.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
	assert.Equal(t, "insufficient_quota", apiErr.Code)
	assert.Equal(t, 1, srv.Stats().Requests, "an exhausted quota is not retried")

	_, err = client.Chat.Completions.New(context.Background(), chatParams)
	assert.ErrorIs(t, err, tollgate.ErrOpen, "the breaker fails the next call fast")
	assert.Equal(t, 1, srv.Stats().Requests)
}
