// Package soak drives a fleet of agents through the full tollgate chain
// (tollgate.New) against the fake API of package tollgatetest while a seeded
// fault plan breaks connections, answers 429s and 529 storms, cuts streams and
// JSON bodies short, slows headers and bodies, sends malformed rate-limit
// headers from a clock 30 s ahead, and (with a shared store) stalls Redis. It
// counts everything that could be lost, duplicated or leaked: answers,
// usage records, response bodies, connections, reservations.
//
// It uses tollgate's exported API only (New, its options, RoundTrip,
// Snapshot, redisstore), so the same soak runs before and after a rewrite of
// the root package's internals. The only code that reads Snapshot fields is
// KeyStates.
//
// The tests are in soak_test.go: go test ./internal/soak runs a short soak,
// go test ./internal/soak -soak 3m a long one.
package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The tollgate options of every run, short so that a run's calls are short:
// no single wait over MaxWait, at most MaxAttempts attempts per call; and a
// cap of MaxConcurrency attempts in flight per model family, so that
// concurrency slots are taken and given back too.
const (
	MaxWait        = 2 * time.Second
	BackoffBase    = 20 * time.Millisecond
	BackoffMax     = 200 * time.Millisecond
	MaxAttempts    = 4
	MaxConcurrency = 16
)

// The fake API's limits: high enough that calls flow, low enough that 64
// agents are paced and, since the fake API pools all models while tollgate
// pools per model family, draw 429s. The fake API's buckets start almost
// empty (StartLevel of each limit), as if another client had just spent
// them, so that pacing starts with the run, not a minute into it.
const (
	RequestsPerMinute     = 3000
	InputTokensPerMinute  = 200_000
	OutputTokensPerMinute = 100_000
	StartLevel            = 0.05
)

// ServerClockSkew is how far ahead of the real clock the fake API's clock
// runs, so that every reset header it sends is that far off.
const ServerClockSkew = 30 * time.Second

// DefaultAgents is the size of the fleet when Config.Agents is zero.
const DefaultAgents = 64

// Config configures one run.
type Config struct {
	// Name names the run in its report.
	Name string
	// Agents is the number of agents calling at once; 0 means DefaultAgents.
	Agents int
	// Duration is how long agents start new calls; the run then waits for
	// the calls in progress, each bounded by its own deadline.
	Duration time.Duration
	// Seed seeds the fault plan, the agents' choices and the stalls.
	Seed uint64
	// Store, when set, is given to the Transport with tollgate.WithStore;
	// nil leaves the Transport its own memory store.
	Store tollgate.Store
	// Stall, when set, is called now and then during the run to make the
	// store stall for d (e.g. Redis's CLIENT PAUSE); it must return at once.
	Stall func(ctx context.Context, d time.Duration) error
	// HangGrace is how long after its deadline a call may still be running
	// before the run reports a hang; 0 means 10 s (under -race on a loaded
	// machine a call has been seen to end 1.6 s past its deadline).
	HangGrace time.Duration
}

// Clock is the Transport's clock (tollgate.WithClock): the real clock plus
// an offset that Jump moves, so that a test can let a minute pass at once
// after the run. Its waits (After) are real, and a Jump does not shorten
// those in progress. It is the soak's only implementation of
// tollgate.Clock: should that interface gain a method, it goes here.
type Clock struct {
	offset atomic.Int64
}

