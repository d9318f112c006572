package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tollgate-go/tollgate/internal/fleet"
)

// summary is the --json output.
type summary struct {
	Command     string          `json:"command"`
	Started     time.Time       `json:"started"`
	Interrupted bool            `json:"interrupted"`
	Config      summaryConfig   `json:"config"`
	Results     []summaryResult `json:"results"`
}

type summaryConfig struct {
	Agents           int          `json:"agents"`
	DurationSeconds  float64      `json:"duration_seconds"`
	Stream           bool         `json:"stream"`
	Model            string       `json:"model"`
	MaxTokens        int          `json:"max_tokens"`
	PromptTokens     [2]int       `json:"prompt_tokens"` // min, max
	Seed             uint64       `json:"seed"`
	Limits           fleet.Limits `json:"limits"`
	Upstream         string       `json:"upstream,omitempty"`
	LatencyMS        float64      `json:"fake_latency_ms,omitempty"`
	PerOutputTokenMS float64      `json:"fake_per_output_token_ms,omitempty"`
	Workload         string       `json:"workload,omitempty"`
	OutputRule       string       `json:"output_rule,omitempty"` // the fake API's: reserve | produced
	Remaining        string       `json:"remaining,omitempty"`   // the fake API's rounding: down | nearest | exact
	API              string       `json:"api,omitempty"`         // anthropic | openai
	// Groups are the groups of agents of a --scenario, which replace Agents.
	Groups []summaryGroup `json:"groups,omitempty"`
}

// summaryGroup is one group of agents of a --scenario.
type summaryGroup struct {
	Name         string  `json:"name"`
	Agents       int     `json:"agents"`
	EverySeconds float64 `json:"every_seconds,omitempty"` // each agent starts a call this often; 0: one after another
}

type summaryResult struct {
	Client              string         `json:"client"`
	Interrupted         bool           `json:"interrupted"`
	ElapsedSeconds      float64        `json:"elapsed_seconds"`
	BindingShare        float64        `json:"binding_share"`
	BindingDimension    string         `json:"binding_dimension"`
	OKCalls             int            `json:"ok_calls"`
	FailedCalls         int            `json:"failed_calls"`
	CutOffCalls         int            `json:"cut_off_calls"`
	FailedByKind        map[string]int `json:"failed_by_kind"`
	Attempts            int            `json:"attempts"`
	RateLimited         int            `json:"rate_limited"`
	RateLimitedPer100OK float64        `json:"rate_limited_per_100_ok"`
	OKPerMinute         float64        `json:"ok_per_minute"`
	P50MS               float64        `json:"p50_ms"`
	P95MS               float64        `json:"p95_ms"`
	OKMeanPromptTokens  float64        `json:"ok_mean_prompt_tokens"`
	CacheReadShare      float64        `json:"cache_read_share"`
	Used                fleet.Usage    `json:"used"`
	Shares              []fleet.Share  `json:"shares"`
	Source              string         `json:"source"`
	// Groups are the groups of agents of a --scenario.
	Groups []fleet.GroupResult `json:"groups,omitempty"`
}

