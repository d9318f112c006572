package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/fleet/peers"
)

// benchClients is the default --clients of bench.
var benchClients = []string{peers.NameSDK, peers.NameQueue4, peers.NameRetryableHTTP, peers.NameFailsafe, peers.NameTollgate}

func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newFleetFlags("bench", fleet.DefaultDuration, stderr)
	clients := f.fs.String("clients", strings.Join(benchClients, ","),
		"comma-separated clients to run side by side: "+strings.Join(peers.Names(), ", "))
	api := f.fs.String("api", fleet.APIAnthropic, "the API the agents call: anthropic (Messages, through anthropic-sdk-go) or openai "+
		"(Chat Completions through openai-go; give it --tpm, and --itpm 0 --otpm 0, for OpenAI-style limits)")
	var sc scenarioFlags
	sc.add(f)
	f.addWorkloadFlags()
	f.fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: tollgate bench [flags]

Runs the same fleet of agents through each client, side by side, each against
its own fake Anthropic API on 127.0.0.1 with the same limits (tier-1-like by
default), and prints what each got out of them:

  share of binding limit   what the server admitted, over the most it could have
                           admitted in the time (buckets start full): for each limit
                           L, used / (L + L·minutes); the largest is shown
  failed calls             calls that returned an error to the agent
  429s per 100 OK          rate-limit responses the client drew, per successful call
  OK calls/min             successful calls per minute
  p50, p95                 latency of successful calls, retries and waits included
  cache read / written     prompt tokens the server read from / wrote to its prompt
                           cache (shown when there are any), and the share of all
                           prompt tokens read from it; input tokens count against
                           the input limit as the server counts them (input + cache
                           writes)

--scenario priority runs 16 Background agents (--agents) and 2 Interactive agents that
each start a call every 5 s, through tollgate with priorities, with priorities but no
headroom for Interactive calls, and without priorities (FIFO), and the Interactive agents
alone on an idle key: the Interactive latencies are shown next to the idle key's.
--scenario tenants runs two tenants of 12 and 4 agents (--tenant-agents), equal weights
(--tenant-weights), with fair share and FIFO, and shows each one's share of the input
tokens served.

--workload agents runs a coding-agent fleet instead of one-shot prompts: each agent
holds multi-turn conversations (a shared 6,000-token system prompt, a task, then
turn after turn the model's reply with a tool call and the tool's result, cached
with cache_control on the system prompt and the newest turn), max_tokens 8192;
the fake API then counts output as produced and rounds *-remaining to the nearest
thousand, as Anthropic's docs say today (--output-rule, --remaining). With
--api openai the same conversations go through Chat Completions (a function call
and a tool message per turn; prefixes cached by the API itself, every prompt token
and max_tokens counted against --tpm, as OpenAI does), and a conversation stops
growing before a turn would exceed --tpm.

flags:
`)
		f.fs.PrintDefaults()
	}
	if err := f.parse(args); err != nil {
		return err
	}
	list, err := peers.Parse(*clients)
	if err != nil {
		return usageError{err}
	}
	if f.withLimit {
		list = withLimitsInstead(list)
	}
	cfg := f.config()
	cfg.API = *api
	if cfg.API != fleet.APIAnthropic && cfg.API != fleet.APIOpenAI {
		return usagef("--api must be %s or %s, not %q", fleet.APIAnthropic, fleet.APIOpenAI, cfg.API)
	}
	if cfg.API == fleet.APIOpenAI && f.agentsWorkload() {
		// Chat Completions counts every prompt token, cached or not, and
		// max_tokens up front: a conversation stops growing before one
		// turn would no longer fit the tokens-per-minute limit.
		if tpm := f.limits.TokensPerMinute; tpm > 0 {
			if first := (fleet.Conversation{}).FirstPromptTokens(); first+cfg.MaxTokens > tpm {
				return usagef("--tpm %d is below the largest first call (%d prompt tokens + --max-tokens %d)", tpm, first, cfg.MaxTokens)
			}
			cfg.Conversation.MaxConversationTokens = min(fleet.DefaultConversationTokens, tpm-cfg.MaxTokens)
		}
	}
	table := writeRows
	scenario, err := sc.apply(f, &cfg)
	if err != nil {
		return err
	}
	if scenario != nil {
		if set := f.setFlags(); set["clients"] || set["with-limits"] {
			return usagef("--scenario runs clients of its own: drop --clients and --with-limits")
		}
		if f.agentsWorkload() {
			return usagef("--scenario runs the oneshot workload only")
		}
		list = scenario
		table = writePriorityRows
		if sc.name == scenarioTenants {
			table = writeTenantRows
		}
	}
	return runFleet(ctx, "bench", f, cfg, list, stdout, stderr, table)
}

// withLimitsInstead replaces tollgate by tollgate+limits (once).
func withLimitsInstead(list []fleet.Client) []fleet.Client {
	has := func(name string) bool {
		for _, c := range list {
			if c.Name == name {
				return true
			}
		}
		return false
	}
	out := make([]fleet.Client, 0, len(list))
	for _, c := range list {
		if c.Name == peers.NameTollgate {
			if has(peers.NameTollgateLimits) {
				continue
			}
			c = peers.Tollgate(true)
		}
		out = append(out, c)
	}
	return out
}

// runFleet runs the fleet with live progress and prints the results as a
// table (by table) or as JSON.
func runFleet(ctx context.Context, command string, f *fleetFlags, cfg fleet.Config, clients []fleet.Client,
	stdout, stderr io.Writer, table func(io.Writer, []fleet.Result)) error {
	live := stdout
	if f.json {
		live = stderr
	}
	names := make([]string, len(clients))
	for i, c := range clients {
		names[i] = c.Name
	}
	fmt.Fprintf(live, "tollgate %s: %s, through %s\n", command, f.describe(), strings.Join(names, ", "))
	if cfg.BaseURL == "" {
		fmt.Fprintf(live, "each client against its own fake API on 127.0.0.1; Ctrl-C stops and prints what was measured\n\n")
	}
	view := newLiveView(live)
	cfg.Progress = view.update
	started := time.Now()
	results, err := fleet.Run(ctx, cfg, clients...)
	if err != nil {
		return err
	}
	interrupted := len(results) > 0 && results[0].Interrupted
	if f.json {
		if err := writeJSON(stdout, newSummary(command, started, f, cfg, results)); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout)
		if interrupted {
			fmt.Fprintf(stdout, "Interrupted after %s: the figures cover only that time.\n\n", results[0].Elapsed.Round(100*time.Millisecond))
		}
		table(stdout, results)
		writeFailures(stdout, results)
	}
	if interrupted {
		return errInterrupted
	}
	return nil
}
