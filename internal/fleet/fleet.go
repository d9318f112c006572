// Package fleet runs a fleet of agents against a rate-limited Anthropic
// Messages API through one or more "clients under test", side by side, and
// measures what each client got out of the same limits.
//
// Each run gets its own fake API (a tollgatetest.Server built from the same
// Config, so with the same limits) and its own connection pool, so runs can
// go side by side in one process without sharing anything but the CPU. Every
// agent of a run loops: one call through the client (the official SDK's
// Messages.New, or NewStreaming consuming the whole stream) after another,
// drawn from a generator seeded per agent, so every run sends the same
// sequence of calls. What the calls are is the Workload: one-shot prompts of
// a drawn size (the default), or the multi-turn, prompt-cached
// conversations of a coding-agent fleet (WorkloadAgents; see Conversation).
//
// # How a run ends
//
// At the deadline the run stops sending: any HTTP attempt that has not yet
// been handed to the connection pool fails at once (the call is "cut off",
// counted neither as a success nor as a failure), and the attempts already
// sent are allowed to finish (up to Config.Drain); the calls then get half a
// second to return before the rest (those waiting to retry, whose next
// attempt would be refused) are cancelled. Everything the server admitted
// before the deadline is thus counted, and nothing it admitted after. When
// the caller's context is cancelled instead (Ctrl-C), the run stops the same
// way but without waiting, and its Result is marked Interrupted: whatever
// was in flight is lost from the counts.
//
// # What is measured
//
// Requests, tokens and 429s are taken from the server's own counters (see
// tollgatetest.Stats). The share of a limit used is, for each limited
// dimension d with a per-minute limit L_d:
//
//	share_d = consumed_d / (L_d + L_d · elapsed / 1 min)
//
// The denominator is the most the server could have admitted in the elapsed
// time: its buckets start full (capacity L_d) and refill at L_d per minute.
// consumed_d is what the server counted against that limit: for input
// tokens, input + cache creation tokens (cache reads do not count on most
// models; see tollgatetest.Stats.InputTokens). The binding limit is the
// dimension with the largest share. Latency percentiles are over successful
// calls, by the nearest-rank method. The cache figures are the server's:
// tokens read from and written to the prompt cache, and the share of all
// prompt tokens that were read from it.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Defaults for the zero fields of a Config.
const (
	DefaultAgents           = 16
	DefaultDuration         = 2 * time.Minute
	DefaultModel            = "claude-sonnet-5"
	DefaultMaxTokens        = 256
	DefaultMinPromptTokens  = 300
	DefaultMaxPromptTokens  = 1500
	DefaultProgressInterval = time.Second
	DefaultDrain            = 30 * time.Second
	// DefaultAPIKey is the key sent to the fake API.
	DefaultAPIKey = "tollgate-fleet"
)

// Limits are per-minute rate limits; zero means unlimited.
type Limits struct {
	RequestsPerMinute     int `json:"requests_per_minute,omitempty"`
	InputTokensPerMinute  int `json:"input_tokens_per_minute,omitempty"`
	OutputTokensPerMinute int `json:"output_tokens_per_minute,omitempty"`
	TokensPerMinute       int `json:"tokens_per_minute,omitempty"`
}

// Tier1 is the older Tier 1 of Anthropic's Sonnet limits: 50 requests,
// 30,000 input tokens and 8,000 output tokens per minute.
var Tier1 = Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}

// ServerLimits returns the limits a tollgatetest.Config enforces.
func ServerLimits(c tollgatetest.Config) Limits {
	return Limits{
		RequestsPerMinute:     max(0, c.RequestsPerMinute),
		InputTokensPerMinute:  max(0, c.InputTokensPerMinute),
		OutputTokensPerMinute: max(0, c.OutputTokensPerMinute),
		TokensPerMinute:       max(0, c.TokensPerMinute),
	}
}

