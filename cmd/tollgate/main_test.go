package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/fleet/peers"
	"github.com/tollgate-go/tollgate/internal/procfleet"
	"github.com/tollgate-go/tollgate/internal/redistest"
	"github.com/tollgate-go/tollgate/internal/syncbuf"
)

// TestMain runs the test binary as a bench-shared worker when the test of
// bench-shared re-executes it.
func TestMain(m *testing.M) {
	procfleet.MaybeRunWorker()
	// A test that needs the command as a process of its own (signals, exit
	// codes) re-executes this binary with runMainEnv set.
	if runMainRequested() {
		main()
	}
	goleak.VerifyTestMain(m)
}

// fast are flags for a short run whose limits are far above what it uses.
var fast = []string{"--duration", "1s", "--agents", "3", "--rpm", "600000", "--itpm", "100000000",
	"--otpm", "10000000", "--latency", "5ms", "--per-token", "0s", "--max-tokens", "16"}

func runCLI(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb syncbuf.Buffer
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	t.Setenv("ANTHROPIC_API_KEY", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: tollgate <command>"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"bench", "--agents", "0"}, "--agents must be at least 1"},
		{[]string{"bench", "--agents", "x"}, `invalid value "x" for flag -agents`},
		{[]string{"bench", "--duration", "-1s"}, "--duration must be positive"},
		{[]string{"bench", "--duration", "soon"}, "invalid value"},
		{[]string{"bench", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"bench", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "--clients", "sdk,nope"}, `unknown client "nope"`},
		{[]string{"bench", "--clients", "sdk,sdk"}, `client "sdk" named twice`},
		{[]string{"bench", "--clients", ""}, "no clients named"},
		{[]string{"bench", "--rpm", "0", "--itpm", "0", "--otpm", "0"}, "no limit set"},
		{[]string{"bench", "--rpm", "-5"}, "cannot be negative"},
		{[]string{"bench", "--max-tokens", "9000"}, "exceeds --otpm 8000"},
		{[]string{"bench", "--workload", "chatty"}, `--workload must be oneshot or agents, not "chatty"`},
		{[]string{"bench", "--workload", ""}, "--workload must be"},
		{[]string{"bench", "--output-rule", "later"}, "--output-rule must be reserve or produced"},
		{[]string{"bench", "--remaining", "up"}, "--remaining must be down, nearest or exact"},
		{[]string{"bench", "--workload", "agents", "--output-rule", "reserve"}, "--max-tokens 8192 exceeds --otpm 8000"},
		{[]string{"bench", "--workload", "agents", "--itpm", "5000"}, "below the largest prompt (6"},
		{[]string{"bench-shared", "--workload", "agents"}, "flag provided but not defined: -workload"},
		{[]string{"bench", "--scenario", "lottery"}, `--scenario must be priority or tenants, not "lottery"`},
		{[]string{"bench", "--scenario", "priority", "--clients", "sdk"}, "--scenario runs clients of its own"},
		{[]string{"bench", "--scenario", "priority", "--every", "0s"}, "--every positive"},
		{[]string{"bench", "--scenario", "priority", "--workload", "agents"}, "--scenario runs the oneshot workload only"},
		{[]string{"bench", "--scenario", "tenants", "--tenant-agents", "12"}, "--tenant-agents must be two values"},
		{[]string{"bench", "--scenario", "tenants", "--tenant-agents", "0,4"}, "--tenant-agents must be two numbers of at least 1"},
		{[]string{"bench", "--scenario", "tenants", "--tenant-weights", "1,x"}, "--tenant-weights"},
		{[]string{"bench", "--api", "grpc"}, `--api must be anthropic or openai, not "grpc"`},
		{[]string{"bench", "--api", "openai", "--workload", "agents", "--tpm", "12000"}, "--tpm 12000 is below the largest first call"},
		{[]string{"demo", "--itpm", "1000"}, "below the largest prompt"},
		{[]string{"demo", "--agents", "-3"}, "--agents must be at least 1"},
		{[]string{"bench-shared", "--processes", "0"}, "--processes must be between 1 and 64"},
		{[]string{"bench-shared", "--agents", "0"}, "--agents must be at least 1"},
		{[]string{"demo", "--upstream", "ftp://example.com"}, "--upstream must be an http(s) URL"},
		{[]string{"demo", "--upstream", "https://example.invalid"}, "needs ANTHROPIC_API_KEY"},
		{[]string{"proxy", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"proxy", "--listen", "8787"}, "--listen must be host:port"},
		{[]string{"proxy", "--anthropic-upstream", "localhost:1"}, "--anthropic-upstream must be an http(s) base URL"},
		{[]string{"proxy", "--max-body", "big"}, `invalid value "big" for flag -max-body`},
	} {
		code, stdout, stderr := runCLI(context.Background(), tc.args...)
		assert.Equal(t, exitUsage, code, "%v", tc.args)
		assert.Empty(t, stdout, "%v", tc.args)
		assert.Contains(t, stderr, tc.want, "%v", tc.args)
	}
}

