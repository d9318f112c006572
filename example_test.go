package tollgate_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"

	"github.com/tollgate-go/tollgate"
)

// A server that is overloaded for its first two requests, then answers.
func flakyServer() (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("anthropic-ratelimit-requests-limit", "50")
		w.Header().Set("anthropic-ratelimit-requests-remaining", "42")
		if n.Add(1) <= 2 {
			w.Header().Set("retry-after-ms", "5")
			w.WriteHeader(529)
			io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
			return
		}
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"id":"msg_1","type":"message","model":"claude-sonnet-5","stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`)
	}))
	return srv, &n
}

func newRequest(url string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}`))
	req.Header.Set("anthropic-version", "2023-06-01")
	return req
}

// New wraps a transport in the whole chain; any http.Client can use it.
func ExampleNew() {
	srv, attempts := flakyServer()
	defer srv.Close()

	rt := tollgate.New(nil, tollgate.WithMaxAttempts(4))
	client := &http.Client{Transport: rt}
	resp, err := client.Do(newRequest(srv.URL))
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	fmt.Println("status:", resp.StatusCode, "attempts:", attempts.Load())
	ks := rt.Snapshot().Keys[0]
	fmt.Println("pool:", ks.Key, "requests remaining:", ks.Headers.Reading(tollgate.Requests).Remaining)
	fmt.Println("overloaded answers:", ks.Counters.Overloaded)
	// Output:
	// status: 200 attempts: 3
	// pool: anthropic/claude-sonnet-5 requests remaining: 42
	// overloaded answers: 2
}

// The layers compose by hand: here only Retry and Observe, over a base
// transport of the caller's choosing.
func ExampleChain() {
	srv, attempts := flakyServer()
	defer srv.Close()

	state := tollgate.NewState(tollgate.WithMaxAttempts(2))
	rt := tollgate.Chain(http.DefaultTransport, tollgate.Retry(state), tollgate.Observe(state))
	resp, err := (&http.Client{Transport: rt}).Do(newRequest(srv.URL))
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Two attempts were allowed and both were overloaded: the caller gets the
	// server's own last response.
	fmt.Println("status:", resp.StatusCode, "attempts:", attempts.Load())
	// Output:
	// status: 529 attempts: 2
}

// Snapshot shows what the Transport learned from the headers of either
// provider's dialect, per pool of limits.
func ExampleTransport_Snapshot() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-ratelimit-limit-tokens", "30000")
		w.Header().Set("x-ratelimit-remaining-tokens", "29000")
		w.Header().Set("x-ratelimit-reset-tokens", "6m0s")
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2}}`)
	}))
	defer srv.Close()

	rt := tollgate.New(nil)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}`))
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	ks := rt.Snapshot().Keys[0]
	tok := ks.Headers.Reading(tollgate.Tokens)
	fmt.Println(ks.Key, ks.Headers.Provider, tok.Limit, tok.Remaining)
	fmt.Println("tokens per minute paced by:", ks.Budget.Limits.TokensPerMinute, ks.Budget.Dimensions[tollgate.Tokens].Source)
	// Output:
	// openai/gpt-4o openai 30000 29000
	// tokens per minute paced by: 30000 headers
}
