package tollgatetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxBodyBytes bounds a request body.
const maxBodyBytes = 32 << 20

// Server is a fake Anthropic Messages + OpenAI Chat Completions API with rate
// limits. It is an http.Handler; NewServer also runs it on a loopback
// listener. All methods are safe for concurrent use.
type Server struct {
	// URL is the base URL of a server made by NewServer, e.g.
	// "http://127.0.0.1:40123" (no trailing slash); empty for NewHandler.
	// Give it to the Anthropic SDK as option.WithBaseURL(s.URL) and to the
	// OpenAI SDK as option.WithBaseURL(s.URL + "/v1") (s.URL alone works
	// too: chat completions are also served without the /v1 prefix).
	URL string

	cfg  Config
	ts   *httptest.Server
	done chan struct{} // closed by Close
	once sync.Once

	mu       sync.Mutex
	lim      limiter
	cache    *promptCache // nil: caching off
	cnt      counters
	faults   []Fault
	arrivals int
}

// NewServer starts a Server for cfg on a random port of 127.0.0.1 (like
// httptest.NewServer) and returns it; call Close when done.
func NewServer(cfg Config) *Server {
	s := NewHandler(cfg)
	s.ts = httptest.NewServer(s)
	s.URL = s.ts.URL
	return s
}

// NewHandler returns a Server for cfg that listens nowhere: serve it with
// your own http.Server (it implements http.Handler). Its URL is empty. Close
// still ends the waits and streams in progress; shutting your http.Server
// down is up to you.
func NewHandler(cfg Config) *Server {
	s := &Server{cfg: cfg, done: make(chan struct{}), cnt: newCounters()}
	s.lim = newLimiter(&s.cfg, s.cfg.now())
	if !cfg.NoPromptCaching {
		s.cache = newPromptCache(s.cfg.cacheMaxEntries())
	}
	return s
}

// Handler returns s as an http.Handler.
func (s *Server) Handler() http.Handler { return s }

// Close ends every wait and stream in progress (their handlers return
// promptly), then, for a server made by NewServer, shuts the listener down
// and blocks until all requests have finished. Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.done)
		if s.ts != nil {
			s.ts.Close()
		}
	})
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.cnt.snapshot()
	return st
}

// ResetStats zeroes the counters and the timeline; PeakConcurrency becomes
// the current InFlight. Limits, queued faults and arrival numbers are not
// touched.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	inFlight := s.cnt.st.InFlight
	s.cnt = newCounters()
	s.cnt.st.InFlight = inFlight
	s.cnt.st.PeakConcurrency = inFlight
}

// Inject queues fault f for the next n requests that reach the server (n <= 0
// does nothing). Queued faults are applied first in, first out, before
// Config.FaultFunc is consulted: Inject(2, a); Inject(1, b) gives the next
// three requests a, a, b.
func (s *Server) Inject(n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults = append(s.faults, f)
	}
}

// PendingFaults returns how many injected faults are still queued.
func (s *Server) PendingFaults() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.faults)
}

// Consume drains the buckets as another client of the same account would:
// requests from the request bucket, inputTokens from the input bucket,
// outputTokens from the output bucket and their sum from the combined
// bucket, each only if that limit is set. It never fails: a bucket may go
// below zero, and then admits nothing until refilled past the debt. Negative
// arguments give budget back, never past a bucket's capacity. It is not
// counted in Stats.
func (s *Server) Consume(requests, inputTokens, outputTokens int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lim.advance(s.cfg.now())
	s.lim.consume(int64(requests), int64(inputTokens), int64(outputTokens))
	for _, b := range []*bucket{s.lim.requests, s.lim.input, s.lim.output, s.lim.combined} {
		if b != nil && b.level > b.capacity() {
			b.level = b.capacity()
		}
	}
}

// CacheEntries returns how many prompt cache entries are live at
// Config.Now (Anthropic prefixes and OpenAI checkpoints together); 0 with
// caching off.
func (s *Server) CacheEntries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		return 0
	}
	return s.cache.live(s.cfg.now())
}

// Limit describes one bucket's state, as returned by Server.Limits.
type Limit struct {
	Limit     int       // per minute; 0 when not set (then the rest is zero)
	Remaining int       // whole tokens (requests) left; negative in debt
	FullAt    time.Time // when the bucket will be full if nothing is taken
}

