package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/proxy"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Defaults of bench-proxy.
const (
	DefaultOverheadCalls = 200
	// DefaultOverheadLatency is the fake API's wait in the overhead part: a
	// fast API, so the proxy's share of each call shows.
	DefaultOverheadLatency = 5 * time.Millisecond
)

func benchProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFleetFlags("bench-proxy", fleet.DefaultDuration, stderr)
	nodeDir := f.fs.String("node-dir", filepath.Join("e2e", "node"), "folder of package.json and bench.mjs, with the SDK installed (npm ci --prefix e2e/node)")
	calls := f.fs.Int("overhead-calls", DefaultOverheadCalls, "calls of each kind (JSON, stream) direct and through the proxy, for the overhead (0: skip it)")
	overheadLatency := f.fs.Duration("overhead-latency", DefaultOverheadLatency, "fake API's wait before each reply in the overhead part")
	f.fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: tollgate bench-proxy [flags]

Measures tollgate proxy with the official TypeScript SDK (@anthropic-ai/sdk,
run by node from --node-dir; install it with: npm ci --prefix e2e/node).

1. Fleet: a fake Anthropic API on 127.0.0.1 with tier-1-like limits (50
   requests, 30,000 input and 8,000 output tokens per minute), the proxy in
   front of it, and --agents agents of the SDK (its defaults: 2 retries) in one
   node process, each making one call after another for --duration, as the
   Go bench's agents do. From the fake API's counters over the run:

     share of binding limit   what the server admitted over the most it could
                              have (buckets start full): used / (L + L·minutes)
     failed calls             calls that returned an error to an agent
     429s per 100 OK          rate-limit responses drawn, per successful call

2. Overhead: --overhead-calls pairs of calls on loopback to a fast fake API
   without binding limits, direct and through the proxy, alternating: the p50
   of a JSON call's latency and of the time to the first SSE event, and the
   difference.

