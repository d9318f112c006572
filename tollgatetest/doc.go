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
//     at least one message; cache_control is checked (see Prompt caching).
//     Non-streaming, it returns a "message" object with one text block and
//     usage (input_tokens, cache_creation_input_tokens,
//     cache_read_input_tokens, cache_creation by TTL, output_tokens); with
//     "stream": true it returns text/event-stream with message_start (usage
//     as above, output_tokens 1), content_block_start, ping, one
//     content_block_delta (text_delta) per Config.StreamChunkTokens tokens,
//     content_block_stop, message_delta (stop_reason; usage with the input
//     and cache counts again and the cumulative output tokens) and
//     message_stop, each flushed as it is written. stop_reason is
//     "max_tokens" when the reply is exactly max_tokens long (it was capped),
//     else "end_turn".
//   - POST /v1/messages/count_tokens: {"input_tokens": N}, N the prompt's
//     tokens whatever is cached. It has a pool of its own (see Limits).
//   - POST /v1/chat/completions (also /chat/completions): OpenAI. Returns a
//     chat.completion with one choice and usage (prompt_tokens_details.cached_tokens
//     as the automatic cache says); streaming, chat.completion.chunk data lines (role, content deltas,
//     an empty delta with finish_reason), then, if stream_options.include_usage,
//     a chunk with empty choices and usage, then "data: [DONE]". The limit is
//     max_completion_tokens, else max_tokens, else none; finish_reason is
//     "length" when the reply was capped, else "stop". n is ignored.
//   - GET /v1/models and GET /v1/models/{id}: a short fixed list of models
//     (claude-opus-5-5, claude-sonnet-5, claude-haiku-5-5, …; gpt-4o, …), in
//     Anthropic's shape when the request carries anthropic-version or
//     x-api-key, else in OpenAI's; an unknown id is 404. Like the real endpoints, they are not
//     paced by the Messages limits: they draw on no bucket and carry no
//     rate-limit headers, so a test can show that a client leaves them
//     unpaced. Message Batches and Files are not served (404).
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
// Roles, model names, cache_control and message framing cost nothing. The
// reply to a request is GeneratedText(n), n words of lorem ipsum, which is
// exactly n tokens; n is the request's OutputTokensHeader if it has one, else
// Config.OutputTokens (default DefaultOutputTokens) or what
// Config.OutputTokensFunc returns, capped at max_tokens.
//
// # Prompt caching
//
// Caching is on unless Config.NoPromptCaching. It follows Anthropic's and
// OpenAI's docs as of 2026; entries are kept per server and per model name
// (the real caches are per organization or workspace, and model), on
// Config.Now's clock.
//
// Anthropic (Messages, JSON and streams alike). A prompt is a sequence of
// blocks in cache order: tools (one block each), system blocks (a string
// system is one text block), then every message's content blocks (a string
// content is one text block). cache_control {"type": "ephemeral"} with an
// optional "ttl" of "5m" (the default) or "1h" may sit on up to
// MaxCacheBreakpoints blocks; a top-level cache_control marks the last block
// (and counts among the four unless that block has its own). Otherwise the
// answer is 400 invalid_request_error: more than four breakpoints, a type
// other than "ephemeral", another ttl, a "1h" breakpoint after a "5m" one,
// cache_control on an empty text block or a thinking block. A breakpoint
// stands for the prefix from the first block up to and including its own;
// an entry's key is a hash of that whole prefix (every block's JSON but its
// cache_control, so moving a breakpoint keeps the prefix, and a string
// content equals the text block it stands for; roles and message boundaries
// included) and of the model. Then:
//
//   - Reads: each breakpoint tries the prefixes ending at its block and at
//     each of the CacheLookbackBlocks (20) blocks before it, longest first,
//     and takes the first live entry; the longest found over all breakpoints
//     is read (cache_read_input_tokens). Every entry found is refreshed: it
//     lives its TTL again from now.
//   - Writes: each breakpoint whose prefix has at least the model's minimum
//     (Config.MinCacheableTokens, by default DefaultMinCacheableTokens: 1,024
//     tokens, 2,048 for Haiku models) and no live entry gets a new one with
//     its TTL. The tokens from the end of the read prefix to the last
//     breakpoint written are cache_creation_input_tokens (cache_creation
//     splits them by the TTL of the breakpoint that closes each stretch).
//   - The rest, after the last point read or written, is input_tokens; the
//     three sum to the prompt's tokens (what count_tokens says).
//   - Reads and writes happen at admission, and an entry's lifetime runs
//     from there, but an entry is usable only once the response of a
//     request that wrote it has begun (after Config.Latency), and from then
//     on while that response is still being written. Until then a request
//     with the same prefix reads nothing and writes it too, as Anthropic's
//     docs say ("a cache entry only becomes available after the first
//     response begins"). A 429 reads and writes nothing; a request whose
//     client leaves before its response begins makes nothing usable.
//   - The input bucket (and the combined one) is charged input_tokens +
//     cache_creation_input_tokens, plus cache_read_input_tokens only for
//     the models whose reads count (Config.CacheReadsCountAsInput, by default
//     DefaultCacheReadsCountAsInput: Claude Haiku 3.5).
//
// OpenAI (chat completions). Caching is automatic: a prompt of at least
// OpenAICacheMinTokens (1,024) tokens is hashed at every OpenAICacheIncrement
// (128) tokens from 1,024 on (tools first, then the messages with their
// roles); cached_tokens is the longest of those prefixes seen before and
// still live, and every one of them is written or refreshed for
// OpenAICacheTTL (5 minutes), usable once the writer's response has begun
// as above. Cached tokens count against the limits like any other
// ("caching does not affect rate limits").
//
// The cache holds at most Config.CacheMaxEntries entries (default
// DefaultCacheMaxEntries, for both APIs together; an OpenAI prompt holds one
// per 128 tokens past 1,024); when it is full, the entry least recently
// written or read is dropped. Expired entries are dropped when next looked
// up. Server.CacheEntries counts the live, usable ones.
//
// # Limits
//
// RequestsPerMinute, InputTokensPerMinute, OutputTokensPerMinute and
// TokensPerMinute (input + output combined) are each, when positive, a token
// bucket of capacity equal to the limit that starts full and refills
// continuously at limit/60 per second (60 RPM admits exactly one more request
// per second once drained). A server has one set of buckets, shared by all
// models and by Messages and chat completions (unlike the real services,
// which pool per model family). CountTokensPerMinute is count_tokens' own
// pool, as Anthropic's token counting has a requests-per-minute limit of its
// own: count_tokens draws one request from it (nothing when it is not set)
// and nothing from the others, and a Messages request never draws on it.
// Model listing draws on nothing.
//
// A request is admitted only if every limited bucket covers its cost: 1
// request, its input tokens as the input limit counts them (see Prompt
// caching), its output need (see below), and input + output need for the
// combined bucket. Then the cost is taken from all of them at
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
// Anthropic docs on the Messages route:
//
//   - ReserveMaxTokens (default; older docs, and gateways that work this
//     way): max_tokens must be available and is taken at admission; when the
//     response ends, max_tokens minus the tokens actually generated is given
//     back.
//   - CountAsProduced (today's docs: "output tokens are counted as they are
//     produced; max_tokens does not factor in"): admission needs at least one
//     output token available whatever max_tokens says, and reserves nothing;
//     each token is taken when generated, streamed or not (a non-streaming
//     reply is generated chunk by chunk, TimePerOutputToken apart, before
//     it is sent), so a bucket may go negative and later requests wait out
//     the debt.
//
// Chat completions always reserve (max_tokens, or the reply's length when
// there is none) and settle, as OpenAI counts max_tokens when the request is
// made.
//
// Server.Consume drains the buckets as another client of the same account
// would, and Server.Limits reads them exactly.
//
// # Headers
//
// Every Messages and chat completion response, 200, 429 and injected error
// alike (and every error on other paths but the model listing), carries the
// rate-limit headers of the limits that are set, describing the buckets
// right after the admission decision (or, for other responses, when they
// were written):
//
//   - Anthropic: anthropic-ratelimit-requests-{limit,remaining,reset},
//     anthropic-ratelimit-input-tokens-*, anthropic-ratelimit-output-tokens-*
//     and anthropic-ratelimit-tokens-* (the most restrictive limit in
//     effect, i.e. the fewest remaining, of the input, output and combined
//     buckets). remaining is the whole number left; the token headers' is
//     rounded as Config.RoundRemaining says: down to a multiple of 1,000 by
//     default (RoundDown), to the nearest thousand as today's docs say
//     (RoundNearest, which can show up to 500 more than is left), or not at
//     all (Exact, or Config.ExactRemaining). reset is when the bucket will be
//     full again, RFC 3339 in UTC with whole seconds (rounded up).
//   - count_tokens: its own bucket in anthropic-ratelimit-requests-*, and no
//     token headers (the docs say only that token counting has an RPM limit
//     of its own; these names are our choice); no headers when
//     CountTokensPerMinute is not set. The model listing has none.
//   - OpenAI: x-ratelimit-{limit,remaining,reset}-requests and -tokens (the
//     combined bucket if TokensPerMinute is set, else the most restrictive of
//     input and output); remaining is exact; reset is the time until the
//     bucket is full, as a Go duration to the millisecond ("1s", "6m0s",
//     "1.5s", "20ms").
//
// The Date header of every response is Config.Now's when its headers are
// written, as a server's clock shows it beside its resets: a JSON reply's
// Date is after its generation, the reading its limit headers show is from
// its admission.
//
// # Time
//
// Config.Now drives the buckets, reset headers, Date headers and Stats
// timeline (Clock is a ready-made manual clock). Config.Latency, StreamEventDelay and
// TimePerOutputToken, and Fault.Delay and BodyDelay, are real waits; every
// wait ends early when the client goes away or Close is called, and the
// handler then returns (a reservation is settled to the tokens actually
// generated).
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
// (Stats.Window, Stats.Since, Server.ResetStats). Stats.InputTokens is what
// the input limit counted (input + cache creation, plus cache reads where
// they count; every prompt token on the OpenAI route);
// CacheReadInputTokens, CacheCreationInputTokens and PromptTokens say how
// the prompts were served. Those count when the reply is sent, and
// Stats.OutputTokens as the tokens are generated; the timeline's Admitted
// and AdmittedInputTokens count when the limiter admits, which is what a
// share of the limits over a window needs.
package tollgatetest