// Limits is the state of all the buckets at one instant. Tokens is the
// combined (TokensPerMinute) bucket, CountTokens count_tokens' own
// (CountTokensPerMinute).
type Limits struct {
	Requests, InputTokens, OutputTokens, Tokens Limit
	CountTokens                                 Limit
}

// Limits returns the buckets' state at Config.Now, exactly (no rounding).
func (s *Server) Limits() Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lim.advance(s.cfg.now())
	lim := func(b *bucket) Limit {
		if b == nil {
			return Limit{}
		}
		return Limit{Limit: int(b.limit), Remaining: int(b.tokens()), FullAt: b.fullAt()}
	}
	return Limits{lim(s.lim.requests), lim(s.lim.input), lim(s.lim.output), lim(s.lim.combined), lim(s.lim.countTokens)}
}

// dialect is the API flavour of a request.
type dialect int

const (
	anthropicAPI dialect = iota
	openAIAPI
)

func dialectOf(r *http.Request) dialect {
	p := r.URL.Path
	if strings.HasPrefix(p, "/v1/messages") {
		return anthropicAPI
	}
	if (p == "/v1/models" || strings.HasPrefix(p, "/v1/models/")) &&
		(r.Header.Get("anthropic-version") != "" || r.Header.Get("x-api-key") != "") {
		return anthropicAPI
	}
	for _, pre := range []string{"/v1/chat/", "/chat/", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models"} {
		if strings.HasPrefix(p, pre) {
			return openAIAPI
		}
	}
	if r.Header.Get("x-api-key") == "" && r.Header.Get("anthropic-version") == "" &&
		strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		return openAIAPI
	}
	return anthropicAPI
}

// ServeHTTP serves one request; see the package documentation for routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.begin()
	x := &exchange{s: s, r: r, ctx: r.Context(), api: dialectOf(r), route: routeOf(r.URL.Path)}
	defer x.end()
	x.w = &recorder{ResponseWriter: w, s: s}
	if x.api == anthropicAPI {
		x.rid = "req_" + randomID(24)
	} else {
		x.rid = "req_" + randomHex(16)
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if x.ctx.Err() != nil {
			return
		}
		x.errorResponse(http.StatusRequestEntityTooLarge, "", "request body too large or unreadable: "+err.Error())
		return
	}
	x.body = body
	x.fault = s.nextFault(r, n, body)

	if f := x.fault; f != nil {
		if f.Delay > 0 && !x.wait(f.Delay) {
			return
		}
		switch {
		case f.DropConnection:
			x.drop()
			return
		case f.SpendLimit:
			x.spendLimit()
			return
		case f.Status >= 400:
			x.faultError()
			return
		}
	}

	switch p := r.URL.Path; {
	case p == "/v1/messages":
		x.anthropicMessages()
	case p == "/v1/messages/count_tokens":
		x.anthropicCountTokens()
	case p == "/v1/chat/completions", p == "/chat/completions":
		x.openAIChat()
	case p == "/v1/models", strings.HasPrefix(p, "/v1/models/"):
		x.models(strings.TrimPrefix(strings.TrimPrefix(p, "/v1/models"), "/"))
	default:
		if x.api == anthropicAPI {
			x.errorResponse(http.StatusNotFound, "not_found_error", "Not found: "+r.Method+" "+r.URL.Path)
		} else {
			x.errorResponse(http.StatusNotFound, "invalid_request_error", fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path))
		}
	}
}

func (s *Server) begin() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.arrivals++
	st := &s.cnt.st
	st.Requests++
	st.InFlight++
	st.PeakConcurrency = max(st.PeakConcurrency, st.InFlight)
	s.cnt.second(s.cfg.now()).Requests++
	return s.arrivals
}

func (s *Server) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cnt.st.InFlight--
}

func (s *Server) nextFault(r *http.Request, n int, body []byte) *Fault {
	s.mu.Lock()
	var f *Fault
	if len(s.faults) > 0 {
		f = new(s.faults[0])
		s.faults = s.faults[1:]
	}
	s.mu.Unlock()
	if f == nil && s.cfg.FaultFunc != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		f = s.cfg.FaultFunc(r, n)
		if f != nil {
			f = new(*f) // a copy: the caller may reuse its value
		}
	}
	if f != nil {
		s.mu.Lock()
		s.cnt.st.Faults[f.Kind()]++
		s.mu.Unlock()
	}
	return f
}

