package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// fleetFlags are the flags bench and demo share.
type fleetFlags struct {
	agents    int
	duration  time.Duration
	stream    bool
	json      bool
	limits    fleet.Limits
	maxTokens int
	model     string
	seed      uint64
	latency   time.Duration
	perToken  time.Duration
	withLimit bool
	// fleet, when set, describes the fleet instead of --agents (a bench
	// --scenario's groups).
	fleet string

	// Set by addWorkloadFlags (bench and demo); empty otherwise.
	hasWorkload bool
	workload    string // oneshot | agents
	outputRule  string // reserve | produced ("": the workload's)
	remaining   string // down | nearest | exact ("": the workload's)

	fs *flag.FlagSet
}

// The values of --workload, --output-rule and --remaining.
const (
	ruleReserve      = "reserve"
	ruleProduced     = "produced"
	remainingDown    = "down"
	remainingNearest = "nearest"
	remainingExact   = "exact"
)

// Defaults of the fake API: each call waits DefaultLatency, plus
// DefaultPerToken for each token of the reply (about 2 s for the average
// reply of 160 tokens), roughly a hosted model's pace.
const (
	DefaultLatency  = 500 * time.Millisecond
	DefaultPerToken = 10 * time.Millisecond
)

func newFleetFlags(name string, duration time.Duration, stderr io.Writer) *fleetFlags {
	f := &fleetFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	fs.IntVar(&f.agents, "agents", fleet.DefaultAgents, "agents per client, each making one call after another")
	fs.DurationVar(&f.duration, "duration", duration, "how long the agents keep starting calls")
	fs.BoolVar(&f.stream, "stream", false, "stream every reply (Messages.NewStreaming) instead of waiting for the JSON")
	fs.BoolVar(&f.json, "json", false, "print a machine-readable summary on stdout instead of the table (progress goes to stderr)")
	fs.IntVar(&f.limits.RequestsPerMinute, "rpm", fleet.Tier1.RequestsPerMinute, "requests per minute the fake API allows (0: unlimited)")
	fs.IntVar(&f.limits.InputTokensPerMinute, "itpm", fleet.Tier1.InputTokensPerMinute, "input tokens per minute the fake API allows (0: unlimited)")
	fs.IntVar(&f.limits.OutputTokensPerMinute, "otpm", fleet.Tier1.OutputTokensPerMinute, "output tokens per minute the fake API allows (0: unlimited)")
	fs.IntVar(&f.limits.TokensPerMinute, "tpm", 0, "input+output tokens per minute the fake API allows (0: unlimited)")
	fs.IntVar(&f.maxTokens, "max-tokens", fleet.DefaultMaxTokens, "max_tokens of every call (8192 with --workload agents); one-shot replies are 1/4 to all of it")
	fs.StringVar(&f.model, "model", fleet.DefaultModel, "model named in every call")
	fs.Uint64Var(&f.seed, "seed", 1, "seed of the prompt sizes and reply lengths (the same for every client)")
	fs.DurationVar(&f.latency, "latency", DefaultLatency, "fake API: wait before every admitted reply")
	fs.DurationVar(&f.perToken, "per-token", DefaultPerToken, "fake API: wait per generated token")
	fs.BoolVar(&f.withLimit, "with-limits", false, "tell tollgate the limits (WithLimits) instead of letting it learn them from the first responses")
	return f
}

// addWorkloadFlags adds --workload, --output-rule and --remaining.
func (f *fleetFlags) addWorkloadFlags() {
	f.hasWorkload = true
	f.fs.StringVar(&f.workload, "workload", string(fleet.WorkloadOneShot),
		"what the agents send: oneshot (one prompt of 300-1500 tokens per call) or agents "+
			"(multi-turn coding-agent conversations with tool calls and prompt caching; max_tokens 8192 unless --max-tokens)")
	f.fs.StringVar(&f.outputRule, "output-rule", "",
		"how the fake API counts output tokens: reserve (max_tokens reserved at admission, settled at the end) or "+
			"produced (counted as produced; max_tokens does not count) (default: reserve for oneshot, produced for agents)")
	f.fs.StringVar(&f.remaining, "remaining", "",
		"how the fake API rounds the *-tokens-remaining headers: down, nearest (thousand) or exact "+
			"(default: down for oneshot, nearest for agents)")
}

// agentsWorkload reports whether the agents workload was chosen.
func (f *fleetFlags) agentsWorkload() bool { return f.workload == string(fleet.WorkloadAgents) }

