// Package procfleet runs a fleet of agents across several OS processes
// against one shared fake API, to measure what tollgate makes of limits that
// processes share: through one Redis (package redisstore), or each with a
// private in-memory budget, as before there was a store.
//
// Run starts, per fleet, one tollgatetest server on 127.0.0.1 in this
// process, then re-executes a program (Config.Command, by default this one)
// once per process of every fleet, with WorkerEnv in its environment. That
// program must call MaybeRunWorker before anything else (in main, or in a
// test binary's TestMain): the call turns the process into a worker that
// runs fleet.Run with Config.BaseURL set to its fleet's server, through
// peers.Tollgate, and reports back.
//
// # The worker protocol
//
// The parent writes two JSON lines on the worker's stdin: its configuration
// (the server's URL and key, its agents, duration and seed, its store), and,
// once every worker of the run has said it is ready, the instant to start at,
// the same for all. The worker writes JSON lines on stdout, nothing else:
// {"ready":true} once it is set up (its Redis answers), a progress line every
// Config.ProgressInterval, and its report (its fleet.Result, every call, and what it saw of
// its store) when its fleet is done. Its stderr is the parent's, each line
// prefixed with the worker's name.
//
// A worker stops early, and still reports (its result marked Interrupted),
// when its stdin ends, which is how the parent stops it on cancellation, and
// how it notices that the parent died; and on SIGINT or SIGTERM. The parent
// kills a worker that has not exited a few seconds after being told to stop,
// and always waits for every worker before returning. On Linux a worker is
// also killed by the kernel when the parent dies (Pdeathsig).
//
// # What is measured
//
// Requests, tokens and 429s come from the fleet's server, whose counters see
// every process: the share of the binding limit is the same formula as
// package fleet's (consumed_d / (L_d + L_d·elapsed/1 min), the largest over
// the limited dimensions). Calls, failures and latencies are the workers'
// own, merged. In Redis mode, the round trips to Redis are the growth of the
// Redis server's INFO commandstats over the run (see RedisStats), cross-checked
// against what the workers' Redis clients counted sending.
package procfleet

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// WorkerEnv is the environment variable that makes MaybeRunWorker run the
// process as a worker.
const WorkerEnv = "TOLLGATE_PROCFLEET_WORKER"

// Defaults for the zero fields of a Config.
const (
	DefaultProcesses    = 4
	DefaultStartTimeout = 30 * time.Second
	// stopGrace is how long a worker told to stop (its stdin closed) has to
	// report and exit before it is killed.
	stopGrace = 10 * time.Second
	// startLead is how far ahead of the start instant the parent sends it,
	// so that every worker has it in time.
	startLead = 100 * time.Millisecond
)

// Mode is where a fleet's processes keep their budgets.
type Mode string

// The modes.
const (
	// ModeRedis shares one budget per Key among all the processes, through
	// tollgate.WithStore(redisstore.New(...)) on one Redis.
	ModeRedis Mode = "redis"
	// ModeMemory gives each process its own budget in memory (the default
	// of a Transport), as if there were no store.
	ModeMemory Mode = "memory"
)

// Fleet is one fleet of a Run: Config.Processes processes, each running
// Config.Fleet's agents, against a fake API of the fleet's own.
type Fleet struct {
	Name string // in progress lines and results; "" means the mode
	Mode Mode
	// RedisAddr (host:port) and RedisPrefix (redisstore.WithPrefix; ""
	// means redisstore's default) are the store of ModeRedis.
	RedisAddr   string
	RedisPrefix string
}