func TestDemoUpstreamRefusesAgents(t *testing.T) {
	t.Setenv("ANTHROPIC_API_KEY", "not-used")
	code, stdout, stderr := runCLI(context.Background(), "demo", "--upstream", "https://example.invalid", "--workload", "agents")
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, "--workload agents runs against the fake API only")
}

// The agents workload is accepted where the one-shot one would not be
// (max_tokens 8192 above an 8,000 OTPM: output is counted as produced), and
// its summary carries the server's rules and the cache figures.
func TestBenchAgentsJSON(t *testing.T) {
	args := []string{"bench", "--json", "--workload", "agents", "--clients", "sdk,failsafe", "--duration", "2s", "--agents", "3",
		"--rpm", "600000", "--itpm", "100000000", "--otpm", "8000", "--latency", "5ms", "--per-token", "0s"}
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, "agents", s.Config.Workload)
	assert.Equal(t, "produced", s.Config.OutputRule)
	assert.Equal(t, "nearest", s.Config.Remaining)
	assert.Equal(t, 8192, s.Config.MaxTokens)
	assert.Contains(t, stderr, "agent conversations with prompt caching")
	require.Len(t, s.Results, 2)
	for _, r := range s.Results {
		assert.Positive(t, r.OKCalls, r.Client)
		assert.Positive(t, r.Used.CacheReadInputTokens, r.Client)
		assert.Positive(t, r.Used.CacheCreationInputTokens, r.Client)
		assert.Equal(t, r.Used.PromptTokens, r.Used.InputTokens+r.Used.CacheReadInputTokens, "%s: Sonnet: reads do not count", r.Client)
		assert.InDelta(t, float64(r.Used.CacheReadInputTokens)/float64(r.Used.PromptTokens), r.CacheReadShare, 1e-9)
		assert.Greater(t, r.OKMeanPromptTokens, 6000.0, "the shared system prompt alone is 6,000 tokens")
	}

	// The table shows the cache columns; the one-shot table does not.
	args = []string{"bench", "--workload", "agents", "--output-rule", "reserve", "--remaining", "exact", "--max-tokens", "1000",
		"--clients", "sdk", "--duration", "1s", "--agents", "2", "--rpm", "600000", "--itpm", "100000000", "--otpm", "10000000",
		"--latency", "5ms", "--per-token", "0s"}
	code, stdout, stderr = runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	assert.Contains(t, stdout, "prompt read from cache")
	assert.Contains(t, stdout, "cache read / written")
	assert.NotContains(t, stderr+stdout, "counted as produced")
	assert.Contains(t, stdout+stderr, "remaining exact")
	code, stdout, stderr = runCLI(context.Background(), append([]string{"bench", "--clients", "sdk"}, fast...)...)
	require.Equal(t, exitOK, code, stderr)
	assert.NotContains(t, stdout, "prompt read from cache")
}

func TestHelp(t *testing.T) {
	code, stdout, _ := runCLI(context.Background(), "help")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, stdout, "bench")
	for _, cmd := range []string{"bench", "demo", "bench-shared"} {
		code, stdout, stderr := runCLI(context.Background(), cmd, "-h")
		assert.Equal(t, exitOK, code)
		assert.Empty(t, stdout)
		assert.Contains(t, stderr, "usage: tollgate "+cmd)
		assert.Contains(t, stderr, "-agents")
	}
}

// decode parses a --json summary, checking it holds nothing else.
func decode(t *testing.T, stdout string) summary {
	t.Helper()
	var s summary
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&s), stdout)
	assert.False(t, dec.More(), "one JSON value only")
	return s
}