// Config describes a fleet and the fake API each run gets.
type Config struct {
	Agents   int           // agents per run; 0 means DefaultAgents; Groups, when set, replace it
	Duration time.Duration // how long agents keep starting calls; 0 means DefaultDuration
	Stream   bool          // use Messages.NewStreaming and read every event

	Model string // 0: DefaultModel
	// MaxTokens is max_tokens of every call; 0 means DefaultMaxTokens
	// (DefaultAgentsMaxTokens for WorkloadAgents).
	MaxTokens int

	// Workload is what the agents send; "" means WorkloadOneShot.
	Workload Workload
	// Conversation shapes WorkloadAgents; zero fields take the defaults.
	Conversation Conversation

	// Prompt sizes (one-shot) are drawn uniformly from [MinPromptTokens,
	// MaxPromptTokens], counted by tollgatetest.CountTokens; zeros mean the
	// defaults (300–1500).
	MinPromptTokens, MaxPromptTokens int

	// Reply lengths (one-shot) are drawn by each server uniformly from
	// [MinOutputTokens, MaxOutputTokens] and capped at MaxTokens; zeros mean
	// MaxTokens/4 and MaxTokens. Ignored when Server.OutputTokensFunc is
	// set, and by the agents workload, whose calls ask for their reply
	// length.
	MinOutputTokens, MaxOutputTokens int

	// Seed drives the prompts (per agent) and the reply lengths (per
	// server); runs with the same seed see the same sequences.
	Seed uint64

	// Server is the fake API every run gets its own copy of.
	Server tollgatetest.Config

	// BaseURL, if set, sends every run to this API instead of fake servers
	// (Server is then ignored), with APIKey. There are no server counters
	// then: 429s are counted from the responses the fleet's transport sees,
	// tokens from the usage the responses report, and Limits (which must then
	// be given for shares to be computed) is what the shares are against.
	BaseURL string
	APIKey  string
	// Limits overrides the limits the shares are computed against; zero
	// means those of Server.
	Limits Limits

	// Progress, if set, is called every ProgressInterval (0: one second)
	// with the state of every run, in the order of the clients, from one
	// goroutine; and once more at the end, with Done set.
	Progress         func([]Progress)
	ProgressInterval time.Duration

	// Drain caps how long, after the deadline, the attempts already sent
	// may take to finish; 0 means DefaultDrain.
	Drain time.Duration

	// Groups, when set, make up the fleet instead of Agents: the agents of
	// a group share its name (Call.Group, Result.Groups, GroupOf in the
	// calls' contexts, for clients that tell groups apart) and its pace.
	Groups []Group

	// API is what the agents call: APIAnthropic (the Messages API through
	// the Anthropic SDK, the default) or APIOpenAI (Chat Completions
	// through openai-go).
	API string
}

// The APIs a fleet can call.
const (
	APIAnthropic = "anthropic"
	APIOpenAI    = "openai"
)

// Group is a part of a fleet: agents that make the same kind of calls at the
// same pace.
type Group struct {
	Name   string
	Agents int
	// Every, when above zero, has each agent start a call that often (the
	// next one as soon as the last ends, when it ended late) instead of one
	// right after another; the group's agents are spread evenly over the
	// first period.
	Every time.Duration
}

// groupKey carries a call's group name in its context.
type groupKey struct{}

// GroupOf returns the name of the group whose agent makes the call ctx is
// for: "" outside groups.
func GroupOf(ctx context.Context) string {
	g, _ := ctx.Value(groupKey{}).(string)
	return g
}

