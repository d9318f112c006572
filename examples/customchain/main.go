// Command customchain builds a tollgate chain by hand from the exported
// middlewares — Retry, Budget and Observe, without Trace and Breaker — over a
// base transport of its own: a small RoundTripper that logs each attempt's
// method, URL path and status (never headers: they carry the API key).
//
// The State starts with the account's limits (WithLimits, so the first calls
// need not go one at a time while tollgate learns them from headers), caps
// attempts in flight at 3 (WithMaxConcurrency) and prints an alert when the
// output tokens used over the last minute cross 80% of the limit
// (WithUtilizationAlert). Twelve concurrent calls go to tollgatetest, a
// rate-limited fake Anthropic API on 127.0.0.1, started in this process; one
// attempt is answered 529 and retried. No API key is needed and nothing
// leaves the machine.
//
//	go run ./examples/customchain
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "examples/customchain:", err)
		os.Exit(1)
	}
}

// tier1 are Anthropic's Tier 1 limits for Sonnet.
var tier1 = tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}

func run(ctx context.Context) error {
	srv := tollgatetest.NewServer(tollgatetest.Config{
		RequestsPerMinute:     tier1.RequestsPerMinute,
		InputTokensPerMinute:  tier1.InputTokensPerMinute,
		OutputTokensPerMinute: tier1.OutputTokensPerMinute,
		OutputTokens:          600,                    // every reply is 600 tokens…
		Latency:               150 * time.Millisecond, // …and takes a while
	})
	defer srv.Close()
	srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "50"})

	start := time.Now()
	state := tollgate.NewState(
		tollgate.WithLimits(tier1),
		tollgate.WithMaxConcurrency(3),
		tollgate.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		tollgate.WithUtilizationAlert(0.8, func(a tollgate.UtilizationAlert) {
			dir := "above"
			if !a.Above {
				dir = "back below"
			}
			fmt.Printf("%6s  ALERT %s %s %s 80%%: %d of %d in the last minute (%.0f%%)\n",
				since(start), a.Key, a.Dimension, dir, a.Used, a.Limit, 100*a.Utilization)
		}),
	)
	base := &logTransport{next: &http.Transport{}, start: start}
	defer base.next.CloseIdleConnections()
	client := &http.Client{Transport: tollgate.Chain(base,
		tollgate.Retry(state),   // once per call: retries 429/529/5xx as the server asks
		tollgate.Budget(state),  // per attempt: admission against the limits and the concurrency cap
		tollgate.Observe(state), // per attempt: headers and usage into the State
	)}

	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Go(func() {
			if err := call(ctx, client, srv.URL, i); err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}

	ks := state.Snapshot().Keys[0]
	out := ks.Budget.Dimensions[tollgate.OutputTokens]
	fmt.Printf("\n12 calls in %s; the server saw %d requests, at most %d at once (cap 3), statuses %v\n",
		since(start), srv.Stats().Requests, srv.Stats().PeakConcurrency, srv.Stats().Status)
	fmt.Printf("%s: tier %s, output tokens limit %d/min (from %s), used %d in the last minute, bucket holds %.0f\n",
		ks.Key, ks.Budget.Tier, out.Limit, out.Source, out.Used, out.Level)
	return nil
}

// call sends one Messages request over plain HTTP and reads the reply to the
// end, which settles its reservation with the budget.
func call(ctx context.Context, client *http.Client, url string, i int) error {
	body := fmt.Sprintf(`{"model":"claude-sonnet-5","max_tokens":800,"messages":[{"role":"user","content":"Question number %d, please."}]}`, i)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/messages", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("x-api-key", "fake-key")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// logTransport is the caller's own base transport: it logs every attempt
// tollgate sends. It prints the method, URL path and status only — never
// headers, which carry the API key.
type logTransport struct {
	next     *http.Transport
	start    time.Time
	inFlight atomic.Int32
}

func (t *logTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	n := t.inFlight.Add(1)
	fmt.Printf("%6s  → %s %s (in flight: %d)\n", since(t.start), req.Method, req.URL.Path, n)
	resp, err := t.next.RoundTrip(req)
	t.inFlight.Add(-1)
	if err != nil {
		fmt.Printf("%6s  ← %s %s: %v\n", since(t.start), req.Method, req.URL.Path, err)
		return nil, err
	}
	fmt.Printf("%6s  ← %s %s: %d\n", since(t.start), req.Method, req.URL.Path, resp.StatusCode)
	return resp, nil
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }
