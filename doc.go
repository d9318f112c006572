// Package tollgate is a client-side guard for rate-limited LLM APIs: an
// http.RoundTripper that paces requests to the account's limits, retries the
// way the API asks, pauses when a limit is exhausted, and traces every call
// with its token usage.
//
// Wrap a transport once and give it to any http.Client, including the one the
// official Anthropic SDK takes:
//
//	client := anthropic.NewClient(
//		option.WithHTTPClient(&http.Client{Transport: tollgate.New(nil)}),
//		option.WithMaxRetries(0), // tollgate owns the retry loop
//	)
//
// # The chain
//
// New composes five layers around one shared State, outer to inner:
//
//	Trace    once per call    span and metrics for the logical call
//	Retry    once per call    go-retryablehttp loop: which responses retry, how long to wait
//	Breaker  per attempt      pause while the server would refuse
//	Budget   per attempt      admission against requests, input and output tokens per minute
//	Observe  per attempt      rate-limit headers into the State; usage from JSON or SSE as it streams
//
// Each layer is also a Middleware of its own, so a custom chain can be built
// with Chain and NewState. Admission and the pause gate run inside the retry
// loop because every attempt costs a request and input tokens; headers are
// observed innermost so the State is current before any outer layer decides.
//
// # One budget for many processes
//
// The budget's bucket levels and the breaker's pauses live in a Store: by
// default one in memory per Transport. Give every process of a fleet the
// same shared store (package redisstore keeps it in Redis) with WithStore,
// and the fleet paces as one client against its account's limits; a pause
// one process takes holds every process before its next admission. When
// the store fails, each process falls back to its own share of the limits
// (WithStoreFallback) until the store answers again.
//
// # Contracts
//
// Every layer keeps net/http's RoundTripper rules: the caller's request is
// never modified, abandoned bodies are drained (a bounded amount) and closed,
// and the caller's idle connections are never closed. Response bodies are
// never buffered whole; usage is parsed as the bytes pass to the caller. Every
// wait honours the request context. Response statuses stay responses: when
// retries run out, or the server asks for a wait longer than WithMaxWait, the
// caller gets the server's own response.
package tollgate