// parse parses args and checks the shared flags.
func (f *fleetFlags) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usageError{err}
	}
	if f.fs.NArg() > 0 {
		return usagef("unexpected argument %q", f.fs.Arg(0))
	}
	if f.hasWorkload {
		if err := f.resolveWorkload(); err != nil {
			return err
		}
	}
	switch {
	case f.agents < 1:
		return usagef("--agents must be at least 1, not %d", f.agents)
	case f.agents > 10_000:
		return usagef("--agents %d is more than this tool is meant for (10000)", f.agents)
	case f.duration <= 0:
		return usagef("--duration must be positive, not %s", f.duration)
	case f.maxTokens < 1:
		return usagef("--max-tokens must be at least 1, not %d", f.maxTokens)
	case f.limits.RequestsPerMinute < 0 || f.limits.InputTokensPerMinute < 0 ||
		f.limits.OutputTokensPerMinute < 0 || f.limits.TokensPerMinute < 0:
		return usagef("limits cannot be negative (0 means unlimited)")
	case f.limits == (fleet.Limits{}):
		return usagef("no limit set: give at least one of --rpm, --itpm, --otpm, --tpm")
	case f.latency < 0 || f.perToken < 0:
		return usagef("--latency and --per-token cannot be negative")
	case f.model == "":
		return usagef("--model cannot be empty")
	}
	// A call needs up to MaxTokens output tokens (when they are reserved)
	// and the input of its prompt (at most DefaultMaxPromptTokens one-shot;
	// for agents, a conversation's first prompt with a cold cache): one that
	// exceeds a bucket's capacity can never be admitted.
	out := f.maxTokens
	if f.outputRule == ruleProduced {
		out = 1
	}
	prompt := fleet.DefaultMaxPromptTokens
	if f.agentsWorkload() {
		prompt = fleet.Conversation{}.FirstPromptTokens()
	}
	if l := f.limits.OutputTokensPerMinute; l > 0 && out > l {
		return usagef("--max-tokens %d exceeds --otpm %d: no call could ever be admitted (unless --output-rule produced)", f.maxTokens, l)
	}
	if l := f.limits.InputTokensPerMinute; l > 0 && prompt > l {
		return usagef("--itpm %d is below the largest prompt (%d tokens)", l, prompt)
	}
	if l := f.limits.TokensPerMinute; l > 0 && prompt+out > l {
		return usagef("--tpm %d is below the largest call (%d tokens)", l, prompt+out)
	}
	return nil
}

// resolveWorkload checks --workload, --output-rule and --remaining and fills
// in the workload's defaults (and its max_tokens, unless given).
func (f *fleetFlags) resolveWorkload() error {
	agents := f.agentsWorkload()
	if !agents && f.workload != string(fleet.WorkloadOneShot) {
		return usagef("--workload must be %s or %s, not %q", fleet.WorkloadOneShot, fleet.WorkloadAgents, f.workload)
	}
	switch f.outputRule {
	case "":
		f.outputRule = ruleReserve
		if agents {
			f.outputRule = ruleProduced
		}
	case ruleReserve, ruleProduced:
	default:
		return usagef("--output-rule must be %s or %s, not %q", ruleReserve, ruleProduced, f.outputRule)
	}
	switch f.remaining {
	case "":
		f.remaining = remainingDown
		if agents {
			f.remaining = remainingNearest
		}
	case remainingDown, remainingNearest, remainingExact:
	default:
		return usagef("--remaining must be %s, %s or %s, not %q", remainingDown, remainingNearest, remainingExact, f.remaining)
	}
	if agents && !f.set("max-tokens") {
		f.maxTokens = fleet.DefaultAgentsMaxTokens
	}
	return nil
}

// set reports whether the flag was given on the command line.
func (f *fleetFlags) set(name string) bool {
	found := false
	f.fs.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// config is the fleet these flags describe, against fake APIs.
func (f *fleetFlags) config() fleet.Config {
	cfg := fleet.Config{
		Agents:    f.agents,
		Duration:  f.duration,
		Stream:    f.stream,
		Model:     f.model,
		MaxTokens: f.maxTokens,
		Seed:      f.seed,
		Limits:    f.limits,
		Workload:  fleet.Workload(f.workload),
		Server: tollgatetest.Config{
			RequestsPerMinute:     f.limits.RequestsPerMinute,
			InputTokensPerMinute:  f.limits.InputTokensPerMinute,
			OutputTokensPerMinute: f.limits.OutputTokensPerMinute,
			TokensPerMinute:       f.limits.TokensPerMinute,
			Latency:               f.latency,
			TimePerOutputToken:    f.perToken,
		},
	}
	if f.outputRule == ruleProduced {
		cfg.Server.OutputAccounting = tollgatetest.CountAsProduced
	}
	switch f.remaining {
	case remainingNearest:
		cfg.Server.RoundRemaining = tollgatetest.RoundNearest
	case remainingExact:
		cfg.Server.RoundRemaining = tollgatetest.Exact
	}
	return cfg
}

// setFlags returns the names of the flags given on the command line.
func (f *fleetFlags) setFlags() map[string]bool {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return set
}

func (f *fleetFlags) describe() string {
	mode := "JSON replies"
	if f.stream {
		mode = "streamed replies"
	}
	work := ""
	if f.agentsWorkload() {
		work = "agent conversations with prompt caching, "
	}
	server := ""
	if f.outputRule == ruleProduced {
		server += ", output counted as produced"
	}
	switch f.remaining {
	case remainingNearest:
		server += ", remaining rounded to the nearest 1,000"
	case remainingExact:
		server += ", remaining exact"
	}
	agents := fmt.Sprintf("%d agents per client", f.agents)
	if f.fleet != "" {
		agents = f.fleet
	}
	return fmt.Sprintf("%s for %s, %s%s, max_tokens %d; limits %s%s", agents, f.duration, work, mode, f.maxTokens,
		limitsString(f.limits), server)
}