func (s *Server) recordStatus(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cnt.st.Status[code]++
	if code >= 200 && code < 300 {
		s.cnt.st.OK++
		s.cnt.second(s.cfg.now()).OK++
	}
}

// countInput counts a served prompt in Stats.
func (s *Server) countInput(u promptUsage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, sec := &s.cnt.st, s.cnt.second(s.cfg.now())
	st.InputTokens += u.counted
	sec.InputTokens += u.counted
	st.CacheReadInputTokens += u.read
	sec.CacheReadInputTokens += u.read
	st.CacheCreationInputTokens += u.creation
	sec.CacheCreationInputTokens += u.creation
	st.PromptTokens += u.prompt
	sec.PromptTokens += u.prompt
}

// recorder counts the status of the response it carries.
type recorder struct {
	http.ResponseWriter
	s     *Server
	wrote bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.wrote = true
		r.s.recordStatus(code)
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// route is what a request's rate-limit headers describe.
type route int

const (
	routePaced       route = iota // Messages, chat completions, errors: the main buckets
	routeCountTokens              // count_tokens: its own bucket
	routeUnpaced                  // model listing: no rate-limit headers
)

// routeOf is the route of a path, for its rate-limit headers (injected
// faults included).
func routeOf(path string) route {
	switch {
	case path == "/v1/messages/count_tokens":
		return routeCountTokens
	case path == "/v1/models", strings.HasPrefix(path, "/v1/models/"):
		return routeUnpaced
	}
	return routePaced
}

// exchange is one request being served.
type exchange struct {
	s     *Server
	w     *recorder
	r     *http.Request
	ctx   context.Context
	api   dialect
	route route
	rid   string
	body  []byte
	fault *Fault
	snap  *snapshot // rate-limit state for the headers; nil = take one when needed
	ended bool
}

// end marks the request as no longer in flight. It is called just before the
// response's last bytes are written (so a client that has read a whole
// response sees it counted out) and, as a safety net, when the handler
// returns.
func (x *exchange) end() {
	if !x.ended {
		x.ended = true
		x.s.end()
	}
}

// wait sleeps for d on the real clock; false if the client went away or the
// server is closing first.
func (x *exchange) wait(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-x.ctx.Done():
			return false
		case <-x.s.done:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-x.ctx.Done():
		return false
	case <-x.s.done:
		return false
	}
}

// drop closes the connection without a response.
func (x *exchange) drop() {
	conn, _, err := http.NewResponseController(x.w).Hijack()
	if err == nil {
		x.end()
		_ = conn.Close()
		return
	}
	panic(http.ErrAbortHandler)
}

// authorized checks Config.APIKey, answering 401 if it fails.
func (x *exchange) authorized() bool {
	key := x.s.cfg.APIKey
	if key == "" {
		return true
	}
	bearer := x.r.Header.Get("Authorization") == "Bearer "+key
	if x.api == anthropicAPI {
		if bearer || x.r.Header.Get("x-api-key") == key {
			return true
		}
		x.errorResponse(http.StatusUnauthorized, "authentication_error", "invalid x-api-key")
		return false
	}
	if bearer {
		return true
	}
	x.errorResponseCode(http.StatusUnauthorized, "invalid_request_error", "Incorrect API key provided.", "invalid_api_key")
	return false
}

// postOnly answers 405 to anything but POST.
func (x *exchange) postOnly() bool {
	if x.r.Method == http.MethodPost {
		return true
	}
	x.w.Header().Set("Allow", http.MethodPost)
	x.errorResponse(http.StatusMethodNotAllowed, "invalid_request_error", "Method "+x.r.Method+" not allowed; use POST")
	return false
}

// setHeaders sets the headers every response carries: request id, Date (on
// Config.Now's clock, as the resets are), rate-limit state, and a fault's
// retry headers.
func (x *exchange) setHeaders() {
	h := x.w.Header()
	h.Set("Date", x.s.cfg.now().UTC().Format(http.TimeFormat))
	if x.api == anthropicAPI {
		h.Set("request-id", x.rid)
	} else {
		h.Set("x-request-id", x.rid)
	}
	if x.snap == nil {
		x.s.mu.Lock()
		now := x.s.cfg.now()
		x.s.lim.advance(now)
		snap := x.s.lim.snapshot(now)
		x.s.mu.Unlock()
		x.snap = &snap
	}
	switch {
	case x.route == routeUnpaced:
	case x.route == routeCountTokens:
		x.countTokensHeaders(h)
	case x.api == anthropicAPI:
		x.anthropicLimitHeaders(h)
	default:
		x.openAILimitHeaders(h)
	}
	if f := x.fault; f != nil {
		if f.RetryAfter != "" {
			h.Set("retry-after", f.RetryAfter)
		}
		if f.RetryAfterMS != "" {
			h.Set("retry-after-ms", f.RetryAfterMS)
		}
		if f.ShouldRetry != "" {
			h.Set("x-should-retry", f.ShouldRetry)
		}
		for name, values := range f.Header {
			h.Del(name)
			for _, v := range values {
				h.Add(name, v)
			}
		}
	}
}