// Now returns the real time plus the offset.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// NewTimer waits d of real time.
func (c *Clock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Jump moves the clock d ahead.
func (c *Clock) Jump(d time.Duration) { c.offset.Add(int64(d)) }

// Harness is one run's world: the fake API behind a server that tracks its
// connections, a base transport that counts response bodies, the tollgate
// Transport under test on them, and the counters of what happened.
type Harness struct {
	cfg Config
	// Clock is the Transport's clock.
	Clock *Clock
	// API is the fake API.
	API *tollgatetest.Server
	// Plan chooses the API's faults.
	Plan *FaultPlan
	// RT is the Transport under test.
	RT *tollgate.Transport

	srv   *httptest.Server
	conns *connTracker
	base  *countingTransport
	logs  *logCounter
	calls *callTable
	tally *tally

	breakerOpenings, breakerChanges atomic.Int64
	stalls, stallErrors             atomic.Int64
	wall, drain                     time.Duration
}

// NewHarness starts the fake API and builds the Transport for cfg. Close
// stops them.
func NewHarness(cfg Config) *Harness {
	if cfg.Agents <= 0 {
		cfg.Agents = DefaultAgents
	}
	if cfg.HangGrace <= 0 {
		cfg.HangGrace = 10 * time.Second
	}
	h := &Harness{
		cfg:   cfg,
		Clock: new(Clock),
		Plan:  NewFaultPlan(cfg.Seed),
		conns: &connTracker{open: map[net.Conn]http.ConnState{}},
		logs:  &logCounter{},
		calls: &callTable{live: map[int64]*callRec{}},
		tally: &tally{outcomes: map[string]int{}, violations: map[string]int{},
			examples: map[string][]string{}},
	}
	h.API = tollgatetest.NewHandler(tollgatetest.Config{
		RequestsPerMinute:     RequestsPerMinute,
		InputTokensPerMinute:  InputTokensPerMinute,
		OutputTokensPerMinute: OutputTokensPerMinute,
		Now:                   func() time.Time { return time.Now().Add(ServerClockSkew) },
		Latency:               10 * time.Millisecond,
		TimePerOutputToken:    400 * time.Microsecond,
		StreamEventDelay:      time.Millisecond,
		OutputTokensFunc:      func(string, int) int { return 4 + rand.IntN(45) },
		FaultFunc:             h.Plan.Fault,
	})
	const spent = 1 - StartLevel
	h.API.Consume(int(spent*RequestsPerMinute), int(spent*InputTokensPerMinute), int(spent*OutputTokensPerMinute))
	h.srv = httptest.NewUnstartedServer(h.API)
	h.srv.Config.ConnState = h.conns.hook
	// The handler aborts connections on purpose (DropMidBody); keep net/http's
	// complaints about clients that went away out of the test log.
	h.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	h.srv.Start()

	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = nil // loopback only
	base.MaxIdleConnsPerHost = cfg.Agents
	h.base = &countingTransport{base: base, live: map[*countedBody]string{}, onAttempt: h.attempt}

	opts := []tollgate.Option{
		tollgate.WithClock(h.Clock),
		tollgate.WithMaxWait(MaxWait),
		tollgate.WithBackoff(BackoffBase, BackoffMax),
		tollgate.WithMaxAttempts(MaxAttempts),
		tollgate.WithMaxConcurrency(MaxConcurrency),
		tollgate.WithBreakerStateChange(func(e tollgate.BreakerEvent) {
			h.breakerChanges.Add(1)
			if e.To == tollgate.BreakerOpen && e.From != tollgate.BreakerOpen {
				h.breakerOpenings.Add(1)
			}
		}),
		tollgate.WithUsageRecorder(h.record),
		tollgate.WithLogger(slog.New(h.logs)),
	}
	if cfg.Store != nil {
		opts = append(opts, tollgate.WithStore(cfg.Store))
	}
	h.RT = tollgate.New(h.base, opts...)
	return h
}

// HangError is a run's report of calls still running long after their
// deadlines, with every goroutine's stack.
type HangError struct {
	Calls  []string
	Stacks string
}

// Error lists the hung calls and the stacks.
func (e *HangError) Error() string {
	return fmt.Sprintf("%d calls hang past their deadline:\n  %s\ngoroutines:\n%s",
		len(e.Calls), strings.Join(e.Calls, "\n  "), e.Stacks)
}

// Run drives the agents for the configured duration and waits for their
// last calls. It returns a *HangError, without waiting further, when a call
// is still running HangGrace after its deadline.
func (h *Harness) Run() error {
	start := time.Now()
	h.Plan.Start(start)
	runCtx, stop := context.WithTimeout(context.Background(), h.cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	for i := range h.cfg.Agents {
		wg.Go(func() { h.agent(runCtx, i) })
	}
	if h.cfg.Stall != nil {
		wg.Go(func() { h.stallStore(runCtx) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			h.wall = time.Since(start)
			h.drain = h.wall - h.cfg.Duration
			return nil
		case <-tick.C:
			if hung := h.calls.overdue(time.Now(), h.cfg.HangGrace); len(hung) > 0 {
				return &HangError{Calls: hung, Stacks: stacks()}
			}
		}
	}
}

// stacks returns every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) || len(buf) >= 64<<20 {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// stallStore stalls the store now and then: every 1–3 s, for 300–800 ms
// (more than tollgate's store timeout of 100 ms), one stall at a time. It
// returns once the run is over and its last stall has ended.
func (h *Harness) stallStore(ctx context.Context) {
	rng := rand.New(rand.NewPCG(h.cfg.Seed, 1<<40))
	for {
		if !sleep(ctx, time.Second+time.Duration(rng.Int64N(int64(2*time.Second)))) {
			return
		}
		d := 300*time.Millisecond + time.Duration(rng.Int64N(int64(500*time.Millisecond)))
		if err := h.cfg.Stall(ctx, d); err != nil {
			h.stallErrors.Add(1)
			h.tally.example("stall error", err.Error())
			continue
		}
		h.stalls.Add(1)
		// Wait the stall out even when the run ends meanwhile, so that no
		// stall outlasts Run.
		<-time.After(d)
	}
}

// sleep waits d or until ctx is done; false if ctx ended it.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// The models the agents ask for: several per provider, two of them in one
// family (claude-sonnet-4), so six model-family pools in all.
var (
	anthropicModels = []string{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-1"}
	openAIModels    = []string{"gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"}
)

// bodyMode is what an agent does with a response body.
type bodyMode int

const (
	readAll     bodyMode = iota // read to the end, then close
	closeEarly                  // read a few bytes, then close
	cancelEarly                 // read a few bytes, cancel the call's context, read on, close
)

// String names the mode in reports.
func (m bodyMode) String() string { return [...]string{"read", "close-early", "cancel-mid-body"}[m] }

// spec is one call an agent makes.
type spec struct {
	openAI    bool
	model     string
	stream    bool
	maxTokens int
	prompt    string
	timeout   time.Duration
	mode      bodyMode
	readFirst int // bytes read before closing early or cancelling
}

// String describes the call in reports.
func (s spec) String() string {
	api := "anthropic"
	if s.openAI {
		api = "openai"
	}
	kind := "json"
	if s.stream {
		kind = "stream"
	}
	return fmt.Sprintf("%s %s %s max_tokens=%d timeout=%v body=%v", api, s.model, kind, s.maxTokens, s.timeout, s.mode)
}

// agent makes calls, with a think time of up to 200 ms between them, until
// ctx is done.
func (h *Harness) agent(ctx context.Context, n int) {
	rng := rand.New(rand.NewPCG(h.cfg.Seed, uint64(n)+1))
	for ctx.Err() == nil {
		h.call(n, h.spec(rng))
		if !sleep(ctx, time.Duration(rng.IntN(200))*time.Millisecond) {
			return
		}
	}
}

// spec draws a call: half Anthropic, half OpenAI, half streams; prompts of
// 5–150 tokens, max_tokens 8–64, a deadline of 0.5–5 s (the short ones end
// in the middle of waits); 70 % of bodies read to the end, 15 % closed
// early, 15 % cancelled mid-body.
func (h *Harness) spec(rng *rand.Rand) spec {
	s := spec{
		openAI:    rng.IntN(2) == 0,
		stream:    rng.IntN(2) == 0,
		maxTokens: 8 + rng.IntN(57),
		prompt:    tollgatetest.GeneratedText(5 + rng.IntN(146)),
		timeout:   500*time.Millisecond + time.Duration(rng.Int64N(int64(4500*time.Millisecond))),
		readFirst: rng.IntN(300),
	}
	if s.openAI {
		s.model = openAIModels[rng.IntN(len(openAIModels))]
	} else {
		s.model = anthropicModels[rng.IntN(len(anthropicModels))]
	}
	switch x := rng.IntN(100); {
	case x < 15:
		s.mode = closeEarly
	case x < 30:
		s.mode = cancelEarly
	}
	return s
}

// request builds the HTTP request of s as the official SDKs would: JSON
// body with GetBody (bytes.Reader), the provider's auth and version headers.
func (h *Harness) request(ctx context.Context, s spec) *http.Request {
	msgs := []map[string]string{{"role": "user", "content": s.prompt}}
	body := map[string]any{"model": s.model, "messages": msgs}
	path := "/v1/messages"
	if s.openAI {
		path = "/v1/chat/completions"
		body["max_completion_tokens"] = s.maxTokens
		if s.stream {
			body["stream"] = true
			body["stream_options"] = map[string]bool{"include_usage": true}
		}
	} else {
		body["max_tokens"] = s.maxTokens
		if s.stream {
			body["stream"] = true
		}
	}
	b, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+path, bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tollgate-soak/1")
	if s.openAI {
		req.Header.Set("Authorization", "Bearer sk-soak-openai")
	} else {
		req.Header.Set("X-Api-Key", "sk-ant-soak")
		req.Header.Set("Anthropic-Version", "2023-06-01")
	}
	return req
}

// callKey carries a call's *callRec in its context, so that the usage
// recorder can tell which call it records.
type callKey struct{}

// callRec is one call in progress.
type callRec struct {
	id       int64
	desc     string
	start    time.Time
	deadline time.Time
	phase    atomic.Pointer[string]
	records  atomic.Int32
	status   atomic.Int32                   // the usage record's Status
	attempts atomic.Int32                   // the usage record's Attempts
	waits    atomic.Pointer[tollgate.Waits] // the usage record's Waits
	sent     atomic.Int32                   // attempts the chain handed the base transport
	returned atomic.Bool                    // RoundTrip has returned
}

// setPhase records what the call is doing, for the hang report.
func (c *callRec) setPhase(p string) { c.phase.Store(&p) }

// call makes one call and accounts for everything it returned.
func (h *Harness) call(agent int, s spec) {
	c := h.calls.begin(agent, s)
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), callKey{}, c), s.timeout)
	defer cancel()
	c.setPhase("RoundTrip")
	resp, err := h.RT.RoundTrip(h.request(ctx, s))
	c.returned.Store(true)
	h.tally.overrun("RoundTrip", c, time.Since(c.deadline))
	outcome := h.answer(c, s, resp, err, cancel)
	h.tally.overrun("closing the body", c, time.Since(c.deadline))
	h.calls.end(c)
	h.tally.call(outcome, c, resp)
}

// answer checks RoundTrip's answer, handles the body as s says and returns
// the call's outcome.
func (h *Harness) answer(c *callRec, s spec, resp *http.Response, err error, cancel context.CancelFunc) string {
	switch {
	case resp != nil && err != nil:
		h.tally.violation("RoundTrip returned a response and an error", fmt.Sprintf("%s: %d, %v", c.desc, resp.StatusCode, err))
		if resp.Body != nil {
			_ = resp.Body.Close()
		}
		return "violation"
	case resp == nil && err == nil:
		h.tally.violation("RoundTrip returned neither a response nor an error", c.desc)
		return "violation"
	case err != nil:
		kind := errKind(err)
		var open *tollgate.OpenError
		switch {
		case errors.As(err, &open):
			kind += ": " + open.Reason
			if !open.Until.IsZero() {
				var paused time.Duration
				if w := c.waits.Load(); w != nil {
					paused = w.Pause
				}
				h.tally.openFor(open.Reason, open.Until.Sub(h.Clock.Now()), c.deadline.Sub(time.Now()), paused)
			}
		case kind == "other":
			h.tally.example("RoundTrip error", err.Error())
		}
		return "error " + kind
	case resp.Body == nil:
		h.tally.violation("response without a body", c.desc)
		return "violation"
	}
	head := fmt.Sprintf("status %d%s", resp.StatusCode, replayed(resp))
	var tail string
	switch s.mode {
	case readAll:
		c.setPhase("reading the body")
		b, err := io.ReadAll(resp.Body)
		tail = h.checkBody(c, s, resp, b, err)
	case closeEarly:
		c.setPhase("reading the start of the body")
		_, _ = io.CopyN(io.Discard, resp.Body, int64(s.readFirst))
		tail = "closed early"
	case cancelEarly:
		c.setPhase("reading the start of the body")
		_, _ = io.CopyN(io.Discard, resp.Body, int64(s.readFirst))
		cancel()
		c.setPhase("reading the body after cancelling")
		_, err := io.Copy(io.Discard, resp.Body)
		tail = "cancelled mid-body"
		if err != nil {
			tail += ": " + errKind(err)
		}
	}
	h.tally.overrun("reading the body", c, time.Since(c.deadline))
	c.setPhase("closing the body")
	start := time.Now()
	if err := resp.Body.Close(); err != nil {
		h.tally.example("Close error", err.Error())
	}
	h.tally.closed(c, time.Since(start))
	return head + ", " + tail
}

// checkBody judges a body read to the end (or to err): a body that ends
// cleanly must be whole — a JSON document, or a stream that reached its
// end or an error event — else the chain passed a truncated body off as
// complete.
func (h *Harness) checkBody(c *callRec, s spec, resp *http.Response, b []byte, err error) string {
	if err != nil {
		kind := errKind(err)
		if kind == "other" {
			h.tally.example("body error", err.Error())
		}
		return "body error " + kind
	}
	if s.stream && resp.StatusCode == http.StatusOK {
		switch {
		case bytes.Contains(b, []byte("event: error")) || bytes.Contains(b, []byte(`data: {"error"`)):
			return "stream error event"
		case bytes.Contains(b, []byte("event: message_stop")) || bytes.Contains(b, []byte("data: [DONE]")):
			return "complete"
		}
		h.tally.violation("truncated stream read as complete", fmt.Sprintf("%s: %q", c.desc, tailOf(b)))
		return "violation"
	}
	if !json.Valid(b) {
		what := fmt.Sprintf("%s: status %d%s, %q", c.desc, resp.StatusCode, replayed(resp), tailOf(b))
		h.tally.violation("truncated JSON read as complete", what)
		return "violation"
	}
	return "complete"
}

// replayed is " replayed" for a response the breaker replayed
// (tollgate.ReplayedHeader), for a report.
func replayed(resp *http.Response) string {
	if resp.Header.Get(tollgate.ReplayedHeader) != "" {
		return " replayed"
	}
	return ""
}

// tailOf is the end of b, for a report.
func tailOf(b []byte) []byte {
	return b[max(0, len(b)-120):]
}

// errKind classifies an error from RoundTrip or a body read.
func errKind(err error) string {
	switch {
	case errors.Is(err, tollgate.ErrOpen):
		return "breaker open"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	}
	return "other"
}

// attempt accounts for an attempt the chain hands the base transport: its
// context must carry the caller's, and its call must not have returned yet
// (a response is never retried once returned; an error ends the call).
func (h *Harness) attempt(req *http.Request) {
	c, ok := req.Context().Value(callKey{}).(*callRec)
	if !ok {
		h.tally.violation("attempt whose context is not the caller's", req.Method+" "+req.URL.Path)
		return
	}
	c.sent.Add(1)
	if c.returned.Load() {
		h.tally.violation("attempt sent after RoundTrip returned", c.desc)
	}
}

// record is the usage recorder: it counts the record against its call.
func (h *Harness) record(ctx context.Context, r tollgate.UsageRecord) {
	c, ok := ctx.Value(callKey{}).(*callRec)
	if !ok {
		h.tally.violation("usage record for no call of ours", fmt.Sprintf("%+v", r))
		return
	}
	c.status.Store(int32(r.Status))
	c.attempts.Store(int32(r.Attempts))
	c.waits.Store(&r.Waits)
	c.records.Add(1)
	h.tally.recorded(r)
}

// Close closes the base transport's idle connections, waits (at most a
// second) for the API's connections to close and its handlers to finish,
// and reports what is left; then it stops the fake API.
func (h *Harness) Close() Leaks {
	var l Leaks
	l.BodiesOpened, l.BodiesClosed, l.OpenBodies = h.base.counts()
	l.CloseIdleByChain = h.base.closeIdle.Load()
	deadline := time.Now().Add(time.Second)
	for {
		// Again each time: a dial the transport began for a call that gave
		// up meanwhile ends with one more idle connection.
		h.base.base.CloseIdleConnections()
		l.Conns, l.OpenConns = h.conns.counts()
		l.HandlersInFlight = h.API.Stats().InFlight
		if (len(l.OpenConns) == 0 && l.HandlersInFlight == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.API.Close()
	h.srv.Close()
	return l
}

// Leaks is what Close found left open.
type Leaks struct {
	// BodiesOpened and BodiesClosed count the base transport's response
	// bodies; OpenBodies describes those never closed.
	BodiesOpened, BodiesClosed int64
	OpenBodies                 []string
	// CloseIdleByChain counts the chain's calls of the base transport's
	// CloseIdleConnections, which a RoundTripper must never make.
	CloseIdleByChain int64
	// Conns is the number of connections the API accepted; OpenConns
	// counts, by state, those still open after CloseIdleConnections.
	Conns     int
	OpenConns map[string]int
	// HandlersInFlight is the fake API's count of requests still served.
	HandlersInFlight int
}

// KeyState is what the soak needs of one Key of a Transport's Snapshot.
type KeyState struct {
	Key                               string
	InFlight, Waiting, BreakerWaiting int
	// Dims are the dimensions with a known limit.
	Dims []DimState
}

// DimState is one dimension of a KeyState.
type DimState struct {
	Name     string
	Level    float64
	Limit    int64
	Reserved float64 // what attempts not yet settled hold
}

// KeyStates reads snap. It is the only code of the soak that knows
// Snapshot's fields, so that a change of their names touches only it.
func KeyStates(snap tollgate.Snapshot) []KeyState {
	var out []KeyState
	for _, k := range snap.Keys {
		ks := KeyState{
			Key:            k.Key.String() + " " + k.Key.Account,
			InFlight:       k.Budget.InFlight,
			Waiting:        k.Budget.Waiting,
			BreakerWaiting: k.Breaker.Waiting,
		}
		for d, db := range k.Budget.Dimensions {
			if db.Limit > 0 || db.Reserved != 0 {
				ks.Dims = append(ks.Dims, DimState{Name: tollgate.Dimension(d).String(), Level: db.Level, Limit: db.Limit, Reserved: db.Reserved})
			}
		}
		out = append(out, ks)
	}
	return out
}

// Outstanding describes the Keys with an attempt in flight or waiting for
// the budget or the breaker.
func Outstanding(states []KeyState) []string {
	var out []string
	for _, k := range states {
		if k.InFlight != 0 || k.Waiting != 0 || k.BreakerWaiting != 0 {
			out = append(out, fmt.Sprintf("%s: in flight %d, waiting for the budget %d, for the breaker %d",
				k.Key, k.InFlight, k.Waiting, k.BreakerWaiting))
		}
		for _, d := range k.Dims {
			if d.Reserved > 1e-9 || d.Reserved < -1e-9 {
				out = append(out, fmt.Sprintf("%s %s: %.3f still reserved", k.Key, d.Name, d.Reserved))
			}
		}
	}
	return out
}

// Unfilled describes the dimensions whose level is not its limit (to a
// millionth).
func Unfilled(states []KeyState) []string {
	var out []string
	for _, k := range states {
		for _, d := range k.Dims {
			if diff := float64(d.Limit) - d.Level; diff > 1e-6*float64(d.Limit) || diff < -1e-6*float64(d.Limit) {
				out = append(out, fmt.Sprintf("%s %s: level %.3f, limit %d", k.Key, d.Name, d.Level, d.Limit))
			}
		}
	}
	return out
}

// Report is what a run counted.
type Report struct {
	Name        string
	Seed        uint64
	Agents      int
	Wall, Drain time.Duration // the run, and its part after Duration
	Calls, OK   int
	// Outcomes counts calls by what RoundTrip and the body gave.
	Outcomes map[string]int
	// Violations counts broken contracts by kind; Examples holds a few of
	// each, and of odd errors.
	Violations map[string]int
	Examples   map[string][]string
	// Records counts usage records; LostRecords the calls without one,
	// DuplicateRecords those with more than one.
	Records, LostRecords, DuplicateRecords int
	// StatusMismatches counts calls answered with a response whose record
	// has another Status.
	StatusMismatches int
	// Attempts sums the records' Attempts; Retries is Attempts minus the
	// calls that made at least one; MaxAttempts is the most of one call.
	Attempts, Retries, MaxAttempts int
	// Sent counts the attempts the chain handed the base transport.
	Sent int
	// MaxOverrun is the longest a call went on past its deadline; MaxClose
	// the longest a response body's Close took.
	MaxOverrun, MaxClose            time.Duration
	BreakerOpenings, BreakerChanges int
	// StoreFallbacks and StoreRecoveries count the Transport's warnings
	// (fell back to a local budget) and infos (the store answers again).
	StoreFallbacks, StoreRecoveries int
	Stalls, StallErrors             int
	// Server is the fake API's count; PlannedFaults the plan's, by its kinds.
	Server        tollgatetest.Stats
	PlannedFaults map[string]int
}

// Report returns the run's counts. Call it after Run.
func (h *Harness) Report() Report {
	t := h.tally
	t.mu.Lock()
	defer t.mu.Unlock()
	r := Report{
		Name: h.cfg.Name, Seed: h.cfg.Seed, Agents: h.cfg.Agents, Wall: h.wall, Drain: h.drain,
		Calls: t.calls, OK: t.outcomes["status 200, complete"],
		Outcomes: clone(t.outcomes), Violations: clone(t.violations), Examples: map[string][]string{},
		Records: t.records, DuplicateRecords: t.duplicates, StatusMismatches: t.statusMismatches,
		Attempts: t.attempts, Retries: t.attempts - t.attempted, MaxAttempts: t.maxAttempts,
		Sent:       int(h.base.attempts.Load()),
		MaxOverrun: t.maxOverrun, MaxClose: t.maxClose,
		BreakerOpenings: int(h.breakerOpenings.Load()), BreakerChanges: int(h.breakerChanges.Load()),
		StoreFallbacks: int(h.logs.warn.Load()), StoreRecoveries: int(h.logs.info.Load()),
		Stalls: int(h.stalls.Load()), StallErrors: int(h.stallErrors.Load()),
		Server: h.API.Stats(), PlannedFaults: h.Plan.Counts(),
	}
	for k, v := range t.examples {
		r.Examples[k] = slices.Clone(v)
	}
	// A call whose record had not come when it ended may have had it since.
	for _, c := range t.unrecorded {
		switch n := c.records.Load(); {
		case n == 0:
			r.LostRecords++
			r.Examples["call without a usage record"] = appendExample(r.Examples["call without a usage record"], c.desc)
		case n > 1:
			r.DuplicateRecords++
		}
	}
	return r
}

// clone copies a map of counts.
func clone(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// String is the report as lines for t.Log.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: seed %d, %d agents, %v (drain %v)\n", r.Name, r.Seed, r.Agents, r.Wall.Round(time.Millisecond), r.Drain.Round(time.Millisecond))
	fmt.Fprintf(&b, "calls %d, OK (200, body complete) %d, usage records %d (lost %d, duplicate %d, status mismatches %d)\n",
		r.Calls, r.OK, r.Records, r.LostRecords, r.DuplicateRecords, r.StatusMismatches)
	fmt.Fprintf(&b, "attempts %d (sent %d), retries %d, most attempts in a call %d; longest past a deadline %v, slowest Close %v\n",
		r.Attempts, r.Sent, r.Retries, r.MaxAttempts, r.MaxOverrun.Round(time.Millisecond), r.MaxClose.Round(time.Millisecond))
	fmt.Fprintf(&b, "breaker openings %d (state changes %d); store fallbacks %d, recoveries %d; store stalls %d (failed %d)\n",
		r.BreakerOpenings, r.BreakerChanges, r.StoreFallbacks, r.StoreRecoveries, r.Stalls, r.StallErrors)
	fmt.Fprintf(&b, "outcomes:%s\n", sortedCounts(r.Outcomes))
	fmt.Fprintf(&b, "server: requests %d, 2xx %d, limiter 429s %d, injected 429s %d, statuses:%s\n",
		r.Server.Requests, r.Server.OK, r.Server.RateLimited, r.Server.Faults["status_429"], sortedCounts(intKeys(r.Server.Status)))
	fmt.Fprintf(&b, "server faults by kind:%s\n", sortedCounts(r.Server.Faults))
	fmt.Fprintf(&b, "planned faults:%s\n", sortedCounts(r.PlannedFaults))
	if len(r.Violations) > 0 {
		fmt.Fprintf(&b, "VIOLATIONS:%s\n", sortedCounts(r.Violations))
	}
	keys := make([]string, 0, len(r.Examples))
	for k := range r.Examples {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "e.g. %s: %s\n", k, strings.Join(r.Examples[k], " | "))
	}
	return b.String()
}

// intKeys turns counts by number into counts by string.
func intKeys(m map[int]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[fmt.Sprint(k)] = v
	}
	return out
}

// sortedCounts renders counts, largest first.
func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " [%s] %d;", k, m[k])
	}
	return b.String()
}