// Config describes the processes of every fleet of a Run.
type Config struct {
	// Command is the program to run for each worker and its arguments:
	// a program that calls MaybeRunWorker first thing. Empty means this
	// program (os.Executable), with no arguments.
	Command []string
	// Processes per fleet; 0 means DefaultProcesses.
	Processes int
	// Fleet is what each process runs, and the server each fleet gets:
	// Agents (per process), Duration, Stream, Model, MaxTokens, prompt and
	// reply sizes, Drain, and Limits (which tollgate is told when Told is
	// set; zero means those of Server). Seed drives the servers' reply
	// lengths; process i of every fleet draws its prompts from a seed
	// derived from Seed and i, so processes differ and fleets match. Server
	// is the fake API each fleet shares among its processes (a nil
	// OutputTokensFunc draws reply lengths as package fleet does). BaseURL,
	// APIKey and Progress are ignored.
	Fleet fleet.Config
	// Told tells tollgate the limits (tollgate.WithLimits) instead of
	// letting it learn them from the first responses.
	Told bool
	// StoreTimeout, if above zero, is tollgate.WithStoreTimeout in Redis
	// mode.
	StoreTimeout time.Duration
	// Stderr receives the workers' stderr, each line prefixed with the
	// worker's name; nil discards it.
	Stderr io.Writer
	// Progress, if set, is called every ProgressInterval (0: one second)
	// once the fleets have started, with the state of every fleet in the
	// order given to Run, from one goroutine; and once more at the end,
	// with Done set. OK and Failed are the workers' latest reports; the
	// rest is the servers' counters.
	Progress         func([]fleet.Progress)
	ProgressInterval time.Duration
	// StartTimeout bounds the wait for every worker to be ready; 0 means
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// OnStart, if set, is called once with the instant every worker starts
	// at (a little after the call).
	OnStart func(start time.Time)
}

// Result is what one fleet's processes came to together.
type Result struct {
	// Result is the fleet's combined result, as package fleet computes it:
	// Used and RateLimited from the server (Source "server"), every
	// worker's calls merged (their agents numbered across processes),
	// attempts summed, Elapsed the longest of the workers'.
	fleet.Result
	Mode      Mode
	Processes int
	// Workers are the workers' own reports, in process order.
	Workers []Worker
	// Redis is what the fleet's processes asked of Redis; nil in memory
	// mode, or when the server's counters could not be read.
	Redis *RedisStats
}

// Run runs every fleet side by side: all processes of all fleets start at
// the same instant, each fleet against its own fake API, and run for
// Config.Fleet.Duration. It returns one Result per fleet, in order. When ctx
// is cancelled after the start, the workers are stopped and the Results
// cover what they measured, marked Interrupted; before the start, Run
// returns ctx's error. A worker that fails, or exits without a report, fails
// the whole Run. Run returns only once every worker has exited.
func Run(ctx context.Context, cfg Config, fleets ...Fleet) ([]Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if fleets, err = named(fleets); err != nil {
		return nil, err
	}
	runs := make([]*run, len(fleets))
	for i, f := range fleets {
		sc := cfg.Fleet.Server
		if sc.OutputTokensFunc == nil {
			sc.OutputTokensFunc = fleet.ReplyLengths(cfg.Fleet.Seed, cfg.Fleet.MinOutputTokens, cfg.Fleet.MaxOutputTokens)
		}
		srv := tollgatetest.NewServer(sc)
		defer srv.Close()
		runs[i] = &run{fleet: f, srv: srv}
	}
	// The Redis counters before any worker connects, so that the
	// connections' set-up is counted too.
	before, err := redisCounters(ctx, runs)
	if err != nil {
		return nil, err
	}

	// The workers' own context: cancelled at once when ctx is, or when a
	// worker fails; cancelling it closes their stdins.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var all []*proc
	defer func() {
		stop()
		for _, p := range all {
			<-p.exited
		}
	}()
	var out sync.Mutex // serialises the workers' stderr lines
	failed := make(chan *proc, 1)
	for _, r := range runs {
		for i := range cfg.Processes {
			p, err := startProc(wctx, cfg, r, i, &out, failed)
			if err != nil {
				return nil, err
			}
			r.procs = append(r.procs, p)
			all = append(all, p)
		}
	}
	if err := awaitReady(ctx, cfg, all, failed); err != nil {
		return nil, err
	}
	start := time.Now().Add(startLead)
	for _, p := range all {
		if err := p.send(startMessage{StartAt: start}); err != nil {
			<-p.exited // gone already: its exit says why
			return nil, p.failure()
		}
	}
	if cfg.OnStart != nil {
		cfg.OnStart(start)
	}
	if err := watch(cfg, runs, all, failed, start, stop); err != nil {
		return nil, err
	}
	end := time.Now()
	for _, p := range all {
		if !p.succeeded() {
			return nil, p.failure()
		}
	}

	results := make([]Result, len(runs))
	for i, r := range runs {
		results[i] = r.result(cfg)
	}
	addRedisStats(ctx, cfg, runs, before, results)
	if cfg.Progress != nil {
		cfg.Progress(progressOf(runs, cfg.Fleet.Limits, start, end, true))
	}
	return results, nil
}