func (c Config) withDefaults() Config {
	if c.Agents <= 0 {
		c.Agents = DefaultAgents
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.Model == "" {
		c.Model = DefaultModel
	}
	if c.Workload == "" {
		c.Workload = WorkloadOneShot
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = DefaultMaxTokens
		if c.Workload == WorkloadAgents {
			c.MaxTokens = DefaultAgentsMaxTokens
		}
	}
	c.Conversation = c.Conversation.withDefaults()
	if c.MinPromptTokens <= 0 {
		c.MinPromptTokens = DefaultMinPromptTokens
	}
	if c.MaxPromptTokens <= 0 {
		c.MaxPromptTokens = DefaultMaxPromptTokens
	}
	if c.MaxOutputTokens <= 0 {
		c.MaxOutputTokens = c.MaxTokens
	}
	if c.MinOutputTokens <= 0 {
		c.MinOutputTokens = max(1, c.MaxTokens/4)
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.Drain <= 0 {
		c.Drain = DefaultDrain
	}
	if c.APIKey == "" && c.BaseURL == "" {
		c.APIKey = DefaultAPIKey
	}
	if c.Limits == (Limits{}) && c.BaseURL == "" {
		c.Limits = ServerLimits(c.Server)
	}
	if c.API == "" {
		c.API = APIAnthropic
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.MinPromptTokens > c.MaxPromptTokens:
		return fmt.Errorf("fleet: prompt sizes: min %d > max %d", c.MinPromptTokens, c.MaxPromptTokens)
	case c.MinOutputTokens > c.MaxOutputTokens:
		return fmt.Errorf("fleet: reply lengths: min %d > max %d", c.MinOutputTokens, c.MaxOutputTokens)
	case c.BaseURL != "" && c.APIKey == "":
		return errors.New("fleet: BaseURL needs an APIKey")
	case c.Workload != WorkloadOneShot && c.Workload != WorkloadAgents:
		return fmt.Errorf("fleet: unknown workload %q (known: %s, %s)", c.Workload, WorkloadOneShot, WorkloadAgents)
	case c.API != APIAnthropic && c.API != APIOpenAI:
		return fmt.Errorf("fleet: unknown API %q (known: %s, %s)", c.API, APIAnthropic, APIOpenAI)
	case c.Workload == WorkloadAgents:
		return c.Conversation.validate()
	}
	for _, g := range c.Groups {
		if g.Agents < 1 || g.Name == "" || g.Every < 0 {
			return fmt.Errorf("fleet: group %q: needs a name and at least one agent, and a pace of zero or more", g.Name)
		}
	}
	return nil
}

// agentSpec is one agent of a run: its number (which seeds its prompts)
// and its group.
type agentSpec struct {
	n     int
	group Group
	// slot is its place in its group, which spreads the group's start.
	slot int
}

// agents returns the agents of a run of client c.
func (c Config) agents(client Client) []agentSpec {
	if len(c.Groups) == 0 {
		out := make([]agentSpec, c.Agents)
		for i := range out {
			out[i] = agentSpec{n: i}
		}
		return out
	}
	var out []agentSpec
	n := 0
	for _, g := range c.Groups {
		for slot := range g.Agents {
			if client.Only == nil || slices.Contains(client.Only, g.Name) {
				out = append(out, agentSpec{n: n, group: g, slot: slot})
			}
			n++
		}
	}
	return out
}

// Client is a client under test: how to build it for one run.
type Client struct {
	Name string
	// Only, when set, names the groups (Config.Groups) whose agents this
	// client's run has; the others sit it out.
	Only []string
	// New builds the client for one run. It must send every HTTP attempt
	// through env.Transport (wrapping it as it likes): the fleet counts
	// attempts there and stops the run there.
	New func(env Env) (*Target, error)
}

// Env is what a Client is built from.
type Env struct {
	BaseURL string // the API's base URL, for option.WithBaseURL
	APIKey  string
	// Transport is the run's own connection pool, wrapped by the fleet. It
	// has CloseIdleConnections; the fleet calls it when the run ends.
	Transport http.RoundTripper
	// Limits are the account's limits, for clients that are told them.
	Limits Limits
}

// Target is a client built for one run.
type Target struct {
	// Client makes the calls (Config.API anthropic); OpenAI makes them for
	// Config.API openai, where it is set.
	Client anthropic.Client
	OpenAI *openai.Client
	// Wrap, if set, runs each call: it must call do exactly once with ctx
	// or a context derived from it (e.g. after taking a semaphore), and
	// return its error, or return an error without calling do.
	Wrap func(ctx context.Context, do func(context.Context) error) error
	// Status, if set, returns a short live status for the progress line,
	// such as a circuit breaker's state.
	Status func() string
	// Classify, if set, names the kind of a call's error when it knows it
	// better than the fleet (e.g. "breaker_open"); "" leaves it to the fleet.
	Classify func(error) string
	// Close, if set, releases what New built; called once the run is over.
	Close func()
}

// returnGrace is how long, once a stopped run's attempts are all finished,
// its calls get to return before they are cancelled.
const returnGrace = 500 * time.Millisecond

// Run runs every client's fleet side by side, each against its own fake API
// (or all against Config.BaseURL), for Config.Duration, and returns one
// Result per client in the same order. When ctx is cancelled first, it stops
// at once and returns what was measured so far, each Result marked
// Interrupted. The error is non-nil only when a run could not be set up.
func Run(ctx context.Context, cfg Config, clients ...Client) ([]Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(clients) == 0 {
		return nil, errors.New("fleet: no clients")
	}
	runs := make([]*run, 0, len(clients))
	closeAll := func() {
		for _, r := range runs {
			r.close()
		}
	}
	for _, c := range clients {
		r, err := newRun(cfg, c)
		if err != nil {
			closeAll()
			return nil, err
		}
		runs = append(runs, r)
	}

	// The runs' own context: cancelled after the drain, or at once on ctx.
	runCtx, cancelRuns := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRuns()
	start := time.Now()
	var agents sync.WaitGroup
	for i, r := range runs {
		r.start = start
		for _, a := range cfg.agents(clients[i]) {
			agents.Go(func() { r.agent(runCtx, a) })
		}
	}

	stopProgress := reportProgress(cfg, runs)
	end, interrupted := awaitEnd(ctx, cfg, runs, &agents)
	cancelRuns()
	agents.Wait()
	stopProgress()

	results := make([]Result, len(runs))
	for i, r := range runs {
		results[i] = r.result(cfg, end, interrupted)
	}
	if cfg.Progress != nil {
		cfg.Progress(progressOf(runs, end, true))
	}
	closeAll()
	return results, nil
}

// reportProgress calls cfg.Progress every cfg.ProgressInterval, if set,
// until the function it returns is called (which waits for the last call).
func reportProgress(cfg Config, runs []*run) (stop func()) {
	if cfg.Progress == nil {
		return func() {}
	}
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				cfg.Progress(progressOf(runs, time.Now(), false))
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// awaitEnd waits out the run's duration and stops the runs' agents from
// starting calls; then, unless ctx ended first, it lets the attempts already
// sent finish, so everything the servers admitted before the deadline is
// counted, and gives the calls a moment to return what they read (calls
// waiting to retry, whose next attempt would be refused anyway, are then
// cancelled by the caller). It returns when the duration ended and whether
// ctx interrupted the run.
func awaitEnd(ctx context.Context, cfg Config, runs []*run, agents *sync.WaitGroup) (end time.Time, interrupted bool) {
	deadline := time.NewTimer(cfg.Duration)
	select {
	case <-deadline.C:
	case <-ctx.Done():
		deadline.Stop()
		interrupted = true
	}
	end = time.Now()
	for _, r := range runs {
		r.stop()
	}
	if interrupted {
		return end, true
	}
	drain := time.NewTimer(cfg.Drain)
	defer drain.Stop()
drained:
	for _, r := range runs {
		select {
		case <-r.base.drained:
		case <-drain.C:
			break drained
		case <-ctx.Done():
			return end, true
		}
	}
	agentsDone := make(chan struct{})
	go func() {
		agents.Wait()
		close(agentsDone)
	}()
	grace := time.NewTimer(returnGrace)
	defer grace.Stop()
	select {
	case <-agentsDone:
	case <-grace.C:
	case <-ctx.Done():
		return end, true
	}
	return end, false
}

// run is one client's fleet.
type run struct {
	name   string
	cfg    Config
	srv    *tollgatetest.Server // nil against a real API
	base   *baseTransport
	target *Target
	start  time.Time

	stopped   atomic.Bool
	ok        atomic.Int64
	failed    atomic.Int64
	inTok     atomic.Int64 // client-side usage of successful calls
	outTok    atomic.Int64
	readTok   atomic.Int64
	createTok atomic.Int64

	mu    sync.Mutex
	calls []Call

	closeOnce sync.Once
}

func newRun(cfg Config, c Client) (*run, error) {
	if c.New == nil {
		return nil, fmt.Errorf("fleet: client %q has no New", c.Name)
	}
	r := &run{name: c.Name, cfg: cfg}
	url := cfg.BaseURL
	if url == "" {
		sc := cfg.Server
		if sc.OutputTokensFunc == nil {
			sc.OutputTokensFunc = ReplyLengths(cfg.Seed, cfg.MinOutputTokens, cfg.MaxOutputTokens)
		}
		r.srv = tollgatetest.NewServer(sc)
		url = r.srv.URL
	}
	r.base = newBaseTransport()
	t, err := c.New(Env{BaseURL: url, APIKey: cfg.APIKey, Transport: r.base, Limits: cfg.Limits})
	if err != nil {
		r.close()
		return nil, fmt.Errorf("fleet: client %q: %w", c.Name, err)
	}
	if t == nil {
		r.close()
		return nil, fmt.Errorf("fleet: client %q: New returned no target", c.Name)
	}
	if cfg.API == APIOpenAI && t.OpenAI == nil {
		r.close()
		return nil, fmt.Errorf("fleet: client %q does not call the OpenAI API", c.Name)
	}
	r.target = t
	return r, nil
}

// stop ends the run: agents start no more calls, attempts are refused.
func (r *run) stop() {
	r.stopped.Store(true)
	r.base.stop()
}

func (r *run) close() {
	r.closeOnce.Do(func() {
		if r.target != nil && r.target.Close != nil {
			r.target.Close()
		}
		r.base.CloseIdleConnections()
		if r.srv != nil {
			r.srv.Close()
		}
	})
}

func (r *run) record(c Call) {
	switch {
	case c.OK:
		r.ok.Add(1)
		r.inTok.Add(int64(c.InputTokens))
		r.outTok.Add(int64(c.OutputTokens))
		r.readTok.Add(int64(c.CacheReadTokens))
		r.createTok.Add(int64(c.CacheCreationTokens))
	case c.Kind != KindCutOff:
		r.failed.Add(1)
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}
