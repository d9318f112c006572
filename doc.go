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
// with Chain and NewState; a layer puts the State's Observe under itself
// when it finds none inside. Admission and the pause gate run inside the
// retry loop because every attempt costs a request and input tokens;
// headers are observed innermost so the State is current before any outer
// layer decides.
//
// The State keeps one record per Key (account, provider, model family: a
// pool of limits): the latest rate-limit readings, counters, the budget's
// buckets and queue, the breaker's circuit, and one pause that the Breaker,
// the Budget and the Store all consult. Snapshot copies the records. No
// lock is held across a Store call or a user callback.
//
// # Pacing: the budget
//
// Each Key has one continuously refilled bucket per known limit, kept in
// the State's Store: requests, input tokens and output tokens per minute,
// and tokens per minute (input and output combined) where the provider
// reports that instead, as OpenAI does. An attempt costs one request, its
// estimated input tokens, and its output as the server counts it
// (OutputAccounting): where max_tokens is reserved (OpenAI; Anthropic's
// older rule), its max_tokens (DefaultOutputTokens when the request sets
// none); where output is counted as it is produced (Anthropic today), what
// the Key's calls are learned to produce, plus a margin for the attempts in
// flight together: their excesses add up as independent draws do, so it
// grows with the square root of their number, three learned deviations of
// one call's output times √n. tollgate starts from the provider's rule and
// switches when a response's output-tokens-remaining, read at its start,
// proves the other; until a response has confirmed a rule of counting as
// produced, attempts are charged their max_tokens, the safe way to be wrong
// (with told limits the first calls go together, before any response). The
// buckets that count input must hold more than the cost (a twentieth of
// it, and a second's refill while other attempts are in flight): estimates
// may fall short, together, until they settle. A cost larger than a bucket's capacity waits for a full
// bucket and takes all of it. Waiters are served in arrival order per Key,
// so a small attempt never overtakes a bigger one that came first.
//
// Each endpoint is charged what the server charges it (the provider table in
// dialect.go): count_tokens has a pool of its own, paced by its own
// requests-per-minute limit; Message Batches, model listing and files are
// not paced by the messages limits at all.
//
// When an attempt's body has been read to the end or closed (or the attempt
// failed), its reservation is settled to the usage the response reported,
// which frees unused output capacity at once. A 429 gives its whole
// reservation back as soon as its headers arrive: the server did not count
// it. An attempt that got no response gives its tokens back and keeps its
// request, since the server may have counted the request before the
// connection failed; other error responses give back their output.
//
// Input tokens are estimated from the request's prompt bytes and images, at
// a number of bytes per rate-limited token learned per Key from the usage
// the responses report, so a systematic misestimate corrects itself within
// a few calls. Estimates divide by that mean less three learned standard
// deviations: an attempt is admitted the moment its estimate fits, so an
// estimate short of the server's count would draw a 429, while one too high
// only holds tokens until the attempt settles. Which tokens the input limit
// counts follows the provider: Anthropic counts input and cache creation
// but not cache reads (except on the models its docs mark, such as Haiku
// 3.5); OpenAI counts every prompt token.
//
// Where cache reads are free, the budget predicts them: it reads the
// request's cache_control breakpoints (tools, system, messages; at most 4),
// remembers the prefixes this Transport has seen the server cache (a hash
// of the content, never the text) for the time to live the breakpoint asks,
// refreshed on a hit, looks back up to 20 blocks before a breakpoint as the
// server does, and skips prefixes shorter than the model's minimum
// cacheable length. What it predicts read is not charged; the usage checks
// the prediction (a prefix predicted but not read is forgotten, one read but
// not predicted is learned), and the bytes per token are learned from the
// part of the prompt the server did not read. A request whose breakpoints
// the provider refuses is predicted nothing. The memory is per Transport and
// bounded (4,096 prefixes, the oldest dropped).
//
// Limits come from WithLimits or from the *-limit response headers; headers
// win. When an attempt's headers arrive, each bucket whose level is above
// what the server's *-remaining header allows is pulled down to it, since
// other processes may share the Key. The reading is taken as the most the
// level can be — the refill since the attempt was sent added, a value rounded
// to the thousand (Anthropic's token headers) read as the top of its
// interval, nothing sent meanwhile subtracted, the max_tokens the server
// gave back of the attempt once it ended added — so a level is never pulled
// further down than the server's count requires. The usage bounds the level
// too: the bucket held at most its limit before the server counted the
// attempt. Until any limit is known for a Key, its attempts are admitted one
// at a time; a Key whose successful responses carry no limit headers (a
// gateway that strips them) ends its cold start with that response and is
// not paced.
//
// # Pausing: the breaker
//
// The budget paces what this process knows; the breaker reacts to what
// only the server knows. A Key's breaker (a gobreaker state machine) opens,
// for every caller, when a response shows:
//
//   - a limit with less remaining than the next typical request needs: for
//     as long as that limit takes to refill the deficit at its rate, never
//     past its reset; the longest such wait over the limits wins. The
//     typical request is a moving average of the usage of recent calls.
//   - a 429 with retry-after (or retry-after-ms): until then.
//   - a 429 that says the spend cap is reached: for WithSpendLimitPause;
//     every caller fails fast meanwhile, waiting or not.
//   - the WithBreakerThreshold-th consecutive failure: a 5xx status (529
//     overloaded, 502, 503, 504, …), a 408, a 429 that gives no wait, a
//     connection failure, or an overloaded_error in a stream; for the
//     retry-after the failure gave, else the WithBackoff base doubled for
//     each consecutive trip and capped at the WithBackoff maximum.
//
// Client errors (4xx) and attempts whose context ended count neither way.
// Failures and pauses count as soon as the response arrives, a success once
// its body has ended (a stream can still fail). A pause only ever moves
// later. Results of attempts admitted before the breaker last changed state
// do not count (gobreaker's generations), but a wait the server asked for
// is honoured whenever it arrives. When the pause is over, one attempt, the
// probe, goes first; its verdict is its status or, for a stream, its first
// output (a content delta) or its end, so that a stream that fails right
// after its headers counts as the failure it is.
//
// # One budget for many processes
//
// The budget's bucket levels and the breaker's pauses live in a Store: by
// default one in memory per Transport. Give every process of a fleet the
// same shared store (package redisstore keeps it in Redis) with WithStore,
// and the fleet paces as one client against its account's limits; a pause
// one process takes holds every process before its next admission. The
// store is asked once per attempt to admit it; settling an attempt rides
// with the next admission when one is coming, and goes on its own, from a
// goroutine of its own, when none is. When the store fails, each process
// falls back to its own share of the limits (WithStoreFallback), starting
// from the levels it last knew, until the store answers again; a store that
// comes back empty is given those levels too.
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