// named checks the fleets' modes and names each fleet without a name after
// its mode, in a copy.
func named(fleets []Fleet) ([]Fleet, error) {
	if len(fleets) == 0 {
		return nil, errors.New("procfleet: no fleets")
	}
	fleets = slices.Clone(fleets)
	for i := range fleets {
		f := &fleets[i]
		switch f.Mode {
		case ModeRedis:
			if f.RedisAddr == "" {
				return nil, fmt.Errorf("procfleet: fleet %d: redis mode needs RedisAddr", i)
			}
		case ModeMemory:
		default:
			return nil, fmt.Errorf("procfleet: fleet %d: unknown mode %q", i, f.Mode)
		}
		if f.Name == "" {
			f.Name = string(f.Mode)
		}
	}
	return fleets, nil
}

// redisCounters reads the command counters of each Redis the runs use.
func redisCounters(ctx context.Context, runs []*run) (map[string]map[string]int64, error) {
	counters := map[string]map[string]int64{}
	for _, r := range runs {
		addr := r.fleet.RedisAddr
		if r.fleet.Mode != ModeRedis || counters[addr] != nil {
			continue
		}
		c, err := CommandStats(ctx, addr)
		if err != nil {
			return nil, fmt.Errorf("procfleet: fleet %s: %w", r.fleet.Name, err)
		}
		counters[addr] = c
	}
	return counters, nil
}

// awaitReady waits until every worker is ready, one fails, ctx is done or
// cfg.StartTimeout has passed.
func awaitReady(ctx context.Context, cfg Config, all []*proc, failed <-chan *proc) error {
	deadline := time.NewTimer(cfg.StartTimeout)
	defer deadline.Stop()
	for _, p := range all {
		select {
		case <-p.ready:
		case p := <-failed:
			return p.failure()
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("procfleet: worker %s not ready after %v%s", p.name, cfg.StartTimeout, p.stderrTail())
		}
	}
	return nil
}

// watch reports progress until every worker has exited; when one fails, it
// stops the others (stop) and returns that worker's failure.
func watch(cfg Config, runs []*run, all []*proc, failed <-chan *proc, start time.Time, stop func()) error {
	allExited := make(chan struct{})
	go func() {
		for _, p := range all {
			<-p.exited
		}
		close(allExited)
	}()
	var tick <-chan time.Time
	if cfg.Progress != nil {
		t := time.NewTicker(cfg.ProgressInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-allExited:
			return nil
		case p := <-failed:
			stop()
			<-allExited
			return p.failure()
		case now := <-tick:
			if now.After(start) {
				cfg.Progress(progressOf(runs, cfg.Fleet.Limits, start, now, false))
			}
		}
	}
}

