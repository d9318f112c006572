package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/procfleet"
)

// Defaults of bench-shared: 4 processes of 8 agents, the 32 agents of a
// fleet split among processes.
const (
	DefaultSharedProcesses = 4
	DefaultSharedAgents    = 8
	maxSharedProcesses     = 64
)

// The names of bench-shared's two fleets.
const (
	sharedName  = "redis"
	privateName = "private"
)

func benchShared(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFleetFlags("bench-shared", fleet.DefaultDuration, stderr)
	agents := f.fs.Lookup("agents")
	agents.Usage = "agents per process, each making one call after another"
	agents.DefValue = fmt.Sprint(DefaultSharedAgents)
	_ = agents.Value.Set(agents.DefValue)
	processes := f.fs.Int("processes", DefaultSharedProcesses, "OS processes per fleet, each with a tollgate Transport of its own")
	redisAddr := f.fs.String("redis", "", "host:port of the Redis the processes share their budget through; "+
		"empty: a redis-server of this run's own on 127.0.0.1, no persistence, stopped at the end (needs redis-server in PATH)")
	outage := f.fs.String("outage", "", "DOWN,UP: stop this run's own redis-server DOWN after the start and start it again, "+
		"empty, UP after the start (e.g. 30s,45s); not with --redis")
	f.fs.Usage = func() {
		fmt.Fprint(stderr, benchSharedUsage)
		f.fs.PrintDefaults()
	}
	if err := f.parse(args); err != nil {
		return err
	}
	if *processes < 1 || *processes > maxSharedProcesses {
		return usagef("--processes must be between 1 and %d, not %d", maxSharedProcesses, *processes)
	}
	down, up, err := parseOutage(*outage, f.duration)
	if err != nil {
		return usageError{err}
	}
	if *outage != "" && *redisAddr != "" {
		return usagef("--outage stops and restarts the run's own redis-server: it cannot be given with --redis")
	}
	live := stdout
	if f.json {
		live = stderr
	}

	srv, addr, redisNote, err := sharedRedis(ctx, *redisAddr)
	if err != nil {
		return err
	}
	if srv != nil {
		defer func() { srv.Stop() }()
	}

	cfg := procfleet.Config{
		Processes: *processes,
		Fleet:     f.config(),
		Told:      f.withLimit,
		Stderr:    stderr,
	}
	fleets := []procfleet.Fleet{
		{Name: sharedName, Mode: procfleet.ModeRedis, RedisAddr: addr, RedisPrefix: uniquePrefix()},
		{Name: privateName, Mode: procfleet.ModeMemory},
	}
	fmt.Fprintf(live, "tollgate bench-shared: %s\n", describeShared(f, *processes))
	fmt.Fprintf(live, "%s: the processes share one budget through the Redis %s; %s: each process has its own in memory.\n"+
		"Each fleet against its own fake API on 127.0.0.1; Ctrl-C stops and prints what was measured.\n\n", sharedName, redisNote, privateName)
	view := newLiveView(live)
	cfg.Progress = view.update
	outages := make(chan error, 1)
	octx, stopOutage := context.WithCancel(ctx)
	outageStarted := false
	defer func() { // before the deferred Stop of srv, which the outage replaces
		stopOutage()
		if outageStarted {
			<-outages
		}
	}()
	if *outage != "" {
		cfg.OnStart = func(start time.Time) {
			outageStarted = true
			go func() { outages <- runOutage(octx, &srv, start, down, up, stderr) }()
		}
		redisNote += fmt.Sprintf(", stopped %s after the start and started again, empty, after %s", down, up)
	}
	started := time.Now()
	results, err := procfleet.Run(ctx, cfg, fleets...)
	if outageStarted && err == nil {
		err := <-outages
		outageStarted = false
		if err != nil {
			return err
		}
		// The restarted server's counters start from zero: round trips
		// across an outage are not counted.
		for i := range results {
			results[i].Redis = nil
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return errInterrupted
		}
		return err
	}
	if f.json {
		if err := writeJSON(stdout, newSharedSummary(started, f, cfg, addr, results)); err != nil {
			return err
		}
	} else {
		writeSharedResults(stdout, results)
	}
	if results[0].Interrupted {
		return errInterrupted
	}
	return nil
}