// tally counts the calls' outcomes.
type tally struct {
	mu                   sync.Mutex
	calls                int
	outcomes, violations map[string]int
	examples             map[string][]string
	records, duplicates  int
	statusMismatches     int
	attempts, attempted  int
	maxAttempts          int
	maxOverrun, maxClose time.Duration
	unrecorded           []*callRec // calls whose record had not come when they ended
}

const maxExamples = 4

// appendExample appends s, shortened, to list unless it holds maxExamples.
func appendExample(list []string, s string) []string {
	if len(list) >= maxExamples {
		return list
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return append(list, s)
}

// example keeps s as an example of kind (an odd error, not a violation).
func (t *tally) example(kind, s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.examples[kind] = appendExample(t.examples[kind], s)
}

// violation counts a broken contract of kind, with s as an example.
func (t *tally) violation(kind, s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.violations[kind]++
	t.examples[kind] = appendExample(t.examples[kind], s)
}

// openFor notes, for an *OpenError of the given reason, how long the pause
// had still to run, how long the call could still have waited and how long
// it had waited for the breaker already.
func (t *tally) openFor(reason string, left, callLeft, paused time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	kind := "breaker open: " + reason
	t.examples[kind] = appendExample(t.examples[kind], fmt.Sprintf("pause left %v, call left %v, waited %v",
		left.Round(time.Millisecond), callLeft.Round(time.Millisecond), paused.Round(time.Millisecond)))
}

// closed notes how long closing c's body took.
func (t *tally) closed(c *callRec, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d > t.maxClose {
		t.maxClose = d
		t.examples["slowest Close"] = []string{fmt.Sprintf("%v for %s", d.Round(time.Millisecond), c.desc)}
	}
}

// overrun notes that what (RoundTrip, or the body's reading and closing)
// ended d past c's deadline (d <= 0: in time).
func (t *tally) overrun(what string, c *callRec, d time.Duration) {
	if d <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if d > t.maxOverrun {
		t.maxOverrun = d
		t.examples["longest past a deadline"] = []string{fmt.Sprintf("%s ended %v past the deadline of %s",
			what, d.Round(time.Millisecond), c.desc)}
	}
}

// recorded counts a usage record and its attempts.
func (t *tally) recorded(r tollgate.UsageRecord) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.records++
	t.attempts += r.Attempts
	if r.Attempts > 0 {
		t.attempted++
	}
	t.maxAttempts = max(t.maxAttempts, r.Attempts)
}