func TestBenchJSON(t *testing.T) {
	args := append([]string{"bench", "--json", "--clients", "sdk,queue4,tollgate"}, fast...)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, "bench", s.Command)
	assert.False(t, s.Interrupted)
	assert.Equal(t, 3, s.Config.Agents)
	assert.Equal(t, 1.0, s.Config.DurationSeconds)
	assert.Equal(t, fleet.Limits{RequestsPerMinute: 600_000, InputTokensPerMinute: 100_000_000, OutputTokensPerMinute: 10_000_000}, s.Config.Limits)
	require.Len(t, s.Results, 3)
	for i, name := range []string{"sdk", "queue4", "tollgate"} {
		r := s.Results[i]
		assert.Equal(t, name, r.Client)
		assert.Positive(t, r.OKCalls, name)
		assert.Zero(t, r.FailedCalls, name)
		assert.NotNil(t, r.FailedByKind)
		assert.Equal(t, "server", r.Source)
		assert.InDelta(t, 1.0, r.ElapsedSeconds, 0.3)
		assert.Len(t, r.Shares, 3)
		assert.Greater(t, r.BindingShare, 0.0)
		assert.Less(t, r.BindingShare, 1.0)
		assert.NotEmpty(t, r.BindingDimension)
		assert.Positive(t, r.P50MS)
		assert.GreaterOrEqual(t, r.P95MS, r.P50MS)
		assert.InDelta(t, float64(r.OKCalls)/(r.ElapsedSeconds/60), r.OKPerMinute, 1e-6)
	}
	// The raw keys, as a script would read them.
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &raw))
	res := raw["results"].([]any)[0].(map[string]any)
	for _, k := range []string{"binding_share", "failed_calls", "rate_limited_per_100_ok", "ok_per_minute", "p50_ms", "p95_ms", "elapsed_seconds"} {
		assert.Contains(t, res, k)
	}
	assert.Contains(t, stderr, "tollgate bench:", "progress goes to stderr with --json")
}

// bench-shared runs two fleets of processes (this test binary, re-executed)
// side by side, one sharing its budget through Redis.
func TestBenchSharedJSON(t *testing.T) {
	addr := redistest.Shared(t)
	args := append(append([]string{"bench-shared", "--json"}, fast...), "--processes", "2", "--agents", "2", "--duration", "2s", "--redis", addr)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	var s sharedSummary
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&s), stdout)
	assert.Equal(t, "bench-shared", s.Command)
	assert.Equal(t, 2, s.Config.Processes)
	assert.Equal(t, 2, s.Config.Agents)
	assert.Equal(t, addr, s.Config.Redis)
	require.Len(t, s.Results, 2)
	for i, mode := range []procfleet.Mode{procfleet.ModeRedis, procfleet.ModeMemory} {
		r := s.Results[i]
		assert.Equal(t, mode, r.Mode)
		assert.Len(t, r.Workers, 2)
		assert.Positive(t, r.OKCalls, mode)
		assert.Zero(t, r.FailedCalls, mode)
		assert.Equal(t, "server", r.Source)
		assert.InDelta(t, 2.0, r.ElapsedSeconds, 0.3)
	}
	redis := s.Results[0].Redis
	require.NotNil(t, redis)
	assert.Positive(t, redis.ScriptRuns)
	assert.Positive(t, redis.Store.Admits)
	assert.Nil(t, s.Results[1].Redis)
	assert.Contains(t, stderr, "tollgate bench-shared:", "progress goes to stderr with --json")

	// The table.
	args = append(append([]string{"bench-shared"}, fast...), "--processes", "1", "--agents", "2", "--duration", "1s", "--redis", addr)
	code, stdout, stderr = runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	assert.Contains(t, stdout, "Redis round trips per request")
	assert.Contains(t, stdout, "redis: shared through Redis")
	assert.Contains(t, stdout, "store calls:")
}

func TestDemoTable(t *testing.T) {
	args := append([]string{"demo", "--stream"}, fast...)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	assert.Contains(t, stdout, "share of binding limit used")
	assert.Contains(t, stdout, "p95 latency")
	assert.Contains(t, stdout, "sdk")
	assert.Contains(t, stdout, "tollgate")
	assert.NotContains(t, stdout, "\x1b[", "no terminal, no escape codes")
}