// addRedisStats sets the Redis figures of the results of the runs that
// paced through Redis: the growth of its counters since before.
func addRedisStats(ctx context.Context, cfg Config, runs []*run, before map[string]map[string]int64, results []Result) {
	users := map[string]int{} // fleets per Redis address
	for _, r := range runs {
		if r.fleet.Mode == ModeRedis {
			users[r.fleet.RedisAddr]++
		}
	}
	for i, r := range runs {
		addr := r.fleet.RedisAddr
		if r.fleet.Mode != ModeRedis {
			continue
		}
		after, err := CommandStats(context.WithoutCancel(ctx), addr)
		if err != nil {
			if cfg.Stderr != nil {
				fmt.Fprintf(cfg.Stderr, "procfleet: fleet %s: Redis counters after the run: %v\n", r.fleet.Name, err)
			}
			continue
		}
		results[i].Redis = redisStats(addr, before[addr], after, results[i])
		results[i].Redis.Shared = users[addr] > 1
	}
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("procfleet: this program's path: %w", err)
		}
		c.Command = []string{exe}
	}
	if c.Processes <= 0 {
		c.Processes = DefaultProcesses
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = fleet.DefaultProgressInterval
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	f := &c.Fleet
	if f.Agents <= 0 {
		f.Agents = fleet.DefaultAgents
	}
	if f.Duration <= 0 {
		f.Duration = fleet.DefaultDuration
	}
	if f.Model == "" {
		f.Model = fleet.DefaultModel
	}
	if f.MaxTokens <= 0 {
		f.MaxTokens = fleet.DefaultMaxTokens
	}
	// As fleet.Config's defaults: replies of MaxTokens/4 to MaxTokens.
	if f.MaxOutputTokens <= 0 {
		f.MaxOutputTokens = f.MaxTokens
	}
	if f.MinOutputTokens <= 0 {
		f.MinOutputTokens = max(1, f.MaxTokens/4)
	}
	if f.MinOutputTokens > f.MaxOutputTokens {
		return c, fmt.Errorf("procfleet: reply lengths: min %d > max %d", f.MinOutputTokens, f.MaxOutputTokens)
	}
	if f.Limits == (fleet.Limits{}) {
		f.Limits = fleet.ServerLimits(f.Server)
	}
	f.APIKey = cmp.Or(f.Server.APIKey, fleet.DefaultAPIKey)
	return c, nil
}

// processSeed is the prompt seed of process i: distinct per process, the
// same in every fleet.
func processSeed(seed uint64, i int) uint64 {
	return seed + uint64(i)*0x9e3779b97f4a7c15
}

// run is one fleet's server and processes.
type run struct {
	fleet Fleet
	srv   *tollgatetest.Server
	procs []*proc
}

func (r *run) result(cfg Config) Result {
	res := Result{Mode: r.fleet.Mode, Processes: len(r.procs)}
	c := fleet.Result{Client: r.fleet.Name, Source: "server", Limits: cfg.Fleet.Limits}
	for i, p := range r.procs {
		w := *p.report
		res.Workers = append(res.Workers, w)
		c.Interrupted = c.Interrupted || w.Result.Interrupted
		c.Elapsed = max(c.Elapsed, w.Result.Elapsed)
		c.Attempts += w.Result.Attempts
		for _, call := range w.Calls {
			call.Agent += i * cfg.Fleet.Agents
			c.Calls = append(c.Calls, call)
		}
	}
	slices.SortStableFunc(c.Calls, func(a, b fleet.Call) int { return cmp.Compare(a.Start+a.Latency, b.Start+b.Latency) })
	st := r.srv.Stats()
	c.RateLimited = st.RateLimited
	c.Used = fleet.Usage{Requests: st.OK, InputTokens: st.InputTokens, OutputTokens: st.OutputTokens}
	c.Summarize()
	res.Result = c
	return res
}

// progressOf is every fleet's state at now, as package fleet reports its
// runs': the servers' counters, the workers' latest counts of calls.
func progressOf(runs []*run, limits fleet.Limits, start, now time.Time, done bool) []fleet.Progress {
	out := make([]fleet.Progress, len(runs))
	for i, r := range runs {
		elapsed := max(now.Sub(start), 0)
		p := fleet.Progress{Client: r.fleet.Name, Elapsed: elapsed, Done: done}
		down := 0
		for _, pr := range r.procs {
			wp := pr.latest()
			p.OK += wp.OK
			p.Failed += wp.Failed
			if wp.StoreDown {
				down++
			}
		}
		st := r.srv.Stats()
		p.RateLimited = st.RateLimited
		used := fleet.Usage{Requests: st.OK, InputTokens: st.InputTokens, OutputTokens: st.OutputTokens}
		from := now.Add(-min(elapsed, time.Minute)).Truncate(time.Second)
		w := st.Window(from, now.Add(time.Second))
		recent := fleet.Usage{Requests: w.OK, InputTokens: w.InputTokens, OutputTokens: w.OutputTokens}
		b := fleet.Binding(fleet.Shares(used, limits, elapsed))
		p.Binding, p.Limit, p.Share = b.Dimension, b.Limit, b.Share
		p.PerMinute = float64(dimension(recent, b.Dimension))
		p.Status = fmt.Sprintf("%d processes", len(r.procs))
		if len(r.procs) == 1 {
			p.Status = "1 process"
		}
		if down > 0 {
			p.Status += fmt.Sprintf(", %d on the local fallback budget", down)
		}
		out[i] = p
	}
	return out
}

