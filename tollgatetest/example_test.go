package tollgatetest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Start a fake API limited to one request per minute and call it with the
// official Anthropic SDK: the first call succeeds, the second gets a 429
// with retry-after.
func Example() {
	srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 1, OutputTokens: 5})
	defer srv.Close()

	client := anthropic.NewClient(
		option.WithBaseURL(srv.URL),
		option.WithAPIKey("test"),
		option.WithMaxRetries(0),
	)
	params := anthropic.MessageNewParams{
		Model:     "claude-sonnet-5",
		MaxTokens: 1024,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello, Claude"))},
	}

	msg, err := client.Messages.New(context.Background(), params)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Printf("%q %s in=%d out=%d\n", msg.Content[0].Text, msg.StopReason, msg.Usage.InputTokens, msg.Usage.OutputTokens)

	_, err = client.Messages.New(context.Background(), params)
	var apiErr *anthropic.Error
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Type(), "retry-after:", apiErr.Response.Header.Get("retry-after"))
	}

	st := srv.Stats()
	fmt.Println("ok:", st.OK, "rate limited:", st.RateLimited)
	// Output:
	// "lorem ipsum dolor sit amet" end_turn in=3 out=5
	// 429 rate_limit_error retry-after: 60
	// ok: 1 rate limited: 1
}

// Inject an overloaded error; the SDK retries it (honouring retry-after-ms)
// and the second attempt succeeds.
func ExampleServer_Inject() {
	srv := tollgatetest.NewServer(tollgatetest.Config{})
	defer srv.Close()
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "10"})

	client := anthropic.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey("test"), option.WithMaxRetries(2))
	_, err := client.Messages.New(context.Background(), anthropic.MessageNewParams{
		Model:     "claude-sonnet-5",
		MaxTokens: 100,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hi"))},
	})
	st := srv.Stats()
	fmt.Println("error:", err, "requests:", st.Requests, "faults:", st.Faults, "statuses:", st.Status)
	// Output:
	// error: <nil> requests: 2 faults: map[status_529:1] statuses: map[200:1 529:1]
}

// Cache a long system prompt: the first call writes it, the second reads
// it, and only the uncached tokens count against the input limit.
func Example_promptCaching() {
	srv := tollgatetest.NewServer(tollgatetest.Config{InputTokensPerMinute: 30_000, OutputTokens: 5,
		OutputAccounting: tollgatetest.CountAsProduced, RoundRemaining: tollgatetest.RoundNearest})
	defer srv.Close()

	client := anthropic.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey("test"), option.WithMaxRetries(0))
	params := anthropic.MessageNewParams{
		Model:     "claude-sonnet-5",
		MaxTokens: 8192,
		System: []anthropic.TextBlockParam{{
			Text:         strings.Repeat("You are a careful coding agent. ", 400), // 2,800 tokens
			CacheControl: anthropic.NewCacheControlEphemeralParam(),
		}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Fix the failing test."))},
	}
	for range 2 {
		msg, err := client.Messages.New(context.Background(), params)
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		u := msg.Usage
		fmt.Printf("input %d, cache write %d, cache read %d\n", u.InputTokens, u.CacheCreationInputTokens, u.CacheReadInputTokens)
	}
	st := srv.Stats()
	fmt.Println("counted against ITPM:", st.InputTokens, "of", st.PromptTokens, "prompt tokens")
	// Output:
	// input 5, cache write 2800, cache read 0
	// input 5, cache write 0, cache read 2800
	// counted against ITPM: 2810 of 5610 prompt tokens
}