func TestDemoJSON(t *testing.T) {
	args := append([]string{"demo", "--json"}, fast...)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, "demo", s.Command)
	require.Len(t, s.Results, 2)
	assert.Equal(t, "sdk", s.Results[0].Client)
	assert.Equal(t, "tollgate", s.Results[1].Client)
}

func TestInterruptPrintsWhatWasMeasured(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(700*time.Millisecond, cancel)
	args := append([]string{"demo", "--json"}, fast...)
	args = append(args, "--duration", "1m")
	t0 := time.Now()
	code, stdout, stderr := runCLI(ctx, args...)
	assert.Less(t, time.Since(t0), 5*time.Second)
	require.Equal(t, exitInterrupted, code, stderr)
	s := decode(t, stdout)
	assert.True(t, s.Interrupted)
	for _, r := range s.Results {
		assert.True(t, r.Interrupted)
		assert.Positive(t, r.OKCalls)
		assert.Less(t, r.ElapsedSeconds, 5.0)
	}

	// The table says so too.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	args = append(append([]string{"bench", "--clients", "sdk"}, fast...), "--duration", "1m")
	code, stdout, _ = runCLI(ctx, args...)
	require.Equal(t, exitInterrupted, code)
	assert.Contains(t, stdout, "Interrupted after")
	assert.Contains(t, stdout, "sdk")
}

// --scenario priority runs one fleet of Background agents and Interactive
// agents (each starting a call every --every) through tollgate with
// priorities, without headroom and without priorities (FIFO), and the
// Interactive agents alone on an idle key; the table sets their latencies
// next to the idle key's.
func TestBenchScenarioPriority(t *testing.T) {
	args := append([]string{"bench", "--json", "--scenario", "priority", "--interactive", "1", "--every", "100ms"}, fast...)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, []summaryGroup{{Name: "background", Agents: 3}, {Name: "interactive", Agents: 1, EverySeconds: 0.1}}, s.Config.Groups)
	assert.Contains(t, stderr, "3 Background agents and 1 Interactive agents (a call every 100ms each) per run")
	var names []string
	for _, r := range s.Results {
		names = append(names, r.Client)
		assert.Zero(t, r.FailedCalls, r.Client)
		groups := map[string]fleet.GroupResult{}
		for _, g := range r.Groups {
			groups[g.Name] = g
		}
		assert.Positive(t, groups["interactive"].OK, r.Client)
		assert.Equal(t, 1, groups["interactive"].Agents, r.Client)
		if r.Client == "idle key" {
			assert.NotContains(t, groups, "background", "the idle key has the Interactive agents alone")
			continue
		}
		assert.Positive(t, groups["background"].OK, r.Client)
		assert.Equal(t, 3, groups["background"].Agents, r.Client)
	}
	assert.Equal(t, []string{"priorities", "priorities, no headroom", "FIFO", "idle key"}, names)

	args = append([]string{"bench", "--scenario", "priority", "--interactive", "1", "--every", "100ms"}, fast...)
	code, stdout, stderr = runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	assert.Contains(t, stdout, "interactive p50 (× idle)")
	assert.Regexp(t, `priorities, no headroom +[0-9.]+ %`, stdout)
}

// --scenario tenants runs two tenants' agents with fair share and FIFO, and
// shows each tenant's share of the input tokens served.
func TestBenchScenarioTenants(t *testing.T) {
	args := append([]string{"bench", "--json", "--scenario", "tenants", "--tenant-agents", "2,1", "--tenant-weights", "2,1"}, fast...)
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, []summaryGroup{{Name: "tenant-a", Agents: 2}, {Name: "tenant-b", Agents: 1}}, s.Config.Groups)
	assert.Contains(t, stderr, "tenant a: 2 agents (weight 2), tenant b: 1 agents (weight 1) per run")
	require.Len(t, s.Results, 2)
	for i, name := range []string{"fair share", "FIFO"} {
		r := s.Results[i]
		assert.Equal(t, name, r.Client)
		require.Len(t, r.Groups, 2, name)
		share := 0.0
		for _, g := range r.Groups {
			assert.Positive(t, g.InputTokens, "%s %s", name, g.Name)
			share += g.InputShare
		}
		assert.InDelta(t, 1, share, 1e-9, "%s: the tenants' shares of the input tokens served add up", name)
	}

	args = append([]string{"bench", "--scenario", "tenants", "--tenant-agents", "2,1"}, fast...)
	code, stdout, stderr = runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	assert.Contains(t, stdout, "tenant a (2 agents): input tokens")
	assert.Contains(t, stdout, "fair share")
}