// roundRemaining rounds a token header's remaining as mode says.
func roundRemaining(rem int64, mode RemainingRounding) int64 {
	switch mode {
	case Exact:
		return rem
	case RoundNearest:
		return (rem + 500) / 1000 * 1000
	}
	return rem - rem%1000
}

// countTokensHeaders describes count_tokens' own bucket, in the requests-*
// headers (it has no token limits); none when it is unlimited.
func (x *exchange) countTokensHeaders(h http.Header) {
	b := x.snap.countTokens
	if !b.set {
		return
	}
	h.Set("anthropic-ratelimit-requests-limit", strconv.FormatInt(b.limit, 10))
	h.Set("anthropic-ratelimit-requests-remaining", strconv.FormatInt(b.remaining, 10))
	h.Set("anthropic-ratelimit-requests-reset", formatReset(b.reset))
}

func (x *exchange) anthropicLimitHeaders(h http.Header) {
	s := x.snap
	mode := x.s.cfg.rounding()
	set := func(name string, b bucketState, round bool) {
		if !b.set {
			return
		}
		rem := b.remaining
		if round {
			rem = roundRemaining(rem, mode)
		}
		h.Set("anthropic-ratelimit-"+name+"-limit", strconv.FormatInt(b.limit, 10))
		h.Set("anthropic-ratelimit-"+name+"-remaining", strconv.FormatInt(rem, 10))
		h.Set("anthropic-ratelimit-"+name+"-reset", formatReset(b.reset))
	}
	set("requests", s.requests, false)
	set("input-tokens", s.input, true)
	set("output-tokens", s.output, true)
	set("tokens", mostRestrictive(s.input, s.output, s.combined), true)
}

func (x *exchange) openAILimitHeaders(h http.Header) {
	s := x.snap
	set := func(name string, b bucketState) {
		if !b.set {
			return
		}
		h.Set("x-ratelimit-limit-"+name, strconv.FormatInt(b.limit, 10))
		h.Set("x-ratelimit-remaining-"+name, strconv.FormatInt(b.remaining, 10))
		h.Set("x-ratelimit-reset-"+name, formatDuration(b.reset.Sub(s.now)))
	}
	set("requests", s.requests)
	tokens := s.combined
	if !tokens.set {
		tokens = mostRestrictive(s.input, s.output)
	}
	set("tokens", tokens)
}

// formatReset renders a reset time as Anthropic does: RFC 3339, UTC, whole
// seconds, rounded up so it is never before the bucket is full.
func formatReset(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond() != 0 {
		t = t.Truncate(time.Second).Add(time.Second)
	}
	return t.Format(time.RFC3339)
}

// formatDuration renders a wait as OpenAI does, Go duration syntax to the
// millisecond (rounded up): "1s", "6m0s", "1.5s", "20ms", "0s".
func formatDuration(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	if r := d % time.Millisecond; r != 0 {
		d += time.Millisecond - r
	}
	return d.String()
}

func (x *exchange) writeJSON(status int, v any) {
	b, _ := json.Marshal(v)
	x.setHeaders()
	h := x.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	x.w.WriteHeader(status)
	if f := x.fault; f != nil && f.BodyDelay > 0 {
		// Fault.BodyDelay: the first half now, the rest after the delay.
		half := len(b) / 2
		_, _ = x.w.Write(b[:half])
		_ = http.NewResponseController(x.w).Flush()
		if !x.wait(f.BodyDelay) {
			return
		}
		b = b[half:]
	}
	x.end()
	_, _ = x.w.Write(b)
}