func newSummary(command string, started time.Time, f *fleetFlags, cfg fleet.Config, results []fleet.Result) summary {
	s := summary{
		Command: command,
		Started: started.UTC().Truncate(time.Second),
		Config: summaryConfig{
			Agents: cfg.Agents, DurationSeconds: cfg.Duration.Seconds(), Stream: cfg.Stream,
			Model: cfg.Model, MaxTokens: cfg.MaxTokens,
			PromptTokens: [2]int{or(cfg.MinPromptTokens, fleet.DefaultMinPromptTokens), or(cfg.MaxPromptTokens, fleet.DefaultMaxPromptTokens)},
			Seed:         cfg.Seed, Limits: cfg.Limits, Upstream: cfg.BaseURL,
		},
		Results: make([]summaryResult, len(results)),
	}
	if cfg.BaseURL == "" {
		s.Config.LatencyMS = ms(f.latency)
		s.Config.PerOutputTokenMS = ms(f.perToken)
		s.Config.OutputRule, s.Config.Remaining = f.outputRule, f.remaining
	}
	s.Config.Workload = f.workload
	s.Config.API = cfg.API
	for _, g := range cfg.Groups {
		s.Config.Groups = append(s.Config.Groups, summaryGroup{Name: g.Name, Agents: g.Agents, EverySeconds: g.Every.Seconds()})
	}
	for i, r := range results {
		s.Interrupted = s.Interrupted || r.Interrupted
		fk := r.FailedByKind
		if fk == nil {
			fk = map[string]int{}
		}
		s.Results[i] = summaryResult{
			Client: r.Client, Interrupted: r.Interrupted, ElapsedSeconds: r.Elapsed.Seconds(),
			BindingShare: r.Binding.Share, BindingDimension: r.Binding.Dimension,
			OKCalls: r.OK, FailedCalls: r.Failed, CutOffCalls: r.CutOff, FailedByKind: fk,
			Attempts: r.Attempts, RateLimited: r.RateLimited, RateLimitedPer100OK: r.RateLimitedPer100OK,
			OKPerMinute: r.OKPerMinute, P50MS: ms(r.P50), P95MS: ms(r.P95), OKMeanPromptTokens: r.OKPromptTokens,
			CacheReadShare: r.CacheReadShare, Used: r.Used, Shares: r.Shares, Source: r.Source, Groups: r.Groups,
		}
	}
	return s
}

func or(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeRows prints one row per client (bench), with the cache columns when
// any prompt was cached.
func writeRows(w io.Writer, results []fleet.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	cached := anyCached(results)
	head := "client\tshare of binding limit\tfailed calls\t429s per 100 OK\tOK calls/min\tp50\tp95\tmean prompt of OK calls\t"
	if cached {
		head += "cache read / written\tprompt read from cache\t"
	}
	fmt.Fprintln(tw, head)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.1f\t%s\t%s\t%.0f\t", r.Client, shareString(r.Binding), r.Failed,
			per100(r), r.OKPerMinute, seconds(r.P50), seconds(r.P95), r.OKPromptTokens)
		if cached {
			fmt.Fprintf(tw, "%s\t%s\t", cacheTokens(r), cacheShare(r))
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
}

// anyCached reports whether any run read from or wrote to a prompt cache.
func anyCached(results []fleet.Result) bool {
	for _, r := range results {
		if r.Used.CacheReadInputTokens+r.Used.CacheCreationInputTokens > 0 {
			return true
		}
	}
	return false
}

// cacheTokens is "read / written", e.g. "412k / 61.2k".
func cacheTokens(r fleet.Result) string {
	return count(float64(r.Used.CacheReadInputTokens)) + " / " + count(float64(r.Used.CacheCreationInputTokens))
}

func cacheShare(r fleet.Result) string {
	if r.Used.PromptTokens == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f %%", 100*r.CacheReadShare)
}

// writeColumns prints one column per client (demo).
func writeColumns(w io.Writer, results []fleet.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	row := func(label string, cell func(fleet.Result) string) {
		fmt.Fprint(tw, label, "\t")
		for _, r := range results {
			fmt.Fprint(tw, cell(r), "\t")
		}
		fmt.Fprintln(tw)
	}
	row("", func(r fleet.Result) string { return r.Client })
	row("share of binding limit used", func(r fleet.Result) string { return shareString(r.Binding) })
	row("successful calls", func(r fleet.Result) string { return fmt.Sprint(r.OK) })
	row("failed calls", func(r fleet.Result) string { return fmt.Sprint(r.Failed) })
	row("429s drawn", func(r fleet.Result) string { return fmt.Sprint(r.RateLimited) })
	row("429s per 100 OK", per100)
	row("OK calls/min", func(r fleet.Result) string { return fmt.Sprintf("%.1f", r.OKPerMinute) })
	row("p50 latency", func(r fleet.Result) string { return seconds(r.P50) })
	row("p95 latency", func(r fleet.Result) string { return seconds(r.P95) })
	row("mean prompt of OK calls", func(r fleet.Result) string { return fmt.Sprintf("%.0f", r.OKPromptTokens) })
	if anyCached(results) {
		row("cache read / written", cacheTokens)
		row("prompt read from cache", cacheShare)
	}
	row("time", func(r fleet.Result) string { return seconds(r.Elapsed) })
	_ = tw.Flush()
}

// writeFailures lists the failed calls by kind, if any.
func writeFailures(w io.Writer, results []fleet.Result) {
	for _, r := range results {
		if r.Failed == 0 {
			continue
		}
		kinds := make([]string, 0, len(r.FailedByKind))
		for k := range r.FailedByKind {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s %d", k, r.FailedByKind[k])
		}
		fmt.Fprintf(w, "  %s failed calls: %s\n", r.Client, strings.Join(parts, ", "))
	}
}

func shareString(s fleet.Share) string {
	if s.Dimension == "" {
		return "-"
	}
	return fmt.Sprintf("%.1f %% (%s)", 100*s.Share, shortDim(s.Dimension))
}

func per100(r fleet.Result) string {
	if r.OK == 0 {
		if r.RateLimited == 0 {
			return "0"
		}
		return "n/a"
	}
	return fmt.Sprintf("%.1f", r.RateLimitedPer100OK)
}

func seconds(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func shortDim(d string) string {
	switch d {
	case fleet.DimRequests:
		return "RPM"
	case fleet.DimInputTokens:
		return "ITPM"
	case fleet.DimOutputTokens:
		return "OTPM"
	case fleet.DimTokens:
		return "TPM"
	}
	return d
}

func limitsString(l fleet.Limits) string {
	var parts []string
	add := func(n int, unit string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", count(float64(n)), unit))
		}
	}
	add(l.RequestsPerMinute, "RPM")
	add(l.InputTokensPerMinute, "ITPM")
	add(l.OutputTokensPerMinute, "OTPM")
	add(l.TokensPerMinute, "TPM")
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " / ")
}