// benchSharedUsage is bench-shared's usage text, before its flags.
const benchSharedUsage = `usage: tollgate bench-shared [flags]

Runs one fleet of agents split across several OS processes (this program,
re-executed), each process with a tollgate Transport of its own, all of them
against one fake Anthropic API on 127.0.0.1 with tier-1-like limits. Two such
fleets run side by side, each against its own fake API with the same limits:

  redis     the processes share one budget through Redis (redisstore)
  private   each process has a budget of its own in memory (no store)

and a table shows what each got out of the limits, from the fake API's
counters (which see every process):

  share of binding limit   what the server admitted, over the most it could have
                           admitted in the time (buckets start full): for each limit
                           L, used / (L + L·minutes); the largest is shown
  failed calls             calls that returned an error to an agent
  429s per 100 OK          rate-limit responses drawn, per successful call
  Redis round trips per    commands the processes sent to Redis (INFO commandstats:
  request                  script runs and connection set-up), per request served
  OK calls/min, p50, p95   successful calls per minute, and their latency

flags:
`

// sharedRedis is the Redis of a bench-shared run: the one at addr, which must
// answer, or, where addr is empty, a redis-server of the run's own (srv, for
// the caller to stop). note says which, for the header.
func sharedRedis(ctx context.Context, addr string) (srv *procfleet.RedisServer, at, note string, err error) {
	if addr != "" {
		if err := procfleet.Ping(ctx, addr); err != nil {
			return nil, "", "", fmt.Errorf("no Redis answers at --redis %s: %w", addr, err)
		}
		return nil, addr, "at " + addr, nil
	}
	srv, err = procfleet.StartRedis(ctx)
	if errors.Is(err, procfleet.ErrNoRedisServer) {
		return nil, "", "", fmt.Errorf("%w: install it (e.g. apt-get install redis-server) or give --redis host:port", err)
	}
	if err != nil {
		return nil, "", "", fmt.Errorf("starting a redis-server: %w", err)
	}
	return srv, srv.Addr, "of this run's own at " + srv.Addr, nil
}

// writeSharedResults writes bench-shared's tables.
func writeSharedResults(w io.Writer, results []procfleet.Result) {
	fmt.Fprintln(w)
	if results[0].Interrupted {
		fmt.Fprintf(w, "Interrupted after %s: the figures cover only that time.\n\n", results[0].Elapsed.Round(100*time.Millisecond))
	}
	writeSharedRows(w, results)
	combined := make([]fleet.Result, len(results))
	for i, r := range results {
		combined[i] = r.Result
	}
	writeFailures(w, combined)
	fmt.Fprintln(w)
	writeSharedDetails(w, results)
}

// parseOutage reads --outage: DOWN,UP, both within the run.
func parseOutage(s string, run time.Duration) (down, up time.Duration, err error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, ",")
	if ok {
		down, err = time.ParseDuration(strings.TrimSpace(a))
	}
	if ok && err == nil {
		up, err = time.ParseDuration(strings.TrimSpace(b))
	}
	switch {
	case !ok || err != nil:
		return 0, 0, fmt.Errorf("--outage %q: want DOWN,UP, two durations such as 30s,45s", s)
	case down <= 0 || up <= down || up >= run:
		return 0, 0, fmt.Errorf("--outage %q: want 0 < DOWN < UP < --duration (%s)", s, run)
	}
	return down, up, nil
}