// dimension is u's use of the named dimension.
func dimension(u fleet.Usage, dim string) int {
	switch dim {
	case fleet.DimRequests:
		return u.Requests
	case fleet.DimInputTokens:
		return u.InputTokens
	case fleet.DimOutputTokens:
		return u.OutputTokens
	case fleet.DimTokens:
		return u.InputTokens + u.OutputTokens
	}
	return 0
}

// proc is one worker process, seen from the parent.
type proc struct {
	name string
	cfg  workerConfig

	stdinMu sync.Mutex
	stdin   io.WriteCloser

	ready  chan struct{} // closed on the worker's ready line
	exited chan struct{} // closed once the process has been waited for

	mu        sync.Mutex
	readyOnce bool
	progress  workerProgress
	report    *Worker
	protoErr  error    // a line on stdout that is not the protocol
	waitErr   error    // the process's exit
	tail      []string // the last lines of its stderr
}

// startProc starts worker i of r and sends it its configuration. A worker
// that fails, or exits without a report, is sent to failed (once: the first
// one; the others find the channel full).
func startProc(ctx context.Context, cfg Config, r *run, i int, stderrMu *sync.Mutex, failed chan<- *proc) (*proc, error) {
	f := cfg.Fleet
	p := &proc{
		name: fmt.Sprintf("%s/%d", r.fleet.Name, i),
		cfg: workerConfig{
			Name: fmt.Sprintf("%s/%d", r.fleet.Name, i), Index: i,
			BaseURL: r.srv.URL, APIKey: f.APIKey,
			Agents: f.Agents, Duration: f.Duration, Stream: f.Stream, Model: f.Model, MaxTokens: f.MaxTokens,
			MinPromptTokens: f.MinPromptTokens, MaxPromptTokens: f.MaxPromptTokens,
			Seed: processSeed(f.Seed, i), Limits: f.Limits, Told: cfg.Told, Drain: f.Drain,
			Mode: r.fleet.Mode, RedisAddr: r.fleet.RedisAddr, RedisPrefix: r.fleet.RedisPrefix,
			StoreTimeout: cfg.StoreTimeout, ProgressInterval: cfg.ProgressInterval,
		},
		ready:  make(chan struct{}),
		exited: make(chan struct{}),
	}
	cmd := exec.CommandContext(ctx, cfg.Command[0], cfg.Command[1:]...)
	cmd.Env = append(os.Environ(), WorkerEnv+"=1")
	setProcAttr(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("procfleet: worker %s: %w", p.name, err)
	}
	p.stdin = stdin
	cmd.Stdout = &lineWriter{line: p.stdoutLine}
	cmd.Stderr = &lineWriter{line: func(line []byte) {
		p.mu.Lock()
		p.tail = append(p.tail, string(line))
		if len(p.tail) > 20 {
			p.tail = p.tail[1:]
		}
		p.mu.Unlock()
		if cfg.Stderr != nil {
			stderrMu.Lock()
			fmt.Fprintf(cfg.Stderr, "[%s] %s\n", p.name, line)
			stderrMu.Unlock()
		}
	}}
	// Told to stop, a worker stops its fleet and reports; one that does not
	// exit in time is killed.
	cmd.Cancel = p.closeStdin
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("procfleet: starting worker %s (%s): %w", p.name, cfg.Command[0], err)
	}
	go func() {
		err := cmd.Wait()
		cmd.Stdout.(*lineWriter).flush()
		cmd.Stderr.(*lineWriter).flush()
		// A worker told to stop by ctx that exits cleanly gets ctx's
		// error from Wait: that is no failure.
		if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = nil
		}
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		_ = p.closeStdin()
		if !p.succeeded() && ctx.Err() == nil {
			select {
			case failed <- p:
			default:
			}
		}
		close(p.exited)
	}()
	if err := p.send(p.cfg); err != nil {
		// The worker is gone already; its exit says why.
		<-p.exited
		return nil, p.failure()
	}
	return p, nil
}