// errorBody builds the provider-shaped error object.
func (x *exchange) errorBody(errType, msg string, code any, details map[string]any) any {
	if x.api == anthropicAPI {
		return anthropicErrorBody{Type: "error",
			Error:     anthropicErrorObject{Type: errType, Message: msg, Details: details},
			RequestID: x.rid}
	}
	return openAIErrorBody{Error: openAIErrorObject{Message: msg, Type: errType, Code: code}}
}

// errorResponse writes an error with the given type (empty: the one that
// matches status).
func (x *exchange) errorResponse(status int, errType, msg string) {
	x.errorResponseCode(status, errType, msg, nil)
}

func (x *exchange) errorResponseCode(status int, errType, msg string, code any) {
	if errType == "" {
		errType, _ = x.statusError(status)
	}
	x.writeJSON(status, x.errorBody(errType, msg, code, nil))
}

// statusError is the error type and default message for a status.
func (x *exchange) statusError(status int) (string, string) {
	if x.api == anthropicAPI {
		switch status {
		case 400:
			return "invalid_request_error", "Invalid request"
		case 401:
			return "authentication_error", "invalid x-api-key"
		case 402:
			return "billing_error", "Billing error"
		case 403:
			return "permission_error", "Permission denied"
		case 404:
			return "not_found_error", "Not found"
		case 408:
			return "timeout_error", "Request timed out"
		case 409:
			return "conflict_error", "Conflict"
		case 413:
			return "request_too_large", "Request too large"
		case 429:
			return "rate_limit_error", "Rate limited"
		case 500:
			return "api_error", "Internal server error"
		case 502:
			return "api_error", "Bad gateway"
		case 503:
			return "api_error", "Service unavailable"
		case 504:
			return "timeout_error", "Request timed out"
		case 529:
			return "overloaded_error", "Overloaded"
		}
		if status >= 500 {
			return "api_error", "Internal server error"
		}
		return "invalid_request_error", http.StatusText(status)
	}
	switch status {
	case 401:
		return "invalid_request_error", "Incorrect API key provided."
	case 403:
		return "permission_error", "You are not allowed to sample from this model"
	case 408:
		return "timeout", "Request timed out."
	case 429:
		return "requests", "Rate limit reached."
	case 500:
		return "server_error", "The server had an error while processing your request. Sorry about that!"
	case 502:
		return "server_error", "Bad gateway."
	case 503:
		return "server_error", "The server is overloaded or not ready yet."
	case 504:
		return "server_error", "Gateway timeout."
	}
	if status >= 500 {
		return "server_error", "The server had an error while processing your request."
	}
	return "invalid_request_error", http.StatusText(status)
}

// faultError answers with the fault's error status.
func (x *exchange) faultError() {
	f := x.fault
	errType, msg := x.statusError(f.Status)
	if f.ErrorType != "" {
		errType = f.ErrorType
	}
	if f.Message != "" {
		msg = f.Message
	}
	var code any
	if x.api == openAIAPI && f.Status == 429 {
		code = "rate_limit_exceeded"
	}
	x.writeJSON(f.Status, x.errorBody(errType, msg, code, nil))
}

// spendLimit answers with the provider's spend-cap 429.
func (x *exchange) spendLimit() {
	f := x.fault
	if x.api == anthropicAPI {
		errType, msg := "rate_limit_error", "You have reached your specified API usage limits. You will regain access at the start of next month."
		if f.ErrorType != "" {
			errType = f.ErrorType
		}
		if f.Message != "" {
			msg = f.Message
		}
		x.writeJSON(http.StatusTooManyRequests, x.errorBody(errType, msg, nil,
			map[string]any{"error_code": "enforced_spend_limit_reached"}))
		return
	}
	errType, msg := "insufficient_quota", "You exceeded your current quota, please check your plan and billing details."
	if f.ErrorType != "" {
		errType = f.ErrorType
	}
	if f.Message != "" {
		msg = f.Message
	}
	x.writeJSON(http.StatusTooManyRequests, x.errorBody(errType, msg, "insufficient_quota", nil))
}

// badRequest answers 400 invalid_request_error.
func (x *exchange) badRequest(msg string) {
	x.errorResponse(http.StatusBadRequest, "invalid_request_error", msg)
}

// decode parses the JSON body into v, answering 400 if it fails.
func (x *exchange) decode(v any) bool {
	if err := json.Unmarshal(x.body, v); err != nil {
		if x.api == anthropicAPI {
			x.badRequest("Malformed JSON body: " + err.Error())
		} else {
			x.badRequest("We could not parse the JSON body of your request. (" + err.Error() + ")")
		}
		return false
	}
	return true
}

