package fleet

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bare is the SDK alone with the given retries, on the fleet's transport.
func bare(name string, retries int) Client {
	return Client{Name: name, New: func(env Env) (*Target, error) {
		return &Target{Client: anthropic.NewClient(
			option.WithBaseURL(env.BaseURL), option.WithAPIKey(env.APIKey),
			option.WithHTTPClient(&http.Client{Transport: env.Transport}),
			option.WithMaxRetries(retries), option.WithoutOpenTelemetry(),
		)}, nil
	}}
}

// small is a fleet of short calls with limits far above what it can use.
func small() Config {
	return Config{
		Agents: 4, Duration: 500 * time.Millisecond,
		MaxTokens: 16, MinPromptTokens: 10, MaxPromptTokens: 50, Seed: 7,
		Server: tollgatetest.Config{
			RequestsPerMinute: 1_000_000, InputTokensPerMinute: 100_000_000, OutputTokensPerMinute: 10_000_000,
			Latency: 5 * time.Millisecond,
		},
	}
}

func TestSharesHandComputed(t *testing.T) {
	// 30 s at 50 RPM / 30k ITPM / 8k OTPM: the buckets start full, so the
	// allowances are 50+25, 30,000+15,000 and 8,000+4,000.
	shares := Shares(Usage{Requests: 30, InputTokens: 27_000, OutputTokens: 4_000},
		Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, 30*time.Second)
	require.Len(t, shares, 3)
	want := []Share{
		{Dimension: DimRequests, Limit: 50, Used: 30, Allowance: 75, Share: 0.4},
		{Dimension: DimInputTokens, Limit: 30_000, Used: 27_000, Allowance: 45_000, Share: 0.6},
		{Dimension: DimOutputTokens, Limit: 8_000, Used: 4_000, Allowance: 12_000, Share: 1.0 / 3},
	}
	for i := range want {
		assert.Equal(t, want[i].Dimension, shares[i].Dimension)
		assert.Equal(t, want[i].Limit, shares[i].Limit)
		assert.Equal(t, want[i].Used, shares[i].Used)
		assert.InDelta(t, want[i].Allowance, shares[i].Allowance, 1e-9)
		assert.InDelta(t, want[i].Share, shares[i].Share, 1e-12)
	}
	assert.Equal(t, DimInputTokens, Binding(shares).Dimension)

	// A combined limit counts input and output together; unset limits are left out.
	shares = Shares(Usage{Requests: 9, InputTokens: 600, OutputTokens: 300}, Limits{TokensPerMinute: 1_000}, 2*time.Minute)
	require.Len(t, shares, 1)
	assert.Equal(t, DimTokens, shares[0].Dimension)
	assert.InDelta(t, 900.0/3000, shares[0].Share, 1e-12)
	assert.Equal(t, Share{}, Binding(nil))
}

func TestPercentileNearestRank(t *testing.T) {
	ds := make([]time.Duration, 20)
	for i := range ds {
		ds[i] = time.Duration(20-i) * time.Millisecond // 20 ms .. 1 ms, unsorted
	}
	assert.Equal(t, 10*time.Millisecond, Percentile(ds, 50)) // rank ceil(10) = 10
	assert.Equal(t, 19*time.Millisecond, Percentile(ds, 95)) // rank ceil(19) = 19
	assert.Equal(t, 20*time.Millisecond, Percentile(ds, 100))
	assert.Equal(t, 1*time.Millisecond, Percentile(ds, 1)) // rank ceil(0.2) = 1
	assert.Equal(t, 20*time.Millisecond, ds[0], "input left as it was")

	three := []time.Duration{3, 1, 2}
	assert.Equal(t, time.Duration(2), Percentile(three, 50)) // rank ceil(1.5) = 2
	assert.Equal(t, time.Duration(3), Percentile(three, 95)) // rank ceil(2.85) = 3
	assert.Equal(t, time.Duration(0), Percentile(nil, 95))
}