// runOutage stops the Redis *srv at start+down and starts a fresh one on
// the same address at start+up.
func runOutage(ctx context.Context, srv **procfleet.RedisServer, start time.Time, down, up time.Duration, log io.Writer) error {
	wait := func(at time.Time) bool {
		t := time.NewTimer(time.Until(at))
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !wait(start.Add(down)) {
		return nil
	}
	(*srv).Stop()
	fmt.Fprintf(log, "bench-shared: redis-server stopped at %s\n", down)
	if !wait(start.Add(up)) {
		return nil
	}
	fresh, err := (*srv).Restart(ctx)
	if err != nil {
		return fmt.Errorf("restarting the redis-server: %w", err)
	}
	*srv = fresh
	fmt.Fprintf(log, "bench-shared: redis-server started again, empty, at %s\n", up)
	return nil
}

// uniquePrefix is a key prefix no earlier run used, so that a run on a
// long-lived Redis starts from full buckets.
func uniquePrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("tollgate-bench-shared:%d:%s", time.Now().Unix(), hex.EncodeToString(b[:]))
}

func describeShared(f *fleetFlags, processes int) string {
	mode := "JSON replies"
	if f.stream {
		mode = "streamed replies"
	}
	procs := "processes"
	if processes == 1 {
		procs = "process"
	}
	return fmt.Sprintf("%d %s × %d agents per fleet for %s, %s, max_tokens %d; limits %s",
		processes, procs, f.agents, f.duration, mode, f.maxTokens, limitsString(f.limits))
}

// budgetsLabel names where a fleet's budgets are, for the table.
func budgetsLabel(r procfleet.Result) string {
	if r.Mode == procfleet.ModeRedis {
		return fmt.Sprintf("%s: shared through Redis", r.Client)
	}
	return fmt.Sprintf("%s: one per process, in memory", r.Client)
}

// writeSharedRows prints one row per fleet.
func writeSharedRows(w io.Writer, results []procfleet.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "budgets\tprocesses\tshare of binding limit\tfailed calls\t429s per 100 OK\tRedis round trips per request\tOK calls/min\tp50\tp95\t")
	for _, r := range results {
		trips := "-"
		if r.Redis != nil {
			trips = fmt.Sprintf("%.2f", r.Redis.PerOK)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%.1f\t%s\t%s\t\n", budgetsLabel(r), r.Processes, shareString(r.Binding), r.Failed,
			per100(r.Result), trips, r.OKPerMinute, seconds(r.P50), seconds(r.P95))
	}
	_ = tw.Flush()
}

// writeSharedDetails prints what Redis was asked and each process's own
// view: what to look at when a figure is off.
func writeSharedDetails(w io.Writer, results []procfleet.Result) {
	for _, r := range results {
		if s := r.Redis; s != nil {
			fmt.Fprintf(w, "%s: %d Redis round trips for %d requests served (%.2f each) and %d attempts (%.2f each): %s\n",
				r.Client, s.RoundTrips, r.Used.Requests, s.PerOK, r.Attempts, s.PerAttempt, commandList(s.Commands))
			c := s.Store
			fmt.Fprintf(w, "  store calls: %d admits (%d granted at once, %d ahead of time (waits up to %s, %s on average), %d refused, %d paused), "+
				"%d settles (%d usage, %d remaining headers, %d refunds), %d pauses, %d errors\n",
				c.Admits, c.GrantedNow, c.GrantedAhead, seconds(c.MaxAheadWait), seconds(meanWait(c)), c.Refused, c.Paused,
				c.Settles, c.SettleUsage, c.SettleFloors, c.SettleRefunds, c.Pauses, c.Errors)
			if len(s.InScripts) > 0 {
				fmt.Fprintf(w, "  run inside the scripts: %s\n", commandList(s.InScripts))
			}
			if s.ClientErrors > 0 {
				fmt.Fprintf(w, "  %d Redis commands failed\n", s.ClientErrors)
			}
		}
		for _, wk := range r.Workers {
			fmt.Fprintf(w, "  %-10s ok %4d  failed %3d  429s %3d  breaker opens %2d  waits: budget %s, pause %s, backoff %s",
				wk.Name, wk.Result.OK, wk.Result.Failed, wk.Result.RateLimited, wk.BreakerOpens,
				secondsOrDash(wk.Waits.Budget), secondsOrDash(wk.Waits.Pause), secondsOrDash(wk.Waits.Backoff))
			if r.Mode == procfleet.ModeRedis {
				fmt.Fprintf(w, "  store fallbacks %d", wk.StoreFallbacks)
			}
			fmt.Fprintln(w)
		}
	}
}