// call counts an ended call: its outcome, and its usage record, which must
// have come exactly once (one that has not come yet is looked at again by
// Report).
func (t *tally) call(outcome string, c *callRec, resp *http.Response) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls++
	t.outcomes[outcome]++
	switch n := c.records.Load(); {
	case n == 0:
		t.unrecorded = append(t.unrecorded, c)
		return
	case n > 1:
		t.duplicates++
		t.examples["duplicate usage record"] = appendExample(t.examples["duplicate usage record"], c.desc)
	}
	if sent, recorded := c.sent.Load(), c.attempts.Load(); sent > recorded {
		const kind = "more attempts sent than recorded"
		t.violations[kind]++
		t.examples[kind] = appendExample(t.examples[kind], fmt.Sprintf("%s: sent %d, recorded %d", c.desc, sent, recorded))
	}
	if resp != nil && int(c.status.Load()) != resp.StatusCode {
		t.statusMismatches++
		t.examples["usage record status mismatch"] = appendExample(t.examples["usage record status mismatch"],
			fmt.Sprintf("%s: response %d, record %d", c.desc, resp.StatusCode, c.status.Load()))
	}
}

// callTable tracks the calls in progress, for the hang watchdog.
type callTable struct {
	mu     sync.Mutex
	nextID int64
	live   map[int64]*callRec
}