// count renders 28123 as 28.1k.
func count(n float64) string {
	switch {
	case n >= 10_000:
		return fmt.Sprintf("%.0fk", n/1000)
	case n >= 1000:
		return fmt.Sprintf("%.1fk", n/1000)
	}
	return fmt.Sprintf("%.0f", n)
}

// progressLine is one run's live line.
func progressLine(p fleet.Progress, width int) string {
	el := p.Elapsed.Round(time.Second)
	line := fmt.Sprintf("%-*s %2d:%02d  ok %4d  failed %4d  429s %5d", width, p.Client,
		int(el.Minutes()), int(el.Seconds())%60, p.OK, p.Failed, p.RateLimited)
	if p.Binding != "" {
		line += fmt.Sprintf("  %s %s in the last min, limit %s/min (%.0f %% of what was available used)",
			shortDim(p.Binding), count(p.PerMinute), count(float64(p.Limit)), 100*p.Share)
	}
	if p.CacheShare > 0 {
		line += fmt.Sprintf("  cache %.0f %%", 100*p.CacheShare)
	}
	if p.Status != "" {
		line += "  " + p.Status
	}
	return line
}

// liveView draws the progress: on a terminal one line per run, redrawn in
// place; elsewhere a block of lines every so often.
type liveView struct {
	w        io.Writer
	terminal bool
	every    time.Duration // between blocks when not a terminal

	mu    sync.Mutex
	drawn int // lines drawn last time (terminal)
	last  time.Time
}

func newLiveView(w io.Writer) *liveView {
	return &liveView{w: w, terminal: isTerminal(w), every: 10 * time.Second}
}

func (v *liveView) update(ps []fleet.Progress) {
	v.mu.Lock()
	defer v.mu.Unlock()
	width := 0
	for _, p := range ps {
		width = max(width, len(p.Client))
	}
	done := len(ps) > 0 && ps[0].Done
	if !v.terminal {
		now := time.Now()
		if !done && !v.last.IsZero() && now.Sub(v.last) < v.every {
			return
		}
		v.last = now
		for _, p := range ps {
			fmt.Fprintln(v.w, progressLine(p, width))
		}
		return
	}
	var b strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.drawn) // back to the first line
	}
	for _, p := range ps {
		b.WriteString("\r\x1b[2K")
		b.WriteString(progressLine(p, width))
		b.WriteByte('\n')
	}
	v.drawn = len(ps)
	_, _ = io.WriteString(v.w, b.String())
}

// isTerminal reports whether w is a character device (a terminal), and the
// terminal is not a dumb one.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
