// Command anthropic shows tollgate under the official Anthropic Go SDK: one
// Messages.New call and one Messages.NewStreaming call through
// tollgate.New(nil), then what tollgate learned about the account's limits.
//
// By default it starts tollgatetest, tollgate's rate-limited fake API, on
// 127.0.0.1 in this process, so it needs no API key and nothing leaves the
// machine; the fake answers the first call with a 429 and then a 529, so
// tollgate's retries show. To call the real API instead, say so explicitly:
//
//	go run ./examples/anthropic
//	ANTHROPIC_API_KEY=sk-ant-… go run ./examples/anthropic -upstream https://api.anthropic.com
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func main() {
	upstream := flag.String("upstream", "", "base URL of the real API, e.g. https://api.anthropic.com (uses ANTHROPIC_API_KEY); empty: an in-process fake")
	model := flag.String("model", string(anthropic.ModelClaudeSonnet5), "model to call")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, *upstream, *model); err != nil {
		fmt.Fprintln(os.Stderr, "examples/anthropic:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, upstream, model string) error {
	baseURL, apiKey := upstream, os.Getenv("ANTHROPIC_API_KEY")
	var srv *tollgatetest.Server
	if upstream == "" {
		// Anthropic's Tier 1 limits for Sonnet. The first request draws a
		// 429 that asks for a 200 ms wait, its retry a 529 (overloaded).
		srv = tollgatetest.NewServer(tollgatetest.Config{
			RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000,
			OutputTokens: 12,
		})
		defer srv.Close()
		srv.Inject(1, tollgatetest.Fault{Status: http.StatusTooManyRequests, RetryAfterMS: "200"})
		srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "5"})
		baseURL, apiKey = srv.URL, "fake-key" // never the real key: it is not needed here
		fmt.Println("fake Anthropic API at", srv.URL, "(tollgatetest; pass -upstream https://api.anthropic.com for the real one)")
	} else if apiKey == "" {
		return errors.New("-upstream needs ANTHROPIC_API_KEY in the environment")
	}

	// One Transport per API key: every agent sharing the key should share it.
	var calls callLog
	rt := tollgate.New(nil,
		tollgate.WithUsageRecorder(calls.record),
		tollgate.WithBreakerStateChange(func(ev tollgate.BreakerEvent) {
			if ev.To == tollgate.BreakerOpen {
				fmt.Printf("  [tollgate] breaker %s opens for %s (%s)\n", ev.Key, ev.Until.Sub(ev.At).Round(time.Millisecond), ev.Reason)
			} else {
				fmt.Printf("  [tollgate] breaker %s %s\n", ev.Key, ev.To)
			}
		}))
	defer rt.CloseIdleConnections()

	client := anthropic.NewClient(
		option.WithBaseURL(baseURL),
		option.WithAPIKey(apiKey),
		option.WithHTTPClient(&http.Client{Transport: rt}),
		// The SDK's own retry loop sits outside tollgate: each SDK retry would
		// start a whole new tollgate call (with its own attempts), multiplying
		// requests, and the SDK sleeps for any retry-after without a cap.
		// With it off, tollgate decides every retry.
		option.WithMaxRetries(0),
	)
	params := anthropic.MessageNewParams{
		Model:     anthropic.Model(model),
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello in one short sentence."))},
	}

	fmt.Println("\nMessages.New:")
	msg, err := client.Messages.New(ctx, params)
	if err != nil {
		return fmt.Errorf("Messages.New: %w", err)
	}
	for _, block := range msg.Content {
		if block.Type == "text" {
			fmt.Printf("  %q\n", block.Text)
		}
	}
	fmt.Printf("  stop %s, usage: %d input, %d output tokens\n", msg.StopReason, msg.Usage.InputTokens, msg.Usage.OutputTokens)
	calls.print()

	fmt.Println("\nMessages.NewStreaming:")
	stream := client.Messages.NewStreaming(ctx, params)
	var acc anthropic.Message
	fmt.Print("  ")
	for stream.Next() {
		ev := stream.Current()
		if err := acc.Accumulate(ev); err != nil {
			stream.Close()
			return fmt.Errorf("stream: %w", err)
		}
		if ev.Type == "content_block_delta" && ev.Delta.Type == "text_delta" {
			fmt.Print(ev.Delta.Text) // as it arrives
		}
	}
	fmt.Println()
	if err := stream.Err(); err != nil {
		stream.Close()
		return fmt.Errorf("stream: %w", err)
	}
	if err := stream.Close(); err != nil { // ends tollgate's call: usage is settled, the span ends
		return fmt.Errorf("stream: %w", err)
	}
	fmt.Printf("  stop %s, usage: %d input, %d output tokens\n", acc.StopReason, acc.Usage.InputTokens, acc.Usage.OutputTokens)
	calls.print()

	printSnapshot(rt.Snapshot())
	if srv != nil {
		st := srv.Stats()
		fmt.Printf("\nthe fake API saw %d requests: statuses %v\n", st.Requests, st.Status)
	}
	return nil
}

// callLog keeps tollgate's usage records until they are printed. The
// recorder runs when a call's body ends, on whichever goroutine read or
// closed it (for a stream, the SDK reads ahead), so printing is left for
// after the call.
type callLog struct {
	mu   sync.Mutex
	recs []tollgate.UsageRecord
}

func (l *callLog) record(_ context.Context, r tollgate.UsageRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r)
}

func (l *callLog) print() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		w := r.Waits
		fmt.Printf("  [tollgate] %s %s: status %d after %d attempt(s); waited %s for the budget, %s for the breaker, %s in backoff\n",
			r.Operation, r.Model, r.Status, r.Attempts,
			w.Budget.Round(time.Millisecond), w.Pause.Round(time.Millisecond), w.Backoff.Round(time.Millisecond))
	}
	l.recs = nil
}

// printSnapshot prints what tollgate learned per (provider, model family).
func printSnapshot(snap tollgate.Snapshot) {
	fmt.Println("\nwhat tollgate learned:")
	for _, ks := range snap.Keys {
		b := ks.Budget
		fmt.Printf("  %s: tier %s, breaker %s\n", ks.Key, b.Tier, ks.Breaker.State)
		for d, r := range ks.Headers.Limits {
			if b.Dimensions[d].Limit == 0 {
				continue // not a limit tollgate paces (Anthropic's tokens-* repeats the tightest one)
			}
			reset := "-"
			if !r.Reset.IsZero() {
				reset = r.Reset.Sub(ks.Headers.Observed).Round(time.Second).String()
			}
			fmt.Printf("    %-13s limit %8d/min, remaining %8d, full again in %s\n", tollgate.Dimension(d), r.Limit, r.Remaining, reset)
		}
		c := ks.Counters
		fmt.Printf("    answers: %d attempts, %d rate limited (429), %d overloaded (529)\n", c.Attempts, c.RateLimited, c.Overloaded)
	}
}
