package tollgate_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tollgate-go/tollgate"
)

// When the server asks one caller to wait, the breaker makes every caller of
// the same model family wait. With WithFailFast they get an *OpenError at
// once instead, saying when requests may go again and why.
func ExampleWithFailFast() {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("retry-after", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}`)
	}))
	defer srv.Close()

	changes := make(chan tollgate.BreakerEvent, 8)
	rt := tollgate.New(nil,
		tollgate.WithFailFast(),
		tollgate.WithMaxWait(10*time.Second), // shorter than the retry-after: no retry
		// Called on a goroutine of tollgate's, in order; it must not block
		// for long.
		tollgate.WithBreakerStateChange(func(ev tollgate.BreakerEvent) { changes <- ev }))
	client := &http.Client{Transport: rt}
	send := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}`))
		req.Header.Set("anthropic-version", "2023-06-01")
		return client.Do(req)
	}

	resp, err := send()
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Println("first call:", resp.StatusCode)

	_, err = send()
	var open *tollgate.OpenError
	if errors.As(err, &open) {
		fmt.Printf("second call: open for another %s (%s), errors.Is(err, ErrOpen): %t\n",
			time.Until(open.Until).Round(time.Second), open.Reason, errors.Is(err, tollgate.ErrOpen))
	}
	fmt.Println("requests the server saw:", requests.Load())
	b := rt.Snapshot().Keys[0].Breaker
	fmt.Println("snapshot:", b.State, b.Reason)
	ev := <-changes
	fmt.Printf("breaker %s: %s → %s for %s (%s)\n",
		ev.Key, ev.From, ev.To, ev.Until.Sub(ev.At).Round(time.Second), ev.Reason)
	// Output:
	// first call: 429
	// second call: open for another 30s (retry-after), errors.Is(err, ErrOpen): true
	// requests the server saw: 1
	// snapshot: open retry-after
	// breaker anthropic/claude-sonnet-5: closed → open for 30s (retry-after)
}
