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
// flight together: their excesses add up as independent draws do, but all
// were charged the same learned mean, whose error adds up n times, so the
// margin is three deviations of their sum, σ·√(n + n²·Σw²) (Σw², the
// weight of the mean's error; replies are taken to vary by half their
// mean until three are learned). A stream is watched as it is read: once the
// Key has learned how many bytes its streams' content deltas take per
// output token, a stream that has shown more output than it was charged is
// charged what it showed (and a deviation ahead), so the server's level
// stays above tollgate's whatever the stream produces, and the margin leaves
// it out of n; only the attempts whose output is unseen until they end
// (JSON replies) count there, and each only once it could have produced
// more than it was charged: the server counts output as it is produced, and
// a reply takes time to produce (the pool times its JSON replies, and
// takes an attempt in flight to produce up to half again as fast as the
// fastest of them). tollgate starts from the provider's rule and
// switches when a response's output-tokens-remaining, read at its start,
// proves the other; until a response has confirmed a rule of counting as
// produced, attempts are charged their max_tokens, the safe way to be wrong
// (with told limits the first calls go together, before any response).
// Only a stream's headers, a response to a call whose max_tokens exceeds the
// output limit, or a JSON response whose reading is seconds older than the
// Date it was written at confirm it: a JSON response's headers may show the
// levels after the server gave back the max_tokens it did not use. The
// buckets that count input must hold more than the cost (a twentieth of
// it, and a second's refill while other attempts are in flight): estimates
// may fall short, together, until they settle. The buckets that take
// max_tokens hold a quarter second's refill besides: the server counts an
// attempt a moment after tollgate does, and a full bucket of the server's
// loses that moment's refill. A cost larger than a bucket's capacity waits
// for a full bucket and takes all of it. Waiters are served in arrival order per Key,
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
// from the start of the request that wrote or read it, refreshed on a hit,
// looks back up to 20 blocks before a breakpoint as the server does, and
// skips prefixes shorter than the model's minimum cacheable length. What it
// predicts read is not charged; the usage checks the prediction (a prefix
// predicted but not read is forgotten, one read but not predicted is
// learned), and the bytes per token are learned from the part of the prompt
// the server did not read. A request whose breakpoints the provider refuses
// is predicted nothing. The memory is per Transport and bounded (4,096
// prefixes, the oldest dropped).
//
// The server makes a cache entry usable only once the response that writes
// it has begun, so calls sent together all pay to write the prefix they
// share, as a fleet's first calls would. An attempt whose prompt has a
// prefix that an attempt in flight is expected to write, beyond what is
// predicted cached, waits at the head of the queue for that attempt to end
// (then the prefix is predicted read), as Anthropic's docs advise — but at
// most as long as the input bucket takes to refill the tokens the wait
// saves: a wait longer than that costs more of the limit than it spares.
// What a response wrote is learned from its usage when it ends, not from a
// stream's message_start: a server may make an entry usable only then, and
// a read predicted sooner would be an estimate short of its count.
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
// attempt. A bucket learned from a response starts at the lower of the two,
// as of the headers' arrival, plus the refill since the attempt was sent as
// far as the reading's reset (when the bucket will be full) shows it: a
// JSON response's headers come seconds after the server counted it. What
// the attempt is given back later (its estimate above what the server
// counted) raises that start; the reading, already in it, is not applied to
// it again. Until
// any limit is known for a Key, its attempts are admitted one at a time; a Key whose successful responses carry no limit headers (a
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
//     This refill pause is taken on a 429 that gives no wait, and on a
//     success only by a Breaker with no Budget layer: the Budget layer
//     paces a success that leaves a limit short itself, each waiting
//     attempt for its own cost, in the queue's order. It is tollgate's own
//     pacing, which WithMaxPause does not bound.
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
// # Who goes first: priorities and tenants
//
// Each call has a priority class, Interactive, Normal (the default) or
// Background (ContextWithPriority), and a tenant, "" unless
// ContextWithTenant names one. Both ride in the context the caller gives
// the SDK, which hands it to the transport, and hold for every attempt of
// the call, retries included. They order a Key's queue: an Interactive
// attempt is admitted before every waiting Normal and Background one, a
// Normal one before every Background one. Within a class, tenants are
// served by weighted fair queuing (start-time fair queuing) on the tokens
// they actually used: an attempt counts as the largest share of a token
// limit it takes, corrected to its usage when it settles, over its
// tenant's weight (WithTenantWeights), so that a tenant's share of the
// binding limit follows its weight whatever its number of agents, and the
// share of a tenant with nothing waiting goes to the others at once, with
// no credit banked. The arrival order described above holds within one
// class and one tenant.
//
// The bounds: an Interactive attempt waits for the refill of its own cost
// at most, plus one attempt already granted (an attempt the store is being
// asked about, or has granted ahead of time, keeps the head). Normal and
// Background attempts leave headroom in every bucket for Interactive
// attempts that have not arrived yet (WithInteractiveHeadroom: one typical
// Interactive attempt by default, learned, and kept only while the Key has
// seen one in the last 10 minutes), so that one that arrives finds its
// cost there. An attempt that has waited WithPriorityAging (3 minutes by
// default) is served in arrival order ahead of every attempt that arrived
// after it, whatever the classes and tenants: no attempt is starved for
// good, a Background attempt waiting at most that long plus the time the
// Key takes to serve the attempts that arrived before it.
//
// Waiting is not failing. A wait tollgate chooses for its own pacing — a
// place in the queue, the refill an attempt's cost needs, a refill pause —
// ends only with the request's context, unless WithMaxQueueWait sets a cap,
// past which the attempt fails with a *QueueWaitError that says how long it
// waited and what for. WithMaxWait and WithMaxPause bound only the waits
// the server asks for (retry-after), and WithMaxPause counts only the time
// an attempt spends on such pauses, not its time in the queue.
//
// Snapshot shows the waiters per class (BudgetSnapshot.WaitingByPriority),
// each tenant's waiters, attempts in flight and use over the last minute
// (BudgetSnapshot.Tenants), and the headroom kept. Spans carry
// tollgate.priority and tollgate.tenant, the metric tollgate.wait.duration
// has the attribute tollgate.priority, and the UsageRecord has Priority and
// Tenant.
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
// Priorities and fair shares with a shared store: each process orders its
// own queue, and only its head asks the store, so the order above holds
// among the attempts of one process; the heads of the processes reach the
// store in the order they ask (redisstore grants ahead in the order its
// admissions reach Redis). What holds across processes: an Interactive
// attempt waits for the refill of its own cost plus at most one attempt
// already granted per process sharing the store (each process's head);
// and the headroom is kept in the shared buckets (Admission.Keep, which
// redisstore's admission script honours), so that an Interactive attempt
// of any process can take what the Normal and Background attempts of the
// others leave. What holds only within a process: the order of the
// classes among waiting attempts, the fair share among tenants (a tenant
// whose calls are spread over more processes gets more turns at the
// store), aging, and the headroom's size, which a process learns from its
// own Interactive attempts: a process that has made none in the last 10
// minutes keeps none.
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