// begin registers a call about to start.
func (ct *callTable) begin(agent int, s spec) *callRec {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	ct.nextID++
	now := time.Now()
	c := &callRec{id: ct.nextID, start: now, deadline: now.Add(s.timeout),
		desc: fmt.Sprintf("call %d (agent %d, %v)", ct.nextID, agent, s)}
	ct.live[c.id] = c
	return c
}

// end removes a call that has ended.
func (ct *callTable) end(c *callRec) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	delete(ct.live, c.id)
}

// overdue describes the calls still running grace after their deadline.
func (ct *callTable) overdue(now time.Time, grace time.Duration) []string {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var out []string
	for _, c := range ct.live {
		if now.Sub(c.deadline) > grace {
			phase := "?"
			if p := c.phase.Load(); p != nil {
				phase = *p
			}
			out = append(out, fmt.Sprintf("%s: %v past its deadline, in %s", c.desc, now.Sub(c.deadline).Round(time.Millisecond), phase))
		}
	}
	sort.Strings(out)
	return out
}

// countingTransport is the base transport under tollgate: it counts the
// attempts it is given (and reports each to onAttempt), the response bodies
// it hands out and those closed, and the calls of its CloseIdleConnections.
type countingTransport struct {
	base      *http.Transport
	onAttempt func(*http.Request)
	attempts  atomic.Int64
	opened    atomic.Int64
	closed    atomic.Int64
	closeIdle atomic.Int64
	mu        sync.Mutex
	live      map[*countedBody]string
}