func TestSummarize(t *testing.T) {
	r := Result{
		Elapsed: 30 * time.Second, RateLimited: 3,
		Used:   Usage{Requests: 4, InputTokens: 100, OutputTokens: 10},
		Limits: Limits{RequestsPerMinute: 10},
		Calls: []Call{
			{OK: true, Latency: 4 * time.Second, PromptTokens: 10}, {OK: true, Latency: 1 * time.Second, PromptTokens: 20},
			{OK: true, Latency: 3 * time.Second, PromptTokens: 30}, {OK: true, Latency: 2 * time.Second, PromptTokens: 40},
			{Kind: KindRateLimited}, {Kind: KindTransport}, {Kind: KindCutOff},
		},
	}
	r.Summarize()
	assert.Equal(t, 4, r.OK)
	assert.Equal(t, 2, r.Failed)
	assert.Equal(t, 1, r.CutOff)
	assert.Equal(t, map[string]int{KindRateLimited: 1, KindTransport: 1}, r.FailedByKind)
	assert.InDelta(t, 75, r.RateLimitedPer100OK, 1e-9)
	assert.InDelta(t, 8, r.OKPerMinute, 1e-9)
	assert.Equal(t, 2*time.Second, r.P50)
	assert.Equal(t, 4*time.Second, r.P95)
	assert.InDelta(t, 25, r.OKPromptTokens, 1e-9)
	assert.InDelta(t, 4.0/15, r.Binding.Share, 1e-12)
}

func TestSummarizeGroups(t *testing.T) {
	r := Result{Calls: []Call{
		{Agent: 0, Group: "a", OK: true, Latency: 2 * time.Second, InputTokens: 300, OutputTokens: 10},
		{Agent: 1, Group: "a", OK: true, Latency: 4 * time.Second, InputTokens: 300, OutputTokens: 10},
		{Agent: 2, Group: "b", OK: true, Latency: 1 * time.Second, InputTokens: 400, OutputTokens: 30},
		{Agent: 2, Group: "b", Kind: KindTransport},
		{Agent: 3, Group: "b", Kind: KindCutOff}, // counts neither way
	}}
	r.Summarize()
	assert.Equal(t, []GroupResult{
		{Name: "a", Agents: 2, OK: 2, P50: 2 * time.Second, P95: 4 * time.Second, Max: 4 * time.Second,
			InputTokens: 600, OutputTokens: 20, InputShare: 0.6, OutputShare: 0.4},
		{Name: "b", Agents: 1, OK: 1, Failed: 1, P50: time.Second, P95: time.Second, Max: time.Second,
			InputTokens: 400, OutputTokens: 30, InputShare: 0.4, OutputShare: 0.6},
	}, r.Groups)

	r = Result{Calls: []Call{{OK: true, InputTokens: 1}}}
	r.Summarize()
	assert.Nil(t, r.Groups, "no groups, none summed up")
}

// A fleet of groups: each agent's calls carry its group (GroupOf in the
// call's context), a client with Only runs those groups' agents alone, and
// a group with a pace starts a call that often.
func TestRunGroups(t *testing.T) {
	cfg := small()
	cfg.Duration = 600 * time.Millisecond
	cfg.Groups = []Group{{Name: "busy", Agents: 2}, {Name: "paced", Agents: 1, Every: 200 * time.Millisecond}}
	seen := func(name string, only ...string) Client {
		c := bare(name, 0)
		c.Only = only
		build := c.New
		c.New = func(env Env) (*Target, error) {
			t, err := build(env)
			if err != nil {
				return nil, err
			}
			t.Wrap = func(ctx context.Context, do func(context.Context) error) error {
				if GroupOf(ctx) == "" {
					return errors.New("a call without its group")
				}
				return do(ctx)
			}
			return t, nil
		}
		return c
	}
	res, err := Run(context.Background(), cfg, seen("all"), seen("paced only", "paced"))
	require.NoError(t, err)
	groups := func(r Result) map[string]GroupResult {
		out := map[string]GroupResult{}
		for _, g := range r.Groups {
			out[g.Name] = g
		}
		return out
	}
	all, paced := groups(res[0]), groups(res[1])
	assert.Zero(t, res[0].Failed)
	assert.Equal(t, 2, all["busy"].Agents)
	assert.Equal(t, 1, all["paced"].Agents)
	assert.Greater(t, all["busy"].OK, all["paced"].OK, "the paced agent waits between calls")
	assert.LessOrEqual(t, all["paced"].OK, 4, "one call every 200 ms in 600 ms")
	assert.NotContains(t, paced, "busy")
	assert.Positive(t, paced["paced"].OK)
}

func TestPromptHasExactlyThatManyTokens(t *testing.T) {
	a := rand.New(rand.NewPCG(1, 2))
	b := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 300, 1500} {
		p := Prompt(a, n)
		assert.Equal(t, n, tollgatetest.CountTokens(p))
		assert.Equal(t, p, Prompt(b, n), "same seed, same prompt")
	}
}

