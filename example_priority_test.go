package tollgate_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// A call's priority and tenant ride in the context given to the official
// SDK, which hands it to the transport. Here one attempt at a time may be
// in flight (WithMaxConcurrency(1)): while a stream holds that place, a
// Background call queues, then an Interactive call of the tenant "acme".
// When the stream ends, the Interactive call goes first.
func ExampleContextWithPriority() {
	srv := tollgatetest.NewServer(tollgatetest.Config{
		RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000,
		OutputTokens: 5,
	})
	defer srv.Close()

	// The base transport notes the order the calls reach the server in.
	var mu sync.Mutex
	var sent []string
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	noting := exampleRoundTripper(func(req *http.Request) (*http.Response, error) {
		mu.Lock()
		sent = append(sent, req.Header.Get("X-Call"))
		mu.Unlock()
		return base.RoundTrip(req)
	})
	rt := tollgate.New(noting, tollgate.WithMaxConcurrency(1),
		tollgate.WithTenantWeights(map[string]float64{"acme": 2}))
	client := anthropic.NewClient(
		anthropicoption.WithBaseURL(srv.URL),
		anthropicoption.WithAPIKey("test"),
		anthropicoption.WithHTTPClient(&http.Client{Transport: rt}),
		anthropicoption.WithMaxRetries(0), // tollgate owns the retry loop
	)
	params := anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet4_5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello, Claude"))},
	}

	// A stream, not read yet, holds the only place in flight.
	stream := client.Messages.NewStreaming(context.Background(), params, anthropicoption.WithHeader("X-Call", "stream"))

	done := make(chan error, 2)
	go func() {
		ctx := tollgate.ContextWithPriority(context.Background(), tollgate.Background)
		_, err := client.Messages.New(ctx, params, anthropicoption.WithHeader("X-Call", "background"))
		done <- err
	}()
	exampleWaitQueued(rt, 1)
	go func() {
		ctx := tollgate.ContextWithPriority(context.Background(), tollgate.Interactive)
		ctx = tollgate.ContextWithTenant(ctx, "acme")
		_, err := client.Messages.New(ctx, params, anthropicoption.WithHeader("X-Call", "interactive"))
		done <- err
	}()
	exampleWaitQueued(rt, 2)

	b := rt.Snapshot().Keys[0].Budget
	fmt.Printf("waiting: %d interactive, %d normal, %d background\n",
		b.WaitingByPriority.Interactive, b.WaitingByPriority.Normal, b.WaitingByPriority.Background)
	for _, t := range b.Tenants {
		fmt.Printf("tenant %q (weight %g): %d waiting, %d in flight\n", t.Name, t.Weight, t.Waiting, t.InFlight)
	}

	for stream.Next() { // read to its end: the place goes to the head of the queue
	}
	stream.Close()
	fmt.Println(<-done, <-done)
	fmt.Println("sent:", sent)
	// Output:
	// waiting: 1 interactive, 0 normal, 1 background
	// tenant "" (weight 1): 1 waiting, 1 in flight
	// tenant "acme" (weight 2): 1 waiting, 0 in flight
	// <nil> <nil>
	// sent: [stream interactive background]
}

type exampleRoundTripper func(*http.Request) (*http.Response, error)

func (f exampleRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// exampleWaitQueued returns once n attempts wait in rt's queue.
func exampleWaitQueued(rt *tollgate.Transport, n int) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ks := rt.Snapshot().Keys; len(ks) > 0 && ks[0].Budget.Waiting == n {
			return
		}
	}
}