// RoundTrip counts the attempt and hands req to the base transport,
// wrapping the response body to count its Close.
func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.attempts.Add(1)
	t.onAttempt(req)
	resp, err := t.base.RoundTrip(req)
	if resp == nil || resp.Body == nil {
		return resp, err
	}
	b := &countedBody{ReadCloser: resp.Body, t: t}
	t.opened.Add(1)
	t.mu.Lock()
	t.live[b] = fmt.Sprintf("%s %s → %d (%s)", req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
	t.mu.Unlock()
	resp.Body = b
	return resp, err
}

// CloseIdleConnections counts the call: the chain must never make it.
func (t *countingTransport) CloseIdleConnections() { t.closeIdle.Add(1) }

// counts returns the bodies opened and closed, and those still open.
func (t *countingTransport) counts() (opened, closed int64, open []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range t.live {
		open = append(open, d)
	}
	sort.Strings(open)
	return t.opened.Load(), t.closed.Load(), open
}

// countedBody is a response body whose first Close is counted.
type countedBody struct {
	io.ReadCloser
	t    *countingTransport
	once sync.Once
}

// Close counts the body closed (once) and closes it.
func (b *countedBody) Close() error {
	b.once.Do(func() {
		b.t.closed.Add(1)
		b.t.mu.Lock()
		delete(b.t.live, b)
		b.t.mu.Unlock()
	})
	return b.ReadCloser.Close()
}

// connTracker follows the fake API's connections (http.Server.ConnState).
type connTracker struct {
	mu       sync.Mutex
	accepted int
	open     map[net.Conn]http.ConnState
}

// hook is the server's ConnState: it follows each connection until it is
// closed or hijacked.
func (c *connTracker) hook(conn net.Conn, st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st {
	case http.StateNew:
		c.accepted++
		c.open[conn] = st
	case http.StateClosed, http.StateHijacked:
		delete(c.open, conn)
	default:
		c.open[conn] = st
	}
}

// counts returns how many connections were accepted, and the open ones by
// state.
func (c *connTracker) counts() (int, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	open := map[string]int{}
	for _, st := range c.open {
		open[st.String()]++
	}
	return c.accepted, open
}

