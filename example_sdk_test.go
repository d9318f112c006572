package tollgate_test

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The official Anthropic SDK through tollgate, against tollgatetest's fake
// API: the first attempt draws a 429, the second a 529, the third succeeds.
// The SDK's own retries are off, so tollgate makes every retry and the SDK
// sees only the final answer. (The short waits keep the example fast; leave
// WithBackoff out to get the SDKs' 500 ms / 8 s.)
func Example_anthropicSDK() {
	srv := tollgatetest.NewServer(tollgatetest.Config{
		RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000,
		OutputTokens: 5,
	})
	defer srv.Close()
	srv.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "1"})
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "1"})

	base := &http.Transport{}
	defer base.CloseIdleConnections()
	rt := tollgate.New(base, tollgate.WithBackoff(time.Millisecond, 2*time.Millisecond))
	client := anthropic.NewClient(
		anthropicoption.WithBaseURL(srv.URL),
		anthropicoption.WithAPIKey("test"),
		anthropicoption.WithHTTPClient(&http.Client{Transport: rt}),
		anthropicoption.WithMaxRetries(0), // tollgate owns the retry loop
	)

	msg, err := client.Messages.New(context.Background(), anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello, Claude"))},
	})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Printf("%q\n", msg.Content[0].Text)
	fmt.Printf("stop: %s, usage: %d input, %d output tokens\n", msg.StopReason, msg.Usage.InputTokens, msg.Usage.OutputTokens)

	st := srv.Stats()
	fmt.Println("server saw", st.Requests, "requests:", st.Status)
	ks := rt.Snapshot().Keys[0]
	fmt.Printf("tollgate: %s, tier %s, %d rate limited, %d overloaded\n",
		ks.Key, ks.Budget.Tier, ks.Counters.RateLimited, ks.Counters.Overloaded)
	// Output:
	// "lorem ipsum dolor sit amet"
	// stop: end_turn, usage: 3 input, 5 output tokens
	// server saw 3 requests: map[200:1 429:1 529:1]
	// tollgate: anthropic/claude-sonnet-5, tier Tier 1, 1 rate limited, 1 overloaded
}

// A stream through tollgate: an overloaded answer is retried before any byte
// reaches the SDK, and tollgate reads the stream's usage as the SDK consumes
// it. Its usage record is handed over when the stream ends.
func Example_anthropicSDKStreaming() {
	srv := tollgatetest.NewServer(tollgatetest.Config{OutputTokens: 7, StreamChunkTokens: 3})
	defer srv.Close()
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "1"})

	records := make(chan tollgate.UsageRecord, 1)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	rt := tollgate.New(base,
		tollgate.WithBackoff(time.Millisecond, 2*time.Millisecond),
		tollgate.WithUsageRecorder(func(_ context.Context, r tollgate.UsageRecord) { records <- r }),
	)
	client := anthropic.NewClient(
		anthropicoption.WithBaseURL(srv.URL),
		anthropicoption.WithAPIKey("test"),
		anthropicoption.WithHTTPClient(&http.Client{Transport: rt}),
		anthropicoption.WithMaxRetries(0), // tollgate owns the retry loop
	)

	stream := client.Messages.NewStreaming(context.Background(), anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Tell me a story"))},
	})
	var acc anthropic.Message
	for stream.Next() {
		ev := stream.Current()
		if err := acc.Accumulate(ev); err != nil {
			fmt.Println("error:", err)
		}
		if ev.Type == "content_block_delta" {
			fmt.Printf("delta %q\n", ev.Delta.Text)
		}
	}
	if err := stream.Err(); err != nil {
		fmt.Println("error:", err)
	}
	stream.Close() // ends tollgate's call

	fmt.Printf("stop: %s, usage: %d input, %d output tokens\n", acc.StopReason, acc.Usage.InputTokens, acc.Usage.OutputTokens)
	r := <-records
	fmt.Printf("tollgate's record: stream %t, status %d, %d attempts, %d input, %d output tokens\n",
		r.Stream, r.Status, r.Attempts, r.InputTokens, r.OutputTokens)
	fmt.Println("server saw", srv.Stats().Requests, "requests")
	// Output:
	// delta "lorem ipsum dolor"
	// delta " sit amet consectetur"
	// delta " adipiscing"
	// stop: end_turn, usage: 4 input, 7 output tokens
	// tollgate's record: stream true, status 200, 2 attempts, 4 input, 7 output tokens
	// server saw 2 requests
}

// The official OpenAI SDK through tollgate: a chat completion that draws a
// 429 and a 503 first, then a stream whose usage arrives in its last chunk
// (StreamOptions.IncludeUsage). tollgate learns OpenAI's limits (requests and
// combined tokens per minute) from the x-ratelimit-* headers.
func Example_openaiSDK() {
	srv := tollgatetest.NewServer(tollgatetest.Config{
		RequestsPerMinute: 500, TokensPerMinute: 200_000,
		OutputTokens: 4,
	})
	defer srv.Close()
	srv.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "1"})
	srv.Inject(1, tollgatetest.Fault{Status: http.StatusServiceUnavailable, RetryAfterMS: "1"})

	base := &http.Transport{}
	defer base.CloseIdleConnections()
	rt := tollgate.New(base, tollgate.WithBackoff(time.Millisecond, 2*time.Millisecond))
	client := openai.NewClient(
		openaioption.WithBaseURL(srv.URL+"/v1"),
		openaioption.WithAPIKey("test"),
		openaioption.WithHTTPClient(&http.Client{Transport: rt}),
		openaioption.WithMaxRetries(0), // tollgate owns the retry loop
	)
	params := openai.ChatCompletionNewParams{
		Model:               openai.ChatModelGPT4oMini,
		MaxCompletionTokens: openai.Int(64),
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello, GPT")},
	}

	cc, err := client.Chat.Completions.New(context.Background(), params)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Printf("%q finish: %s, usage: %d prompt, %d completion tokens\n",
		cc.Choices[0].Message.Content, cc.Choices[0].FinishReason, cc.Usage.PromptTokens, cc.Usage.CompletionTokens)

	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(context.Background(), params)
	text := ""
	for stream.Next() {
		chunk := stream.Current()
		for _, c := range chunk.Choices {
			text += c.Delta.Content
		}
		if chunk.JSON.Usage.Valid() {
			fmt.Printf("stream %q, usage: %d prompt, %d completion tokens\n", text, chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens)
		}
	}
	if err := stream.Err(); err != nil {
		fmt.Println("error:", err)
	}
	stream.Close()

	st := srv.Stats()
	fmt.Println("server saw", st.Requests, "requests:", st.Status)
	ks := rt.Snapshot().Keys[0]
	fmt.Printf("tollgate: %s, limits %d requests and %d tokens per minute, %d rate limited, %d server errors\n",
		ks.Key, ks.Budget.Limits.RequestsPerMinute, ks.Budget.Limits.TokensPerMinute,
		ks.Counters.RateLimited, ks.Counters.ServerErrors)
	// Output:
	// "lorem ipsum dolor sit" finish: stop, usage: 3 prompt, 4 completion tokens
	// stream "lorem ipsum dolor sit", usage: 3 prompt, 4 completion tokens
	// server saw 4 requests: map[200:2 429:1 503:1]
	// tollgate: openai/gpt-4o-mini, limits 500 requests and 200000 tokens per minute, 1 rate limited, 1 server errors
}