flags:
`)
		f.fs.PrintDefaults()
	}
	if err := f.parse(args); err != nil {
		return err
	}
	if *calls < 0 {
		return usagef("--overhead-calls cannot be negative")
	}
	if *overheadLatency < 0 {
		return usagef("--overhead-latency cannot be negative")
	}
	script, nodeBin, err := benchNode(*nodeDir)
	if err != nil {
		return err
	}
	live := stdout
	if f.json {
		live = stderr
	}
	fmt.Fprintf(live, "tollgate bench-proxy: %s; node %s\n", f.describe(), nodeVersion(ctx, nodeBin))

	res := benchProxyResult{Command: "bench-proxy", Agents: f.agents, DurationSeconds: f.duration.Seconds(), Stream: f.stream,
		Model: f.model, MaxTokens: f.maxTokens, Limits: f.limits}
	if err := runProxyFleet(ctx, f, nodeBin, script, live, &res); err != nil {
		return err
	}
	if *calls > 0 {
		fmt.Fprintf(live, "overhead: %d calls of each kind, direct and through the proxy, side by side...\n", *calls)
		if err := runProxyOverhead(ctx, nodeBin, script, *calls, *overheadLatency, &res); err != nil {
			return err
		}
	}
	if f.json {
		return writeJSON(stdout, res)
	}
	res.writeTable(stdout)
	return nil
}

// benchNode finds node and bench.mjs, with the SDK installed beside it.
func benchNode(dir string) (script, node string, err error) {
	node, err = exec.LookPath("node")
	if err != nil {
		return "", "", errors.New("bench-proxy needs node (Node.js 20+) in PATH")
	}
	script, err = filepath.Abs(filepath.Join(dir, "bench.mjs"))
	if err != nil {
		return "", "", fmt.Errorf("--node-dir: %w", err)
	}
	if _, err := os.Stat(script); err != nil {
		return "", "", fmt.Errorf("no bench.mjs in --node-dir %s (run from the repository's root, or give --node-dir): %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@anthropic-ai", "sdk", "package.json")); err != nil {
		return "", "", fmt.Errorf("the TypeScript SDK is not installed in %s: run npm ci --prefix %s", dir, dir)
	}
	return script, node, nil
}

func nodeVersion(ctx context.Context, node string) string {
	out, err := exec.CommandContext(ctx, node, "--version").Output()
	if err != nil {
		return "(version unknown)"
	}
	return strings.TrimSpace(string(out))
}

// benchProxyResult is what bench-proxy measured.
type benchProxyResult struct {
	Command         string       `json:"command"`
	Agents          int          `json:"agents"`
	DurationSeconds float64      `json:"duration_seconds"`
	Stream          bool         `json:"stream"`
	Model           string       `json:"model"`
	MaxTokens       int          `json:"max_tokens"`
	Limits          fleet.Limits `json:"limits"`
	Interrupted     bool         `json:"interrupted"`

	Shares              []fleet.Share  `json:"shares"`
	Binding             fleet.Share    `json:"binding"`
	OKCalls             int            `json:"ok_calls"`
	FailedCalls         int            `json:"failed_calls"`
	FailedByStatus      map[string]int `json:"failed_by_status,omitempty"`
	RateLimited         int            `json:"rate_limited"`
	RateLimitedPer100OK float64        `json:"rate_limited_per_100_ok"`
	P50MS               float64        `json:"p50_ms"`
	P95MS               float64        `json:"p95_ms"`

	Overhead *overheadResult `json:"overhead,omitempty"`
}

// overheadResult compares direct calls with calls through the proxy.
type overheadResult struct {
	Calls            int     `json:"calls"`
	DirectJSONP50MS  float64 `json:"direct_json_p50_ms"`
	ProxyJSONP50MS   float64 `json:"proxy_json_p50_ms"`
	AddedJSONP50MS   float64 `json:"added_json_p50_ms"`
	DirectFirstP50MS float64 `json:"direct_first_event_p50_ms"`
	ProxyFirstP50MS  float64 `json:"proxy_first_event_p50_ms"`
	AddedFirstP50MS  float64 `json:"added_first_event_p50_ms"`
}

// benchLine is one line bench.mjs prints.
type benchLine struct {
	Start     bool    `json:"start"`
	Done      bool    `json:"done"`
	Fatal     string  `json:"fatal"`
	OK        bool    `json:"ok"`
	StartMS   float64 `json:"start_ms"`
	LatencyMS float64 `json:"latency_ms"`
	Status    int     `json:"status"`
	Error     string  `json:"error"`
	Overhead  *struct {
		Direct, Proxy struct{ JSON, First []float64 }
	} `json:"overhead"`
}

// startProxyServer serves a proxy in front of upstream on 127.0.0.1, with
// opts for its Transports, until the returned stop is called.
func startProxyServer(upstream string, opts ...tollgate.Option) (base string, stop func(), err error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return "", nil, err
	}
	p, err := proxy.New(proxy.Config{AnthropicUpstream: u, OpenAIUpstream: u, Options: opts})
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = p.Close()
		return "", nil, err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	return "http://" + ln.Addr().String(), func() {
		_ = srv.Close()
		<-served
		_ = p.Close()
	}, nil
}

// runNode runs bench.mjs in mode with env and hands each line it prints to
// line.
func runNodeBench(ctx context.Context, node, script, mode string, env []string, line func(benchLine) error) error {
	cmd := exec.CommandContext(ctx, node, script, mode)
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = io.Discard // the SDK's warnings; failures come as lines
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting node: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var lineErr error
	for sc.Scan() {
		var l benchLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			lineErr = fmt.Errorf("bench.mjs printed %q: %w", sc.Text(), err)
			break
		}
		if l.Fatal != "" {
			lineErr = fmt.Errorf("bench.mjs: %s", l.Fatal)
			break
		}
		if err := line(l); err != nil {
			lineErr = err
			break
		}
	}
	if lineErr != nil {
		_ = cmd.Process.Kill()
	}
	_, _ = io.Copy(io.Discard, stdout)
	waitErr := cmd.Wait()
	if lineErr != nil {
		return lineErr
	}
	if ctx.Err() != nil {
		return errInterrupted
	}
	if waitErr != nil {
		return fmt.Errorf("bench.mjs %s: %w", mode, waitErr)
	}
	return nil
}

func runProxyFleet(ctx context.Context, f *fleetFlags, node, script string, live io.Writer, res *benchProxyResult) error {
	cfg := f.config()
	server := cfg.Server
	server.OutputTokensFunc = fleet.ReplyLengths(f.seed, max(1, f.maxTokens/4), f.maxTokens)
	api := tollgatetest.NewServer(server)
	defer api.Close()
	var opts []tollgate.Option
	if f.withLimit { // as `tollgate proxy --rpm … --itpm … --otpm …` would
		opts = append(opts, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: f.limits.RequestsPerMinute,
			InputTokensPerMinute: f.limits.InputTokensPerMinute, OutputTokensPerMinute: f.limits.OutputTokensPerMinute,
			TokensPerMinute: f.limits.TokensPerMinute}))
	}
	base, stop, err := startProxyServer(api.URL, opts...)
	if err != nil {
		return err
	}
	defer stop()

	var start time.Time
	var latencies []time.Duration
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	env := []string{
		"ANTHROPIC_BASE_URL=" + base, "ANTHROPIC_API_KEY=" + fleet.DefaultAPIKey,
		"BENCH_AGENTS=" + strconv.Itoa(f.agents), "BENCH_DURATION_MS=" + strconv.FormatInt(f.duration.Milliseconds(), 10),
		"BENCH_MODEL=" + f.model, "BENCH_MAX_TOKENS=" + strconv.Itoa(f.maxTokens), "BENCH_SEED=" + strconv.FormatUint(f.seed, 10),
		"BENCH_STREAM=" + map[bool]string{true: "1", false: ""}[f.stream],
	}
	res.FailedByStatus = map[string]int{}
	err = runNodeBench(ctx, node, script, "fleet", env, func(l benchLine) error {
		switch {
		case l.Start:
			start = time.Now()
		case l.Done:
		case l.OK:
			res.OKCalls++
			latencies = append(latencies, time.Duration(l.LatencyMS*float64(time.Millisecond)))
		default:
			res.FailedCalls++
			res.FailedByStatus[strconv.Itoa(l.Status)+" "+l.Error]++
		}
		select {
		case <-progress.C:
			fmt.Fprintf(live, "  %s: %d OK, %d failed, %d 429s at the API\n", time.Since(start).Round(time.Second), res.OKCalls, res.FailedCalls, api.Stats().RateLimited)
		default:
		}
		return nil
	})
	if errors.Is(err, errInterrupted) {
		res.Interrupted = true
	} else if err != nil {
		return err
	}
	if start.IsZero() {
		return errors.New("bench.mjs never started its agents")
	}
	// What the API's limits counted in the run's whole seconds: the
	// requests and input admitted from the start to the deadline, when
	// they were admitted (a reply is sent seconds later: counting input then
	// would leave out the run's last seconds), and the output sent in them.
	// bench.mjs starts its agents on a whole second of the clock, so the
	// API's seconds from there are the run's.
	from := start.Truncate(time.Second)
	elapsed := f.duration
	if res.Interrupted {
		elapsed = time.Since(start).Truncate(time.Second)
	}
	w := api.Stats().Window(from, from.Add(elapsed))
	used := fleet.Usage{Requests: w.Admitted, InputTokens: w.AdmittedInputTokens, OutputTokens: w.OutputTokens,
		CacheReadInputTokens: w.CacheReadInputTokens, CacheCreationInputTokens: w.CacheCreationInputTokens, PromptTokens: w.PromptTokens}
	res.Shares = fleet.Shares(used, f.limits, elapsed)
	res.Binding = fleet.Binding(res.Shares)
	res.RateLimited = w.RateLimited
	if w.OK > 0 {
		res.RateLimitedPer100OK = 100 * float64(w.RateLimited) / float64(w.OK)
	}
	res.P50MS = ms(fleet.Percentile(latencies, 50))
	res.P95MS = ms(fleet.Percentile(latencies, 95))
	if res.Interrupted {
		return errInterrupted
	}
	return nil
}

func runProxyOverhead(ctx context.Context, node, script string, calls int, latency time.Duration, res *benchProxyResult) error {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 10_000_000, InputTokensPerMinute: 1_000_000_000,
		OutputTokensPerMinute: 1_000_000_000, Latency: latency})
	defer api.Close()
	base, stop, err := startProxyServer(api.URL)
	if err != nil {
		return err
	}
	defer stop()
	env := []string{"BENCH_DIRECT_URL=" + api.URL, "BENCH_PROXY_URL=" + base, "ANTHROPIC_API_KEY=" + fleet.DefaultAPIKey,
		"BENCH_CALLS=" + strconv.Itoa(calls), "BENCH_MODEL=" + fleet.DefaultModel}
	return runNodeBench(ctx, node, script, "overhead", env, func(l benchLine) error {
		if l.Overhead == nil {
			return nil
		}
		o := l.Overhead
		res.Overhead = &overheadResult{
			Calls:            calls,
			DirectJSONP50MS:  median(o.Direct.JSON),
			ProxyJSONP50MS:   median(o.Proxy.JSON),
			DirectFirstP50MS: median(o.Direct.First),
			ProxyFirstP50MS:  median(o.Proxy.First),
		}
		res.Overhead.AddedJSONP50MS = res.Overhead.ProxyJSONP50MS - res.Overhead.DirectJSONP50MS
		res.Overhead.AddedFirstP50MS = res.Overhead.ProxyFirstP50MS - res.Overhead.DirectFirstP50MS
		return nil
	})
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r benchProxyResult) writeTable(w io.Writer) {
	fmt.Fprintln(w)
	if r.Interrupted {
		fmt.Fprintln(w, "Interrupted: the figures cover only the time run.")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "share of binding limit\t%.1f %% (%s)\ttarget ≥ 97 %%\n", 100*r.Binding.Share, r.Binding.Dimension)
	fmt.Fprintf(tw, "failed calls\t%d\ttarget 0\n", r.FailedCalls)
	fmt.Fprintf(tw, "429s per 100 OK\t%.2f (%d 429s)\ttarget ≤ 0.5\n", r.RateLimitedPer100OK, r.RateLimited)
	fmt.Fprintf(tw, "OK calls\t%d\t\n", r.OKCalls)
	fmt.Fprintf(tw, "p50 / p95 latency\t%.0f / %.0f ms\t\n", r.P50MS, r.P95MS)
	for _, s := range r.Shares {
		fmt.Fprintf(tw, "  %s\t%.1f %% of %d/min\t\n", s.Dimension, 100*s.Share, s.Limit)
	}
	_ = tw.Flush()
	for k, n := range r.FailedByStatus {
		fmt.Fprintf(w, "  failed: %d × %s\n", n, k)
	}
	if o := r.Overhead; o != nil {
		fmt.Fprintf(w, "\noverhead on loopback, %d calls of each kind, side by side:\n", o.Calls)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "\tdirect\tproxy\tadded\ttarget\t\n")
		fmt.Fprintf(tw, "p50 latency (JSON)\t%.2f ms\t%.2f ms\t%.2f ms\t≤ 1 ms\t\n", o.DirectJSONP50MS, o.ProxyJSONP50MS, o.AddedJSONP50MS)
		fmt.Fprintf(tw, "p50 time to first SSE event\t%.2f ms\t%.2f ms\t%.2f ms\t≤ 1 ms\t\n", o.DirectFirstP50MS, o.ProxyFirstP50MS, o.AddedFirstP50MS)
		_ = tw.Flush()
	}
}