// logCounter is the Transport's slog handler: it counts warnings (the
// store failed, pacing falls back to a local budget) and other records
// (the store answers again).
type logCounter struct{ warn, info atomic.Int64 }

// Enabled, WithAttrs and WithGroup make logCounter a slog.Handler that
// sees every record.
func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logCounter) WithGroup(string) slog.Handler            { return l }

// Handle counts r by level.
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		l.warn.Add(1)
	} else {
		l.info.Add(1)
	}
	return nil
}

// HeapSample is the live heap at one moment, after a GC.
type HeapSample struct {
	At         time.Duration // since sampling started
	HeapAlloc  uint64
	Goroutines int
}

// HeapSampler samples the heap periodically, after runtime.GC.
type HeapSampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples []HeapSample
}

// StartHeapSampler takes a sample now and then every interval until Stop.
func StartHeapSampler(every time.Duration) *HeapSampler {
	s := &HeapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	take := func() {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		s.samples = append(s.samples, HeapSample{At: time.Since(start), HeapAlloc: m.HeapAlloc, Goroutines: runtime.NumGoroutine()})
	}
	take()
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				take()
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the samples.
func (s *HeapSampler) Stop() []HeapSample {
	close(s.stop)
	<-s.done
	return s.samples
}

// HeapThirds returns the lower quartile of the live heap over the first
// and over the last third of samples, leaving out the first sample (taken
// before the fleet started). The lower quartile follows the heap's floor,
// which a leak raises, rather than the peaks of the moments when many calls
// are in progress, which are noisy (under -race especially).
func HeapThirds(samples []HeapSample) (first, last uint64) {
	if len(samples) > 0 {
		samples = samples[1:]
	}
	n := len(samples) / 3
	if n == 0 {
		return 0, 0
	}
	quartile := func(ss []HeapSample) uint64 {
		v := make([]uint64, len(ss))
		for i, s := range ss {
			v[i] = s.HeapAlloc
		}
		slices.Sort(v)
		return v[len(v)/4]
	}
	return quartile(samples[:n]), quartile(samples[len(samples)-n:])
}

// FaultPlan chooses the fake API's fault for each request
// (tollgatetest.Config.FaultFunc): from a generator seeded by the plan's
// seed and the request's arrival number, so that a seed replays the same
// sequence of faults by arrival (which request arrives when still depends
// on timing). About a quarter of the requests get one of:
//
//   - a connection reset before any response (Fault.DropConnection), 3 %;
//   - a 429 with retry-after "1", with "0.3", and without, 1.5 % each;
//   - a 529 (1 %) or a 500, 502 or 503 (1 %);
//   - a mid-stream error event after -1 (none), 0 (half), 1 or 3 text
//     deltas (MidStreamError, MidStreamDeltas), 4 %;
//   - a body cut short: half a JSON document, or a stream dropped after
//     some deltas (DropMidBody), 3 %;
//   - slow headers, 50–600 ms (Delay), 3 %; a slow body, 5–60 ms between
//     stream events or before the second half of a JSON body (BodyDelay), 3 %;
//   - malformed or absurd rate-limit headers (Header, see badHeaders), 4 %.
//
// On top of that come 529 storms: windows of 1–2 s, every 4–9 s, in which
// three requests in four get a 529, one in three of those with
// retry-after "1". Every fault handed out is counted by its kind (Counts).
type FaultPlan struct {
	seed   uint64
	storms []window
	start  atomic.Pointer[time.Time]
	mu     sync.Mutex
	counts map[string]int
}

// window is a span of time since the plan's start.
type window struct{ from, to time.Duration }

// stormHorizon is how far ahead the plan lays out its storms.
const stormHorizon = 6 * time.Hour

// NewFaultPlan returns the plan for seed; its storms are laid out from
// Start on.
func NewFaultPlan(seed uint64) *FaultPlan {
	rng := rand.New(rand.NewPCG(seed, 1<<41))
	p := &FaultPlan{seed: seed, counts: map[string]int{}}
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	for at := between(1500*time.Millisecond, 3*time.Second); at < stormHorizon; {
		w := window{from: at, to: at + between(time.Second, 2*time.Second)}
		p.storms = append(p.storms, w)
		at = w.to + between(4*time.Second, 9*time.Second)
	}
	return p
}

// Start sets the time the storms are counted from; before it no storm
// blows.
func (p *FaultPlan) Start(t time.Time) { p.start.Store(&t) }

// Storms returns the storm windows that begin before d, as offsets from
// Start.
func (p *FaultPlan) Storms(d time.Duration) []string {
	var out []string
	for _, w := range p.storms {
		if w.from >= d {
			break
		}
		out = append(out, fmt.Sprintf("%v–%v", w.from.Round(100*time.Millisecond), w.to.Round(100*time.Millisecond)))
	}
	return out
}

// inStorm reports whether a storm blows at now.
func (p *FaultPlan) inStorm(now time.Time) bool {
	start := p.start.Load()
	if start == nil {
		return false
	}
	since := now.Sub(*start)
	i := sort.Search(len(p.storms), func(i int) bool { return p.storms[i].to > since })
	return i < len(p.storms) && p.storms[i].from <= since
}

// Counts returns how many faults of each kind the plan handed out.
func (p *FaultPlan) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return clone(p.counts)
}

// count counts a fault handed out.
func (p *FaultPlan) count(kind string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts[kind]++
}