// --api openai runs the fleet through openai-go against the fake API's
// Chat Completions route, JSON and streamed.
func TestBenchOpenAI(t *testing.T) {
	for _, stream := range []bool{false, true} {
		args := append([]string{"bench", "--json", "--api", "openai", "--clients", "sdk,tollgate", fmt.Sprintf("--stream=%v", stream)}, fast...)
		args = append(args, "--itpm", "0", "--otpm", "0", "--tpm", "100000000")
		code, stdout, stderr := runCLI(context.Background(), args...)
		require.Equal(t, exitOK, code, stderr)
		s := decode(t, stdout)
		assert.Equal(t, "openai", s.Config.API)
		require.Len(t, s.Results, 2)
		for _, r := range s.Results {
			assert.Positive(t, r.OKCalls, "%s stream=%v", r.Client, stream)
			assert.Zero(t, r.FailedCalls, "%s stream=%v", r.Client, stream)
			assert.Positive(t, r.Used.InputTokens, "%s stream=%v: usage read from openai-go's response", r.Client, stream)
			assert.Positive(t, r.Used.OutputTokens, "%s stream=%v", r.Client, stream)
		}
	}

	// The agents workload: every prompt token counts, cached or not, and a
	// conversation stops growing before a turn and its max_tokens would
	// exceed the tokens-per-minute limit.
	args := []string{"bench", "--json", "--api", "openai", "--workload", "agents", "--clients", "sdk,tollgate", "--duration", "2s",
		"--agents", "3", "--rpm", "600000", "--itpm", "0", "--otpm", "0", "--tpm", "60000", "--max-tokens", "1000",
		"--latency", "5ms", "--per-token", "0s"}
	code, stdout, stderr := runCLI(context.Background(), args...)
	require.Equal(t, exitOK, code, stderr)
	s := decode(t, stdout)
	assert.Equal(t, "agents", s.Config.Workload)
	require.Len(t, s.Results, 2)
	for _, r := range s.Results {
		assert.Positive(t, r.OKCalls, r.Client)
		assert.Zero(t, r.FailedCalls, r.Client)
		assert.Positive(t, r.Used.CacheReadInputTokens, r.Client)
		assert.Equal(t, r.Used.PromptTokens, r.Used.InputTokens, "%s: cached tokens count", r.Client)
		assert.Greater(t, r.OKMeanPromptTokens, 6000.0, "the shared system prompt alone is 6,000 tokens")
		assert.LessOrEqual(t, r.OKMeanPromptTokens, 59000.0, "%s: prompts stay under --tpm less --max-tokens", r.Client)
	}
}

func TestWithLimitsReplacesTollgate(t *testing.T) {
	list, err := peers.Parse("sdk,tollgate")
	require.NoError(t, err)
	names := func(cs []fleet.Client) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	assert.Equal(t, []string{"sdk", "tollgate+limits"}, names(withLimitsInstead(list)))
	list, err = peers.Parse("tollgate,tollgate+limits")
	require.NoError(t, err)
	assert.Equal(t, []string{"tollgate+limits"}, names(withLimitsInstead(list)))
}

func TestLiveViewOnATerminalRedrawsInPlace(t *testing.T) {
	var b bytes.Buffer
	v := &liveView{w: &b, terminal: true}
	ps := []fleet.Progress{{Client: "sdk", OK: 1}, {Client: "tollgate", OK: 2, Status: "breaker closed"}}
	v.update(ps)
	v.update(ps)
	out := b.String()
	assert.Equal(t, 1, strings.Count(out, "\x1b[2A"), "the second draw goes back up two lines")
	assert.Contains(t, out, "breaker closed")

	b.Reset()
	v = &liveView{w: &b, every: time.Hour}
	v.update(ps)
	v.update(ps) // too soon: skipped
	ps[0].Done, ps[1].Done = true, true
	v.update(ps) // the last one always shows
	assert.Equal(t, 4, strings.Count(b.String(), "\n"))
	assert.NotContains(t, b.String(), "\x1b")
}
