package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/fleet/peers"
)

// DefaultDemoDuration is how long the demo runs.
const DefaultDemoDuration = 60 * time.Second

// The demo's smaller defaults against a real API (--upstream), each used
// unless its flag is given.
const (
	upstreamAgents          = 2
	upstreamDuration        = 20 * time.Second
	upstreamMaxTokens       = 32
	upstreamModel           = "claude-haiku-5-5"
	upstreamMinPromptTokens = 20
	upstreamMaxPromptTokens = 100
)

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFleetFlags("demo", DefaultDemoDuration, stderr)
	upstream := f.fs.String("upstream", "", "run only the tollgate half against this real API base URL (e.g. https://api.anthropic.com), "+
		"with ANTHROPIC_API_KEY; small defaults: 2 agents, 20s, max_tokens 32, "+upstreamModel)
	f.addWorkloadFlags()
	f.fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: tollgate demo [flags]

Starts an embedded fake Anthropic API on 127.0.0.1 with tier-1-like limits
(50 requests, 30,000 input and 8,000 output tokens per minute) and runs the
same fleet of agents twice, side by side, each against its own copy: through
the official SDK alone (its default retries) and through tollgate. A line per
run shows calls, 429s, and the binding limit's use as it goes; a table at the
end compares them. Nothing leaves the machine unless --upstream is given.

flags:
`)
		f.fs.PrintDefaults()
	}
	if err := f.parse(args); err != nil {
		return err
	}

	// Check everything the flags say before anything is printed or started.
	var key string
	if *upstream != "" {
		u, err := url.Parse(*upstream)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return usagef("--upstream must be an http(s) URL, not %q", *upstream)
		}
		if key = os.Getenv("ANTHROPIC_API_KEY"); key == "" {
			return usagef("--upstream needs ANTHROPIC_API_KEY in the environment")
		}
		if f.agentsWorkload() {
			return usagef("--workload agents runs against the fake API only (its prompts of 6,000+ tokens would cost real money)")
		}
	}

	shutdown, tp, err := setupTracing(ctx)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			fmt.Fprintf(stderr, "tollgate demo: tracing shutdown: %v\n", err)
		}
	}()
	live := stdout
	if f.json {
		live = stderr
	}
	tracingNotice(live)

	cfg := f.config()
	tg := peers.Tollgate(f.withLimit, tracingOptions(tp)...)
	if *upstream == "" {
		return runFleet(ctx, "demo", f, cfg, []fleet.Client{peers.SDK(), tg}, stdout, stderr, writeColumns)
	}

	// Against a real API: only tollgate, small, and said out loud first.
	if !f.set("agents") {
		f.agents = upstreamAgents
	}
	if !f.set("duration") {
		f.duration = upstreamDuration
	}
	if !f.set("max-tokens") {
		f.maxTokens = upstreamMaxTokens
	}
	if !f.set("model") {
		f.model = upstreamModel
	}
	cfg = f.config()
	cfg.BaseURL, cfg.APIKey = *upstream, key
	cfg.Server = fleet.Config{}.Server
	cfg.MinPromptTokens, cfg.MaxPromptTokens = upstreamMinPromptTokens, upstreamMaxPromptTokens
	fmt.Fprintf(stderr, "WARNING: --upstream sends real requests to %s with your ANTHROPIC_API_KEY, which uses your quota and costs money:\n"+
		"  %d agents for %s, model %s, max_tokens %d, prompts of %d–%d words, through tollgate only.\n"+
		"  Shares are computed against the limits given by --rpm/--itpm/--otpm/--tpm (%s), not your account's.\n",
		*upstream, f.agents, f.duration, f.model, f.maxTokens, cfg.MinPromptTokens, cfg.MaxPromptTokens, limitsString(f.limits))
	return runFleet(ctx, "demo", f, cfg, []fleet.Client{tg}, stdout, stderr, writeColumns)
}