// Fault is the plan's tollgatetest.Config.FaultFunc.
func (p *FaultPlan) Fault(r *http.Request, n int) *tollgatetest.Fault {
	rng := rand.New(rand.NewPCG(p.seed, uint64(n)))
	openAI := strings.Contains(r.URL.Path, "chat/completions")
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	storm, x := rng.Float64(), rng.Float64()
	var f tollgatetest.Fault
	var kind string
	switch {
	case p.inStorm(time.Now()) && storm < 0.75:
		f.Status, kind = 529, "529 storm"
		if rng.IntN(3) == 0 {
			f.RetryAfter, kind = "1", "529 storm, retry-after 1"
		}
	case x < 0.03:
		f.DropConnection, kind = true, "connection reset"
	case x < 0.045:
		f.Status, f.RetryAfter, kind = 429, "1", "429, retry-after 1"
	case x < 0.06:
		f.Status, f.RetryAfter, kind = 429, "0.3", "429, retry-after 0.3"
	case x < 0.075:
		f.Status, kind = 429, "429, no retry-after"
	case x < 0.085:
		f.Status, kind = 529, "529"
	case x < 0.095:
		f.Status = []int{500, 502, 503}[rng.IntN(3)]
		kind = fmt.Sprintf("%d", f.Status)
	case x < 0.135:
		f.MidStreamError, f.MidStreamDeltas = true, []int{-1, 0, 1, 3}[rng.IntN(4)]
		kind = fmt.Sprintf("mid-stream error after deltas=%d", f.MidStreamDeltas)
	case x < 0.165:
		f.DropMidBody, f.MidStreamDeltas = true, []int{-1, 0, 2}[rng.IntN(3)]
		kind = "truncated body"
	case x < 0.195:
		f.Delay, kind = between(50*time.Millisecond, 600*time.Millisecond), "slow headers"
	case x < 0.225:
		f.BodyDelay, kind = between(5*time.Millisecond, 60*time.Millisecond), "slow body"
	case x < 0.265:
		b := badHeaders[rng.IntN(len(badHeaders))]
		f.Header, kind = b.header(openAI), "bad headers: "+b.name
	default:
		return nil
	}
	p.count(kind)
	return &f
}

// badHeaders are the malformed and absurd rate-limit headers of the plan,
// each with its Anthropic and its OpenAI form. A value tollgate cannot parse
// must be ignored; one it can (maxint64, a reset decades off) must not
// break pacing for good.
var badHeaders = []badHeader{
	{name: "remaining -5",
		anthropic: map[string]string{"anthropic-ratelimit-requests-remaining": "-5"},
		openAI:    map[string]string{"x-ratelimit-remaining-requests": "-5"}},
	{name: "remaining abc",
		anthropic: map[string]string{"anthropic-ratelimit-input-tokens-remaining": "abc", "anthropic-ratelimit-requests-remaining": "abc"},
		openAI:    map[string]string{"x-ratelimit-remaining-tokens": "abc", "x-ratelimit-remaining-requests": "abc"}},
	{name: "remaining 10^23",
		anthropic: map[string]string{"anthropic-ratelimit-output-tokens-remaining": "99999999999999999999999"},
		openAI:    map[string]string{"x-ratelimit-remaining-tokens": "99999999999999999999999"}},
	{name: "remaining maxint64",
		anthropic: map[string]string{"anthropic-ratelimit-requests-remaining": "9223372036854775807"},
		openAI:    map[string]string{"x-ratelimit-remaining-requests": "9223372036854775807"}},
	{name: "remaining 1e30",
		anthropic: map[string]string{"anthropic-ratelimit-tokens-remaining": "1e30"},
		openAI:    map[string]string{"x-ratelimit-remaining-tokens": "1e30"}},
	{name: "reset yesterday",
		anthropic: map[string]string{"anthropic-ratelimit-requests-reset": "yesterday", "anthropic-ratelimit-output-tokens-reset": "yesterday"},
		openAI:    map[string]string{"x-ratelimit-reset-requests": "yesterday", "x-ratelimit-reset-tokens": "yesterday"}},
	{name: "reset in the past",
		anthropic: map[string]string{"anthropic-ratelimit-requests-reset": "2001-01-01T00:00:00Z"},
		openAI:    map[string]string{"x-ratelimit-reset-requests": "-5s"}},
	{name: "reset a century ahead",
		anthropic: map[string]string{"anthropic-ratelimit-input-tokens-reset": "2126-01-01T00:00:00Z"},
		openAI:    map[string]string{"x-ratelimit-reset-tokens": "876000h"}},
	{name: "limit abc",
		anthropic: map[string]string{"anthropic-ratelimit-requests-limit": "abc"},
		openAI:    map[string]string{"x-ratelimit-limit-requests": "abc"}},
	{name: "limit 0",
		anthropic: map[string]string{"anthropic-ratelimit-input-tokens-limit": "0"},
		openAI:    map[string]string{"x-ratelimit-limit-tokens": "0"}},
	{name: "limit maxint64",
		anthropic: map[string]string{"anthropic-ratelimit-output-tokens-limit": "9223372036854775807"},
		openAI:    map[string]string{"x-ratelimit-limit-tokens": "9223372036854775807"}},
	{name: "limit 1e30",
		anthropic: map[string]string{"anthropic-ratelimit-requests-limit": "1e30"},
		openAI:    map[string]string{"x-ratelimit-limit-requests": "1e30"}},
	{name: "empty values",
		anthropic: map[string]string{"anthropic-ratelimit-requests-remaining": "", "anthropic-ratelimit-requests-limit": "", "anthropic-ratelimit-requests-reset": ""},
		openAI:    map[string]string{"x-ratelimit-remaining-requests": "", "x-ratelimit-limit-requests": "", "x-ratelimit-reset-requests": ""}},
	{name: "rate-limit headers stripped", stripped: true},
}

// rateLimitHeaderNames are every rate-limit header the fake API sends.
var rateLimitHeaderNames = func() []string {
	var out []string
	for _, dim := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		for _, f := range []string{"limit", "remaining", "reset"} {
			out = append(out, "anthropic-ratelimit-"+dim+"-"+f)
		}
	}
	for _, f := range []string{"limit", "remaining", "reset"} {
		for _, dim := range []string{"requests", "tokens"} {
			out = append(out, "x-ratelimit-"+f+"-"+dim)
		}
	}
	return out
}()

// badHeader is one case of badHeaders.
type badHeader struct {
	name string
	// anthropic and openAI map header names to the values sent in their
	// place ("" is an empty value).
	anthropic, openAI map[string]string
	// stripped removes every rate-limit header, as a gateway might.
	stripped bool
}

// header is the Fault.Header of b for a request in the given dialect.
func (b badHeader) header(openAI bool) http.Header {
	h := http.Header{}
	if b.stripped {
		for _, name := range rateLimitHeaderNames {
			h[http.CanonicalHeaderKey(name)] = nil
		}
		return h
	}
	m := b.anthropic
	if openAI {
		m = b.openAI
	}
	for name, v := range m {
		h.Set(name, v)
	}
	return h
}
