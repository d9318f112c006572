package peers

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParse(t *testing.T) {
	cs, err := Parse(" sdk, queue4 ,failsafe,,tollgate+limits")
	require.NoError(t, err)
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	assert.Equal(t, []string{"sdk", "queue4", "failsafe", "tollgate+limits"}, names)
	for _, n := range Names() {
		c, err := ByName(n)
		require.NoError(t, err)
		assert.Equal(t, n, c.Name)
	}
	_, err = Parse("sdk,bogus")
	assert.ErrorContains(t, err, `unknown client "bogus"`)
}

// Every client completes calls against a fake API whose limits it cannot
// reach, and against one it must share: the request bucket of 120 admits
// its 120, then 2 a second.
func TestEveryClientRuns(t *testing.T) {
	var all []fleet.Client
	for _, n := range Names() {
		c, err := ByName(n)
		require.NoError(t, err)
		all = append(all, c)
	}
	cfg := fleet.Config{
		Agents: 3, Duration: time.Second, MaxTokens: 16, MinPromptTokens: 10, MaxPromptTokens: 40,
		Server: tollgatetest.Config{RequestsPerMinute: 600_000, InputTokensPerMinute: 100_000_000, Latency: 5 * time.Millisecond},
	}
	res, err := fleet.Run(context.Background(), cfg, all...)
	require.NoError(t, err)
	for _, r := range res {
		assert.Positive(t, r.OK, r.Client)
		assert.Zero(t, r.Failed, r.Client)
		assert.Zero(t, r.RateLimited, r.Client)
	}
}

// Every client runs the agents workload: multi-turn conversations whose
// prompts the fake API mostly reads from its cache.
func TestEveryClientRunsAgents(t *testing.T) {
	var all []fleet.Client
	for _, n := range Names() {
		c, err := ByName(n)
		require.NoError(t, err)
		all = append(all, c)
	}
	cfg := fleet.Config{
		Agents: 2, Duration: time.Second, Workload: fleet.WorkloadAgents,
		Conversation: fleet.Conversation{SystemPromptTokens: 1100, MinTaskTokens: 20, MaxTaskTokens: 40,
			MinReplyTokens: 5, MaxReplyTokens: 20, MinToolResultTokens: 10, MaxToolResultTokens: 50, MinTurns: 2, MaxTurns: 4},
		Server: tollgatetest.Config{RequestsPerMinute: 600_000, InputTokensPerMinute: 100_000_000, OutputTokensPerMinute: 100_000_000,
			OutputAccounting: tollgatetest.CountAsProduced, RoundRemaining: tollgatetest.RoundNearest, Latency: 5 * time.Millisecond},
	}
	res, err := fleet.Run(context.Background(), cfg, all...)
	require.NoError(t, err)
	for _, r := range res {
		assert.Positive(t, r.OK, r.Client)
		assert.Zero(t, r.Failed, r.Client)
		assert.Zero(t, r.RateLimited, r.Client)
		assert.Greater(t, r.CacheReadShare, 0.3, r.Client)
	}
}

// The queue lets n calls through at a time, no more.
func TestQueueCapsConcurrency(t *testing.T) {
	srv := tollgatetest.NewServer(tollgatetest.Config{Latency: 50 * time.Millisecond})
	defer srv.Close()
	cfg := fleet.Config{
		Agents: 10, Duration: 500 * time.Millisecond, MaxTokens: 8, MinPromptTokens: 5, MaxPromptTokens: 10,
		BaseURL: srv.URL, APIKey: "k",
	}
	res, err := fleet.Run(context.Background(), cfg, Queue(4))
	require.NoError(t, err)
	assert.Positive(t, res[0].OK)
	assert.Equal(t, 4, srv.Stats().PeakConcurrency)
}

// failsafe's limiter spaces attempts evenly at the requests-per-minute
// limit, so the server never has to refuse one.
func TestFailsafePacesRequests(t *testing.T) {
	cfg := fleet.Config{
		Agents: 6, Duration: time.Second, MaxTokens: 8, MinPromptTokens: 5, MaxPromptTokens: 10,
		Server: tollgatetest.Config{RequestsPerMinute: 600},
	}
	res, err := fleet.Run(context.Background(), cfg, Failsafe(), SDK())
	require.NoError(t, err)
	fs, sdk := res[0], res[1]
	assert.Zero(t, fs.RateLimited)
	assert.InDelta(t, 10, fs.Attempts, 3, "one permit per 100 ms")
	assert.Greater(t, sdk.Attempts, fs.Attempts, "the SDK alone is not paced")
}

// retryablehttp honours retry-after: with a bucket of one request a second,
// every call gets through in the end.
func TestRetryableHTTPWaitsOutA429(t *testing.T) {
	cfg := fleet.Config{
		Agents: 2, Duration: 1500 * time.Millisecond, MaxTokens: 8, MinPromptTokens: 5, MaxPromptTokens: 10,
		Server: tollgatetest.Config{RequestsPerMinute: 1},
	}
	res, err := fleet.Run(context.Background(), cfg, RetryableHTTP(DefaultRetryableHTTPRetries))
	require.NoError(t, err)
	r := res[0]
	assert.Equal(t, 1, r.OK)
	assert.Positive(t, r.RateLimited)
	assert.Zero(t, r.Failed, "the other call is still waiting when the run ends")
}

// tollgate's live status comes from its Snapshot.
func TestTollgateStatus(t *testing.T) {
	var mu sync.Mutex
	var first, last []fleet.Progress
	cfg := fleet.Config{
		Agents: 4, Duration: 600 * time.Millisecond, MaxTokens: 8, MinPromptTokens: 5, MaxPromptTokens: 10,
		Server:           tollgatetest.Config{RequestsPerMinute: 600, Latency: 200 * time.Millisecond},
		ProgressInterval: 50 * time.Millisecond,
		Progress: func(ps []fleet.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if first == nil {
				first = ps
			}
			last = ps
		},
	}
	res, err := fleet.Run(context.Background(), cfg, Tollgate(false), Tollgate(true))
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	// Before any call, or while the first calls wait for the first response.
	assert.Contains(t, []string{"no response yet", "breaker closed, cold start"}, first[0].Status)
	assert.Contains(t, last[0].Status, "waiting")
	assert.Contains(t, last[1].Status, "waiting")
	for _, r := range res {
		assert.Positive(t, r.OK, r.Client)
		assert.Zero(t, r.Failed, r.Client)
		assert.Zero(t, r.RateLimited, r.Client)
	}
}

func TestStatusLine(t *testing.T) {
	assert.Equal(t, "no response yet", Status(tollgate.Snapshot{}))
	one := tollgate.KeySnapshot{Key: tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}}
	one.Budget.Waiting = 12
	one.Breaker.State = tollgate.BreakerClosed
	assert.Equal(t, "breaker closed, 12 waiting", Status(tollgate.Snapshot{Keys: []tollgate.KeySnapshot{one}}))
	two := one
	two.Key.Family = "claude-haiku-4"
	two.Budget.ColdStart = true
	two.Breaker.State = tollgate.BreakerOpen
	assert.Equal(t, "anthropic/claude-sonnet-4: breaker closed, 12 waiting; anthropic/claude-haiku-4: breaker open, cold start",
		Status(tollgate.Snapshot{Keys: []tollgate.KeySnapshot{one, two}}))
}