func (p *proc) closeStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	return p.stdin.Close()
}

// send writes v as one JSON line on the worker's stdin.
func (p *proc) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	_, err = p.stdin.Write(append(b, '\n'))
	return err
}

// stdoutLine handles one line of the worker's stdout.
func (p *proc) stdoutLine(line []byte) {
	var m message
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	err := dec.Decode(&m)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil:
		if p.protoErr == nil {
			p.protoErr = fmt.Errorf("not a protocol line on stdout: %q: %v", truncate(string(line), 200), err)
		}
	case m.Ready:
		if !p.readyOnce {
			p.readyOnce = true
			close(p.ready)
		}
	case m.Progress != nil:
		p.progress = *m.Progress
	case m.Report != nil:
		m.Report.Result.Calls = m.Report.Calls
		p.report = m.Report
		p.progress = workerProgress{OK: m.Report.Result.OK, Failed: m.Report.Result.Failed}
	}
}

// succeeded reports whether the worker exited cleanly after its report.
func (p *proc) succeeded() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr == nil && p.report != nil && p.protoErr == nil
}

func (p *proc) latest() workerProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.progress
}

// failure describes why the worker failed the run.
func (p *proc) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	why := "exited without a report"
	switch {
	case p.protoErr != nil:
		why = p.protoErr.Error()
	case p.waitErr != nil:
		why = p.waitErr.Error()
	}
	return fmt.Errorf("procfleet: worker %s: %s%s", p.name, why, tailString(p.tail))
}

func (p *proc) stderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return tailString(p.tail)
}

func tailString(tail []string) string {
	if len(tail) == 0 {
		return ""
	}
	return "; its stderr ended with:\n  " + strings.Join(tail, "\n  ")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// lineWriter calls line for every line written to it, without its newline;
// flush hands over a last line that had none.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	line func([]byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let a large report's buffer go
	}
	return len(b), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(w.buf)
		w.buf = nil
	}
}

// Worker is what one worker process reported.
type Worker struct {
	Name  string `json:"name"` // fleet/index
	Index int    `json:"index"`
	PID   int    `json:"pid"`
	Seed  uint64 `json:"seed"`
	// Result is the worker's own: 429s as its transport saw them, usage as
	// the responses reported it (Source "client").
	Result fleet.Result `json:"result"`
	Calls  []fleet.Call `json:"calls"`
	// RedisCommands counts, by name, the commands the worker's Redis client
	// sent for its store (its readiness PING and connection set-up left
	// out); RedisErrors the ones that failed, but for the NOSCRIPT replies
	// that make go-redis send a script's source once.
	RedisCommands map[string]int64 `json:"redis_commands,omitempty"`
	RedisErrors   int64            `json:"redis_errors,omitempty"`
	// StoreCalls is what its tollgate asked of its store; nil in memory
	// mode.
	StoreCalls *StoreCalls `json:"store_calls,omitempty"`
	// StoreFallbacks is how many times tollgate fell back from the store to
	// its local budget (it logged "the shared store failed").
	StoreFallbacks int `json:"store_fallbacks"`
	// BreakerOpens counts the breaker's transitions to open.
	BreakerOpens int `json:"breaker_opens"`
	// Waits are the calls' waits, summed (tollgate.UsageRecord.Waits).
	Waits tollgate.Waits `json:"waits"`
	// Status is the worker's last status line (peers.Status).
	Status string `json:"status"`
}