// commandList lists commands as "evalsha 480, eval 3", most first.
func commandList(cmds map[string]int64) string {
	names := slices.Collect(maps.Keys(cmds))
	slices.SortFunc(names, func(a, b string) int {
		if cmds[a] != cmds[b] {
			return int(cmds[b] - cmds[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %d", n, cmds[n])
	}
	return strings.Join(parts, ", ")
}

func meanWait(c procfleet.StoreCalls) time.Duration {
	if c.GrantedAhead == 0 {
		return 0
	}
	return c.AheadWait / time.Duration(c.GrantedAhead)
}

func secondsOrDash(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// sharedSummary is bench-shared's --json output.
type sharedSummary struct {
	Command     string         `json:"command"`
	Started     time.Time      `json:"started"`
	Interrupted bool           `json:"interrupted"`
	Config      sharedConfig   `json:"config"`
	Results     []sharedResult `json:"results"`
}

type sharedConfig struct {
	summaryConfig
	Processes int    `json:"processes"`
	Redis     string `json:"redis"`
}

type sharedResult struct {
	summaryResult
	Mode      procfleet.Mode        `json:"mode"`
	Processes int                   `json:"processes"`
	Redis     *procfleet.RedisStats `json:"redis,omitempty"`
	Workers   []sharedWorker        `json:"workers"`
}

type sharedWorker struct {
	Name           string           `json:"name"`
	OKCalls        int              `json:"ok_calls"`
	FailedCalls    int              `json:"failed_calls"`
	FailedByKind   map[string]int   `json:"failed_by_kind,omitempty"`
	RateLimited    int              `json:"rate_limited"` // as its transport saw them
	Attempts       int              `json:"attempts"`
	BreakerOpens   int              `json:"breaker_opens"`
	StoreFallbacks int              `json:"store_fallbacks"`
	BudgetWaitS    float64          `json:"budget_wait_s"`
	PauseWaitS     float64          `json:"pause_wait_s"`
	BackoffWaitS   float64          `json:"backoff_wait_s"`
	RedisCommands  map[string]int64 `json:"redis_commands,omitempty"`
	Status         string           `json:"status"`
}

func newSharedSummary(started time.Time, f *fleetFlags, cfg procfleet.Config, redisAddr string, results []procfleet.Result) sharedSummary {
	combined := make([]fleet.Result, len(results))
	for i, r := range results {
		combined[i] = r.Result
	}
	fc := cfg.Fleet
	base := newSummary("bench-shared", started, f, fc, combined)
	s := sharedSummary{
		Command: base.Command, Started: base.Started, Interrupted: base.Interrupted,
		Config: sharedConfig{summaryConfig: base.Config, Processes: cfg.Processes, Redis: redisAddr},
	}
	for i, r := range results {
		sr := sharedResult{summaryResult: base.Results[i], Mode: r.Mode, Processes: r.Processes, Redis: r.Redis}
		for _, w := range r.Workers {
			sw := sharedWorker{
				Name: w.Name, OKCalls: w.Result.OK, FailedCalls: w.Result.Failed, RateLimited: w.Result.RateLimited,
				Attempts: w.Result.Attempts, BreakerOpens: w.BreakerOpens, StoreFallbacks: w.StoreFallbacks,
				BudgetWaitS: w.Waits.Budget.Seconds(), PauseWaitS: w.Waits.Pause.Seconds(), BackoffWaitS: w.Waits.Backoff.Seconds(),
				Status: w.Status,
			}
			if len(w.Result.FailedByKind) > 0 {
				sw.FailedByKind = w.Result.FailedByKind
			}
			if len(w.RedisCommands) > 0 {
				sw.RedisCommands = w.RedisCommands
			}
			sr.Workers = append(sr.Workers, sw)
		}
		s.Results = append(s.Results, sr)
	}
	return s
}
