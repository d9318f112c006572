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

	fs *flag.FlagSet
}

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
	fs.IntVar(&f.maxTokens, "max-tokens", fleet.DefaultMaxTokens, "max_tokens of every call; replies are 1/4 to all of it")
	fs.StringVar(&f.model, "model", fleet.DefaultModel, "model named in every call")
	fs.Uint64Var(&f.seed, "seed", 1, "seed of the prompt sizes and reply lengths (the same for every client)")
	fs.DurationVar(&f.latency, "latency", DefaultLatency, "fake API: wait before every admitted reply")
	fs.DurationVar(&f.perToken, "per-token", DefaultPerToken, "fake API: wait per generated token")
	fs.BoolVar(&f.withLimit, "with-limits", false, "tell tollgate the limits (WithLimits) instead of letting it learn them from the first responses")
	return f
}

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
	// A call needs up to MaxTokens output tokens and a prompt of up to
	// DefaultMaxPromptTokens: one that exceeds a bucket's capacity can never
	// be admitted.
	if l := f.limits.OutputTokensPerMinute; l > 0 && f.maxTokens > l {
		return usagef("--max-tokens %d exceeds --otpm %d: no call could ever be admitted", f.maxTokens, l)
	}
	if l := f.limits.InputTokensPerMinute; l > 0 && fleet.DefaultMaxPromptTokens > l {
		return usagef("--itpm %d is below the largest prompt (%d tokens)", l, fleet.DefaultMaxPromptTokens)
	}
	if l := f.limits.TokensPerMinute; l > 0 && fleet.DefaultMaxPromptTokens+f.maxTokens > l {
		return usagef("--tpm %d is below the largest call (%d tokens)", l, fleet.DefaultMaxPromptTokens+f.maxTokens)
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
	return fleet.Config{
		Agents:    f.agents,
		Duration:  f.duration,
		Stream:    f.stream,
		Model:     f.model,
		MaxTokens: f.maxTokens,
		Seed:      f.seed,
		Limits:    f.limits,
		Server: tollgatetest.Config{
			RequestsPerMinute:     f.limits.RequestsPerMinute,
			InputTokensPerMinute:  f.limits.InputTokensPerMinute,
			OutputTokensPerMinute: f.limits.OutputTokensPerMinute,
			TokensPerMinute:       f.limits.TokensPerMinute,
			Latency:               f.latency,
			TimePerOutputToken:    f.perToken,
		},
	}
}

func (f *fleetFlags) describe() string {
	mode := "JSON replies"
	if f.stream {
		mode = "streamed replies"
	}
	return fmt.Sprintf("%d agents per client for %s, %s, max_tokens %d; limits %s", f.agents, f.duration, mode, f.maxTokens, limitsString(f.limits))
}