func TestRunAccountsFromTheServer(t *testing.T) {
	cfg := small()
	res, err := Run(context.Background(), cfg, bare("a", 0), bare("b", 0))
	require.NoError(t, err)
	require.Len(t, res, 2)
	for _, r := range res {
		assert.False(t, r.Interrupted)
		assert.Equal(t, "server", r.Source)
		assert.InDelta(t, cfg.Duration.Seconds(), r.Elapsed.Seconds(), 0.2)
		assert.Positive(t, r.OK)
		assert.Zero(t, r.Failed)
		assert.Zero(t, r.RateLimited)
		assert.Equal(t, r.OK+r.CutOff, len(r.Calls))
		// Every call went through, so the server's counts are the calls' own.
		assert.Equal(t, r.OK, r.Used.Requests)
		assert.Equal(t, r.OK, r.Attempts)
		in, out, prompt := 0, 0, 0
		for _, c := range r.Calls {
			if c.OK {
				in += c.InputTokens
				out += c.OutputTokens
				prompt += c.PromptTokens
				assert.Equal(t, 1, c.Attempts)
				assert.LessOrEqual(t, c.OutputTokens, cfg.MaxTokens)
				assert.GreaterOrEqual(t, c.OutputTokens, cfg.MaxTokens/4)
			}
		}
		assert.Equal(t, r.Used.InputTokens, in)
		assert.Equal(t, prompt, in, "prompts are counted as the server counts them")
		assert.Equal(t, r.Used.OutputTokens, out)
		require.Len(t, r.Shares, 3)
		assert.Equal(t, Shares(r.Used, r.Limits, r.Elapsed), r.Shares)
		assert.InDelta(t, float64(r.OK)/r.Elapsed.Minutes(), r.OKPerMinute, 1e-9)
		assert.Positive(t, r.P50)
		assert.GreaterOrEqual(t, r.P95, r.P50)
	}
	// Same seed, same prompts: both runs' first calls of agent 0 match.
	first := func(r Result) int {
		for _, c := range r.Calls {
			if c.Agent == 0 {
				return c.PromptTokens
			}
		}
		return -1
	}
	assert.Equal(t, first(res[0]), first(res[1]))
}

func TestRunCounts429s(t *testing.T) {
	cfg := small()
	cfg.Duration = time.Second
	// 120 requests a minute: a full bucket of 120, then 2 a second.
	cfg.Server.RequestsPerMinute = 120
	cfg.Server.Latency = 0
	res, err := Run(context.Background(), cfg, bare("sdk-no-retries", 0))
	require.NoError(t, err)
	r := res[0]
	require.Positive(t, r.RateLimited)
	assert.Equal(t, r.RateLimited, r.Failed, "no retries: every 429 fails a call")
	assert.Equal(t, map[string]int{KindRateLimited: r.RateLimited}, r.FailedByKind)
	assert.Equal(t, r.OK+r.RateLimited, r.Attempts)
	assert.InDelta(t, 100*float64(r.RateLimited)/float64(r.OK), r.RateLimitedPer100OK, 1e-9)
	assert.Equal(t, DimRequests, r.Binding.Dimension)
	// 120 + 2/s·1 s admitted at most; agents that never wait use nearly all
	// of it (a loaded machine may leave the last refill unused).
	assert.LessOrEqual(t, r.Used.Requests, 123)
	assert.LessOrEqual(t, r.Binding.Share, 1.0)
	assert.Greater(t, r.Binding.Share, 0.9)
}

func TestRunDrainsAttemptsInFlight(t *testing.T) {
	cfg := small()
	cfg.Agents = 3
	cfg.Duration = 300 * time.Millisecond
	cfg.Server.Latency = 200 * time.Millisecond
	res, err := Run(context.Background(), cfg, bare("a", 0))
	require.NoError(t, err)
	r := res[0]
	// Calls start at 0 and 200 ms; the second ends after the deadline but was
	// admitted before it, so it counts. None starts after.
	assert.Equal(t, 2*cfg.Agents, r.OK)
	assert.Zero(t, r.CutOff)
	assert.Equal(t, r.OK, r.Used.Requests)
	assert.InDelta(t, 0.3, r.Elapsed.Seconds(), 0.1)
}

