package procfleet

import (
	"context"
	"math"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/redistest"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// itpm is the test's binding limit: 3,000 input tokens a minute, a bucket
// of about 120 of the test's prompts (10 to 40 tokens, 25 on average) that
// refills by 2 a second. It is input tokens, not requests, that bind
// because the fake API, like Anthropic's, rounds the remaining tokens it
// reports down to a multiple of 1,000: a private budget learns next to
// nothing from them about what the other processes took. (With requests
// binding, whose remaining is exact, private budgets draw fewer 429s, but
// still some.)
const itpm = 3000

// Several OS processes (this test binary, re-executed) share one fake API.
// Through one Redis they stay within its limit together and draw (almost)
// no 429; with a private budget each, side by side against a server of
// their own with the same limit, the same fleet draws many: each process
// believes it may send the whole bucket at once, and its whole refill.
func TestProcessesShareOneBudgetThroughRedis(t *testing.T) {
	addr := redistest.Shared(t)
	cfg := Config{
		Processes: 3,
		Fleet: fleet.Config{
			Agents: 4, Duration: 3 * time.Second, Seed: 1,
			MaxTokens: 16, MinPromptTokens: 10, MaxPromptTokens: 40,
			Server: tollgatetest.Config{RequestsPerMinute: 6000, InputTokensPerMinute: itpm, Latency: 10 * time.Millisecond},
		},
		Stderr: testLog{t},
		// The test is about sharing one budget, not about falling back
		// when Redis is slow (storesync's tests are): on a loaded CI
		// machine under -race a round trip can outlast the default
		// 100 ms, so each process waits for Redis up to 2 s.
		StoreTimeout: 2 * time.Second,
	}
	t0 := time.Now()
	res, err := Run(context.Background(), cfg,
		Fleet{Name: "shared", Mode: ModeRedis, RedisAddr: addr, RedisPrefix: redistest.Prefix(t)},
		Fleet{Name: "private", Mode: ModeMemory})
	require.NoError(t, err)
	t.Logf("both fleets in %v", time.Since(t0).Round(time.Millisecond))
	require.Len(t, res, 2)
	shared, private := res[0], res[1]
	for _, r := range res {
		t.Logf("%s: %d of %.0f %s admitted in %v (%.1f %%), %d 429s, %d OK calls, %d failed, %d attempts",
			r.Client, r.Binding.Used, r.Binding.Allowance, r.Binding.Dimension, r.Elapsed.Round(time.Millisecond),
			100*r.Binding.Share, r.RateLimited, r.OK, r.Failed, r.Attempts)
		require.Len(t, r.Workers, 3)
		assert.False(t, r.Interrupted)
		assert.Equal(t, "server", r.Source)
		for _, w := range r.Workers {
			assert.Positive(t, w.Result.OK, "every process got calls through: %s", w.Name)
		}
	}

	// Server side: together within the limit (L + L·elapsed, the server's
	// buckets starting full; 50 ms for the processes' starts being a few
	// milliseconds apart), and (almost) no 429.
	require.Equal(t, fleet.DimInputTokens, shared.Binding.Dimension)
	for _, s := range shared.Shares {
		allowed := int(math.Floor(float64(s.Limit) * (1 + (shared.Elapsed + 50*time.Millisecond).Minutes())))
		assert.LessOrEqual(t, s.Used, allowed, s.Dimension)
	}
	assert.LessOrEqual(t, shared.RateLimited, 1, "429s through the shared budget")
	assert.Zero(t, shared.Failed)
	assert.Greater(t, shared.Binding.Share, 0.8, "the shared budget uses the limit")
	for _, w := range shared.Workers {
		assert.Zero(t, w.StoreFallbacks, "%s never fell back from Redis", w.Name)
		assert.Positive(t, w.RedisCommands["evalsha"], "%s paced through Redis", w.Name)
	}
	require.NotNil(t, shared.Redis)
	t.Logf("shared: %d Redis round trips (%v), %.2f per OK request, %.2f per attempt; clients counted %v",
		shared.Redis.RoundTrips, shared.Redis.Commands, shared.Redis.PerOK, shared.Redis.PerAttempt, shared.Redis.Client)
	assert.GreaterOrEqual(t, shared.Redis.ScriptRuns, shared.Redis.Client["evalsha"]+shared.Redis.Client["eval"],
		"the server ran every script the clients sent")

	// The control: private budgets overspend the same limit, each process
	// taking the whole of it, and draw 429s until their budgets learn. How
	// many depends on how much the processes send before that, which a
	// loaded machine slows (16-24 alone, 8 in a CI run under -race): what
	// is asserted is the contrast with the shared budget.
	assert.Nil(t, private.Redis)
	assert.Greater(t, private.RateLimited, 5*max(shared.RateLimited, 1), "429s through private budgets")
}

// A worker that fails fails the run, with its stderr in the error; so
// does one that writes anything but the protocol on stdout.
func TestWorkerFailureFailsTheRun(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to play a failing worker")
	}
	cfg := Config{
		Processes: 2,
		Fleet:     fleet.Config{Agents: 1, Duration: time.Second, Server: tollgatetest.Config{RequestsPerMinute: 600}},
	}
	cfg.Command = []string{sh, "-c", "read config; echo 'no luck' >&2; exit 3"}
	_, err = Run(context.Background(), cfg, Fleet{Mode: ModeMemory})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exit status 3")
	assert.Contains(t, err.Error(), "no luck")

	cfg.Command = []string{sh, "-c", "read config; echo hello"}
	_, err = Run(context.Background(), cfg, Fleet{Mode: ModeMemory})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `not a protocol line on stdout: "hello"`)
}

// Cancelled, the run stops its workers at once and reports what they
// measured.
func TestCancelStopsTheWorkers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{
		Processes: 2,
		Fleet: fleet.Config{Agents: 2, Duration: time.Minute, MaxTokens: 16, MinPromptTokens: 10, MaxPromptTokens: 40,
			Server: tollgatetest.Config{RequestsPerMinute: 600, Latency: 10 * time.Millisecond}},
		ProgressInterval: 100 * time.Millisecond,
		Progress: func(ps []fleet.Progress) {
			if ps[0].OK > 0 {
				cancel()
			}
		},
	}
	t0 := time.Now()
	res, err := Run(ctx, cfg, Fleet{Mode: ModeMemory})
	require.NoError(t, err)
	assert.Less(t, time.Since(t0), 20*time.Second)
	r := res[0]
	assert.True(t, r.Interrupted)
	assert.Positive(t, r.OK)
	for _, w := range r.Workers {
		assert.True(t, w.Result.Interrupted, w.Name)
	}
}

// testLog writes the workers' stderr to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
