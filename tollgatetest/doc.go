// Package tollgatetest is a fake Anthropic Messages API and OpenAI Chat
// Completions API that enforces rate limits the way the real services
// describe them. It is meant for tests (ours and yours), demos and
// benchmarks of clients that must cope with 429s, retry-after, overloaded
// errors and broken streams, without a network or an API key.
//
// # Serving
//
// NewServer starts a Server on a random port of 127.0.0.1 and sets its URL;
// NewHandler returns one that listens nowhere, to mount on your own
// http.Server (a Server is an http.Handler). Point the official SDKs at it:
//
//	srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50})
//	defer srv.Close()
//	client := anthropic.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey("test"))
//	oai := openai.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("test"))
//
// Routes (anything else is 404 in the provider's error shape; wrong method
// 405):
//
//   - POST /v1/messages: Anthropic Messages. Requires model, max_tokens >= 1 and
//     at least one message. Non-streaming, it returns a "message" object with
//     one text block; with "stream": true it returns text/event-stream with
//     message_start (usage: input tokens, cache counts 0, output_tokens 1),
//     content_block_start, ping, one content_block_delta (text_delta) per
//     Config.StreamChunkTokens tokens, content_block_stop, message_delta
//     (stop_reason; usage with input tokens and the cumulative output tokens)
//     and message_stop, each flushed as it is written. stop_reason is
//     "max_tokens" when the reply is exactly max_tokens long (it was capped),
//     else "end_turn".
//   - POST /v1/messages/count_tokens: {"input_tokens": N}; it costs one request
//     and no tokens.
//   - POST /v1/chat/completions (also /chat/completions): OpenAI. Returns a
//     chat.completion with one choice and usage (prompt_tokens_details.cached_tokens
//     0); streaming, chat.completion.chunk data lines (role, content deltas,
//     an empty delta with finish_reason), then, if stream_options.include_usage,
//     a chunk with empty choices and usage, then "data: [DONE]". The limit is
//     max_completion_tokens, else max_tokens, else none; finish_reason is
//     "length" when the reply was capped, else "stop". n is ignored.
//
// Malformed JSON and missing required fields get 400 invalid_request_error.
// With Config.APIKey set, requests without the key (x-api-key or
// Authorization: Bearer for Anthropic, Authorization: Bearer for OpenAI) get
// 401. Every response carries a request
// id (request-id: req_… for Anthropic routes, x-request-id for OpenAI ones).
//
// # Tokenizer
//
// Token counts use CountTokens: a maximal run of letters and digits is one
// token, any other non-space character is one token, white space is free.
// The input tokens of a request are the sum of CountTokens over:
//
//   - Anthropic: system (a string, or its blocks); each message's content (a
//     string, or its blocks: text blocks' text, tool_use blocks' name and the
//     JSON text of their input, tool_result blocks' content, recursively,
//     thinking blocks' thinking; other blocks (images, documents) cost
//     nothing); each tool's name, description and the JSON text of its
//     input_schema.
//   - OpenAI: each message's content (a string, or the text of its parts);
//     each tool call's function name and arguments; each tool's function
//     name, description and the JSON text of its parameters.
//
// Roles, model names and message framing cost nothing. The reply to a request
// is GeneratedText(n), n words of lorem ipsum, which is exactly n tokens; n is
// Config.OutputTokens (default DefaultOutputTokens) or what
// Config.OutputTokensFunc returns, capped at max_tokens. Prompt caching is not
// simulated: cache counts are always 0.
//
// # Limits
//
// RequestsPerMinute, InputTokensPerMinute, OutputTokensPerMinute and
// TokensPerMinute (input + output combined) are each, when positive, a token
// bucket of capacity equal to the limit that starts full and refills
// continuously at limit/60 per second (60 RPM admits exactly one more request
// per second once drained). A server has one set of buckets, shared by all
// models and all routes (unlike the real services, which pool per model
// family); count_tokens draws on the request bucket only.
//
// A request is admitted only if every limited bucket covers its cost: 1
// request, its input tokens, its output need (see below), and input + output
// need for the combined bucket. Then the cost is taken from all of them at
// once. Otherwise nothing is taken and the answer is 429 with retry-after =
// the whole seconds (rounded up, at least 1) until every short bucket will
// cover the cost, and body
//
//	{"type":"error","error":{"type":"rate_limit_error","message":"…"},"request_id":"req_…"}
//
// (OpenAI: {"error":{"message":"…","type":"requests" or "tokens","param":null,
// "code":"rate_limit_exceeded"}}, type "requests" when the request bucket is
// the first short one). A request whose cost exceeds a bucket's capacity can
// never be admitted: its 429 has no retry-after and x-should-retry: false.
//
// Output accounting (Config.OutputAccounting) follows either reading of the
// Anthropic docs:
//
//   - ReserveMaxTokens (default; older docs): max_tokens must be available
//     and is taken at admission; when the response ends, max_tokens minus the
//     tokens actually sent is given back.
//   - CountAsProduced (newer docs): admission needs at least one output token
//     available and reserves nothing; each token is taken when sent, so a
//     bucket may go negative and later requests wait out the debt.
//
// Server.Consume drains the buckets as another client of the same account
// would, and Server.Limits reads them exactly.
//
// # Headers
//
// Every Messages, count_tokens and chat completion response, 200, 429 and
// injected error alike, carries the rate-limit headers of the limits that are
// set, describing the buckets right after the admission decision (or, for
// other responses, when they were written):
//
//   - Anthropic: anthropic-ratelimit-requests-{limit,remaining,reset},
//     anthropic-ratelimit-input-tokens-*, anthropic-ratelimit-output-tokens-*
//     and anthropic-ratelimit-tokens-* (the most restrictive, i.e. fewest
//     remaining, of the input, output and combined buckets). remaining is the
//     whole number left, rounded down to a multiple of 1,000 for the token
//     headers unless Config.ExactRemaining; reset is when the bucket will be
//     full again, RFC 3339 in UTC with whole seconds (rounded up).
//   - OpenAI: x-ratelimit-{limit,remaining,reset}-requests and -tokens (the
//     combined bucket if TokensPerMinute is set, else the most restrictive of
//     input and output); remaining is exact; reset is the time until the
//     bucket is full, as a Go duration to the millisecond ("1s", "6m0s",
//     "1.5s", "20ms").
//
// # Time
//
// Config.Now drives the buckets, reset headers and Stats timeline (Clock is a
// ready-made manual clock). Config.Latency, StreamEventDelay and
// TimePerOutputToken, and Fault.Delay and BodyDelay, are real waits; every wait ends early
// when the client goes away or Close is called, and the handler then returns
// (a reservation is settled to the tokens actually sent).
//
// # Faults
//
// Server.Inject queues a Fault for the next n requests; Config.FaultFunc can
// choose one per request. Faults simulate overload (529 and other statuses,
// with the provider's error body), retry headers, the spend cap, errors in
// the middle of a stream (after as many text deltas as a test wants, none
// included), dropped connections and truncated bodies, slow headers and
// slow bodies, and any extra or malformed header (Fault.Header); see Fault.
//
// # Stats
//
// Server.Stats returns a copy of the counters: requests, 2xx, limiter 429s,
// faults by kind, responses by status, tokens served, in-flight and peak
// concurrency, and a per-second timeline for per-minute accounting
// (Stats.Window, Stats.Since, Server.ResetStats).
package tollgatetest