func TestRunCutsOffCallsAfterTheDeadline(t *testing.T) {
	cfg := small()
	cfg.Agents = 2
	cfg.Duration = 200 * time.Millisecond
	late := bare("late", 2)
	newTarget := late.New
	late.New = func(env Env) (*Target, error) {
		t, err := newTarget(env)
		// Each call waits 150 ms before it is sent: the second one of each
		// agent reaches the transport after the deadline.
		t.Wrap = func(ctx context.Context, do func(context.Context) error) error {
			time.Sleep(150 * time.Millisecond)
			return do(ctx)
		}
		return t, err
	}
	res, err := Run(context.Background(), cfg, late)
	require.NoError(t, err)
	r := res[0]
	assert.Equal(t, cfg.Agents, r.OK)
	assert.Equal(t, cfg.Agents, r.CutOff)
	assert.Zero(t, r.Failed, "cut-off calls are not failures")
	assert.Equal(t, cfg.Agents, r.Used.Requests)
	assert.Equal(t, cfg.Agents, r.Attempts, "the SDK's retries were refused too")
}

func TestRunInterruptedReturnsPartialResults(t *testing.T) {
	cfg := small()
	cfg.Duration = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(400*time.Millisecond, cancel)
	t0 := time.Now()
	res, err := Run(ctx, cfg, bare("a", 0), bare("b", 0))
	require.NoError(t, err)
	assert.Less(t, time.Since(t0), 3*time.Second)
	for _, r := range res {
		assert.True(t, r.Interrupted)
		assert.Positive(t, r.OK)
		assert.Zero(t, r.Failed)
		assert.InDelta(t, 0.4, r.Elapsed.Seconds(), 0.2)
		assert.Positive(t, r.Used.Requests)
	}
}

func TestRunStreams(t *testing.T) {
	cfg := small()
	cfg.Stream = true
	cfg.Server.StreamChunkTokens = 3
	res, err := Run(context.Background(), cfg, bare("a", 0))
	require.NoError(t, err)
	r := res[0]
	assert.Positive(t, r.OK)
	assert.Zero(t, r.Failed)
	in, out := 0, 0
	for _, c := range r.Calls {
		in += c.InputTokens
		out += c.OutputTokens
	}
	assert.Equal(t, r.Used.InputTokens, in, "usage read from message_start")
	assert.Equal(t, r.Used.OutputTokens, out, "usage read from message_delta")
}

func TestRunReportsProgress(t *testing.T) {
	cfg := small()
	cfg.ProgressInterval = 100 * time.Millisecond
	var mu sync.Mutex
	var seen [][]Progress
	cfg.Progress = func(ps []Progress) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, ps)
	}
	c := bare("with-status", 0)
	newTarget := c.New
	c.New = func(env Env) (*Target, error) {
		t, err := newTarget(env)
		t.Status = func() string { return "closed" }
		return t, err
	}
	res, err := Run(context.Background(), cfg, c, bare("plain", 0))
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, len(seen), 3)
	last := seen[len(seen)-1]
	require.Len(t, last, 2)
	assert.Equal(t, "with-status", last[0].Client)
	assert.Equal(t, "closed", last[0].Status)
	assert.Empty(t, last[1].Status)
	assert.Equal(t, res[0].OK, last[0].OK, "the last report is the final count")
	assert.Equal(t, res[0].Binding.Dimension, last[0].Binding)
	assert.Positive(t, last[0].PerMinute)
	assert.Equal(t, res[0].Binding.Limit, last[0].Limit)
}

func TestRunAgainstABaseURLCountsOnTheClientSide(t *testing.T) {
	srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 600})
	defer srv.Close()
	cfg := small()
	cfg.BaseURL, cfg.APIKey = srv.URL, "k"
	cfg.Limits = Limits{RequestsPerMinute: 600}
	res, err := Run(context.Background(), cfg, bare("a", 0))
	require.NoError(t, err)
	r := res[0]
	st := srv.Stats()
	assert.Equal(t, "client", r.Source)
	assert.Equal(t, st.RateLimited, r.RateLimited)
	assert.Equal(t, st.OK, r.Used.Requests)
	assert.Equal(t, st.InputTokens, r.Used.InputTokens)
	assert.Equal(t, st.OutputTokens, r.Used.OutputTokens)
}

func TestRunRejectsBadConfigs(t *testing.T) {
	_, err := Run(context.Background(), Config{MinPromptTokens: 10, MaxPromptTokens: 5}, bare("a", 0))
	assert.ErrorContains(t, err, "prompt sizes")
	_, err = Run(context.Background(), Config{BaseURL: "http://127.0.0.1:1"}, bare("a", 0))
	assert.ErrorContains(t, err, "APIKey")
	_, err = Run(context.Background(), small())
	assert.ErrorContains(t, err, "no clients")
	_, err = Run(context.Background(), small(), Client{Name: "x"})
	assert.ErrorContains(t, err, "no New")
}