// ticket is an admitted request's claim on the output budget.
type ticket struct {
	s          *Server
	asProduced bool  // output counted as produced (else reserved and settled)
	reserved   int64 // output tokens taken at admission
	produced   int64 // output tokens sent so far
	settled    bool
}

// admit runs the limiter for cost c. On success it returns a ticket; on
// failure it has written the 429 and returns nil. Either way x.snap is the
// state right after the decision.
func (x *exchange) admit(c cost) *ticket {
	return x.admitPlanned(func(*promptCache, time.Time) cost { return c }, nil)
}

// admitPlanned is admit for a cost that depends on the prompt cache: under
// the server's lock, plan works out the cost from the cache (nil when
// caching is off) as of now, and if the request is admitted, *commit (when
// not nil) is applied to the cache at once, so a later request finds what
// this one wrote.
func (x *exchange) admitPlanned(plan func(c *promptCache, now time.Time) cost, commit *cachePlan) *ticket {
	s := x.s
	s.mu.Lock()
	now := s.cfg.now()
	s.lim.advance(now)
	c := plan(s.cache, now)
	rej := s.lim.admit(now, c)
	snap := s.lim.snapshot(now)
	x.snap = &snap
	if rej != nil {
		s.cnt.st.RateLimited++
		s.cnt.second(now).RateLimited++
	} else {
		if !c.countTokens {
			sec := s.cnt.second(now)
			sec.Admitted++
			sec.AdmittedInputTokens += int(c.input)
		}
		if commit != nil && s.cache != nil {
			s.cache.commit(commit, now)
		}
	}
	s.mu.Unlock()
	if rej == nil {
		return &ticket{s: s, reserved: c.outTake, asProduced: x.producedRule()}
	}
	x.rateLimited(rej)
	return nil
}

// begin waits Config.Latency, the time to the response's first token, and
// then makes what the request wrote to the prompt cache ready for others to
// read. False if the client is gone or the server closing: what it wrote
// stays unready.
func (x *exchange) begin(plan *cachePlan) bool {
	if !x.wait(x.s.cfg.Latency) {
		return false
	}
	x.s.mu.Lock()
	if x.s.cache != nil {
		x.s.cache.begin(plan)
	}
	x.s.mu.Unlock()
	return true
}

// rateLimited writes the limiter's 429.
func (x *exchange) rateLimited(rej *rejection) {
	secs := int64((rej.wait + time.Second - 1) / time.Second)
	h := x.w.Header()
	if rej.never {
		h.Set("x-should-retry", "false")
	} else {
		h.Set("retry-after", strconv.FormatInt(max(secs, 1), 10))
	}
	what := [...]string{"requests", "input tokens", "output tokens", "tokens", "token counting requests"}[rej.kind]
	if x.api == anthropicAPI {
		var msg string
		if rej.never {
			msg = fmt.Sprintf("This request needs %d %s, more than your organization's rate limit of %d %s per minute; it can never be admitted. Reduce the prompt or max_tokens.",
				rej.need, what, rej.limit, what)
		} else {
			msg = fmt.Sprintf("This request would exceed your organization's rate limit of %d %s per minute (needs %d, %d available). Please retry after %d seconds.",
				rej.limit, what, rej.need, rej.have, max(secs, 1))
		}
		x.writeJSON(http.StatusTooManyRequests, x.errorBody("rate_limit_error", msg, nil, nil))
		return
	}
	errType, unit := "tokens", "tokens per min (TPM)"
	if rej.kind == kindRequests {
		errType, unit = "requests", "requests per min (RPM)"
	}
	var msg string
	if rej.never {
		msg = fmt.Sprintf("Request too large on %s: Limit %d, Requested %d. The input or output tokens must be reduced in order to run successfully.",
			unit, rej.limit, rej.need)
	} else {
		msg = fmt.Sprintf("Rate limit reached on %s: Limit %d, Used %d, Requested %d. Please try again in %s.",
			unit, rej.limit, rej.limit-rej.have, rej.need, formatDuration(rej.wait))
	}
	x.writeJSON(http.StatusTooManyRequests, x.errorBody(errType, msg, "rate_limit_exceeded", nil))
}

// generate produces a non-streaming reply's n output tokens as a stream's
// would be, in chunks of Config.StreamChunkTokens, TimePerOutputToken apart,
// before the reply is written: where output is counted as produced, the
// bucket drains while the reply is generated, as the Anthropic docs say
// ("in real time"), not when it is sent. It reports false when the request
// ended first; what was generated by then stays counted.
func (x *exchange) generate(t *ticket, n int) bool {
	per := x.s.cfg.TimePerOutputToken
	if per <= 0 {
		t.produce(n)
		return true
	}
	start := time.Now()
	for _, c := range chunks(n, x.s.cfg.chunkTokens()) {
		// Each chunk is due at its place in the schedule, so that the
		// timers' lateness does not add up over a long reply.
		if !x.wait(time.Duration(c[1])*per - time.Since(start)) {
			return false
		}
		t.produce(c[1] - c[0])
	}
	return true
}

// produce records k output tokens as generated.
func (t *ticket) produce(k int) {
	if k <= 0 {
		return
	}
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	t.produced += int64(k)
	s.cnt.st.OutputTokens += k
	s.cnt.second(now).OutputTokens += k
	if t.asProduced {
		s.lim.advance(now)
		s.lim.adjustOutput(int64(k))
	}
}

// settle squares the reservation with what was produced. It is called before
// the response's last bytes are written, and deferred so it also runs on
// abort; only the first call counts.
func (t *ticket) settle() {
	if t.settled {
		return
	}
	t.settled = true
	if t.asProduced {
		return
	}
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lim.advance(s.cfg.now())
	s.lim.adjustOutput(t.produced - t.reserved)
}

// producedRule reports whether this request's output is counted as
// produced: CountAsProduced applies to the Anthropic Messages route only.
func (x *exchange) producedRule() bool {
	return x.s.cfg.OutputAccounting == CountAsProduced && x.api == anthropicAPI
}

// outputCost is the output part of an admission cost: the reservation, or
// (counted as produced) a need of one token and nothing taken.
func (x *exchange) outputCost(reservation int) (need, take int64) {
	if x.producedRule() {
		return 1, 0
	}
	return int64(reservation), int64(reservation)
}

// sse writes server-sent events, flushing after each.
type sse struct {
	x     *exchange
	rc    *http.ResponseController
	count int
}

func (x *exchange) startStream() *sse {
	x.setHeaders()
	h := x.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	x.w.WriteHeader(http.StatusOK)
	st := &sse{x: x, rc: http.NewResponseController(x.w)}
	_ = st.rc.Flush()
	return st
}

// send writes one event (no "event:" line when name is empty) after
// Config.StreamEventDelay (except before the first event) plus extra. False
// if the client is gone or the server closing.
func (st *sse) send(name string, data any, extra time.Duration) bool {
	return st.write(name, data, extra, nil)
}

// sendLast is send for the stream's last event: t is settled and the request
// counted out of flight before it is written.
func (st *sse) sendLast(name string, data any, t *ticket) bool {
	return st.write(name, data, 0, t)
}

func (st *sse) write(name string, data any, extra time.Duration, last *ticket) bool {
	d := extra
	if st.count > 0 {
		d += st.x.s.cfg.StreamEventDelay
		if f := st.x.fault; f != nil {
			d += f.BodyDelay
		}
	}
	if !st.x.wait(d) {
		return false
	}
	if last != nil {
		last.settle()
		st.x.end()
	}
	st.count++
	var buf bytes.Buffer
	if name != "" {
		buf.WriteString("event: " + name + "\n")
	}
	buf.WriteString("data: ")
	switch v := data.(type) {
	case string:
		buf.WriteString(v)
	default:
		b, _ := json.Marshal(v)
		buf.Write(b)
	}
	buf.WriteString("\n\n")
	if _, err := st.x.w.Write(buf.Bytes()); err != nil {
		return false
	}
	return st.rc.Flush() == nil
}

// chunks splits an n-token reply into stream deltas: [start, end) word
// ranges of at most size tokens.
func chunks(n, size int) [][2]int {
	var out [][2]int
	for i := 0; i < n; i += size {
		out = append(out, [2]int{i, min(n, i+size)})
	}
	return out
}

// failAfter is how many deltas a stream with a MidStreamError or DropMidBody
// fault sends before failing: what Fault.MidStreamDeltas says (want), and by
// default about half, at least one when there are any.
func failAfter(deltas, want int) int {
	switch {
	case want < 0 || deltas == 0:
		return 0
	case want > 0:
		return min(want, deltas)
	}
	return max(1, deltas/2)
}

const idAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}
