package tollgate_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tollgate-go/tollgate"
)

func TestTenantsTakeTurns(t *testing.T) {
	// Tenant a queues six attempts, then tenant b two: b does not wait for
	// all of a's. With weights 2:1, a goes twice for each of b's turns.
	for _, tc := range []struct {
		name    string
		weights map[string]float64
		want    []string
	}{
		{"equal weights", nil, []string{"a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"}},
		{"a weighs twice b", map[string]float64{"a": 2}, []string{"a0", "b0", "a1", "a2", "b1", "a3", "a4", "a5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := priDrained(t, tollgate.WithTenantWeights(tc.weights))
			var dones []<-chan rtResult
			queue := func(tenant string, n int) {
				for i := range n {
					dones = append(dones, rig.start(bgtReq(priCtx(tollgate.Normal, tenant), tenant+strconv.Itoa(i), "", 100)))
					rig.waitQueued(len(dones))
				}
			}
			queue("a", 6)
			queue("b", 2)
			priDriveQueue(t, rig, func() bool { return len(rig.sentOrder()) == 9 })
			assert.Equal(t, append([]string{"drain"}, tc.want...), rig.sentOrder())
			for _, d := range dones {
				bgtSettle(bgtReceive(t, d))
			}
		})
	}
}

// tenFleet runs agents of tenants through rig, each making one call after
// another of maxTokens output tokens (which it produces) with its priority,
// until stop is closed; it returns a function that waits for them.
func tenFleet(rig *bgtRig, ctx context.Context, tenant string, agents, maxTokens int) func() {
	var wg sync.WaitGroup
	for a := range agents {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = rig.do(bgtReq(tollgate.ContextWithTenant(ctx, tenant), fmt.Sprintf("%s.%d.%d", tenant, a, n), "", maxTokens))
			}
		})
	}
	return wg.Wait
}

// tenServed sums the output tokens of the calls each tenant got served,
// from the usage records of seqs.
func tenServed(rig *bgtRig, seqs []string) map[string]int64 {
	out := map[string]int64{}
	for _, seq := range seqs {
		rec := rig.record(seq)
		out[rec.Tenant] += rec.OutputTokens
	}
	return out
}

func TestTenantShareFollowsTokensNotCallsOrAgents(t *testing.T) {
	// Tenant big runs 6 agents whose calls use 300 output tokens; tenant
	// small runs 2 whose calls use 100. With equal weights each is served
	// half the tokens of the binding limit: small gets three calls for each
	// of big's.
	rig := priDrained(t)
	ctx, stop := context.WithCancel(context.Background())
	waitBig := tenFleet(rig, ctx, "big", 6, 300)
	waitSmall := tenFleet(rig, ctx, "small", 2, 100)
	const calls = 160
	priDriveFleet(t, rig, func() int { return 8 }, func() bool { return len(rig.sentOrder()) > calls })
	stop()
	priDrive(t, rig.clk, func() bool { return rig.snap().Waiting == 0 })
	waitBig()
	waitSmall()
	sent := rig.sentOrder()[21:calls] // after the first twenty, the costs are learned
	served := tenServed(rig, sent)
	total := float64(served["big"] + served["small"])
	t.Logf("tokens served: %v over %d calls", served, len(sent))
	assert.InDelta(t, 0.5, float64(served["big"])/total, 0.05, "big's share of the tokens")
	assert.InDelta(t, 0.5, float64(served["small"])/total, 0.05, "small's share of the tokens")
	ks := rig.snap().Tenants
	require.Len(t, ks, 3)
	assert.Equal(t, []string{"", "big", "small"}, []string{ks[0].Name, ks[1].Name, ks[2].Name}, "the drain's, and the two")
}

func TestTenantIdleBanksNoCredit(t *testing.T) {
	// Tenant a has the limit to itself for a minute. When b comes, it gets
	// its half from then on, not a minute's worth of catching up.
	rig := priDrained(t)
	ctx, stop := context.WithCancel(context.Background())
	waitA := tenFleet(rig, ctx, "a", 3, 100)
	start := rig.clk.Now()
	agents := 3
	priDriveFleet(t, rig, func() int { return agents }, func() bool { return rig.clk.Now().Sub(start) >= time.Minute })
	rig.waitQueued(3)
	joined := len(rig.sentOrder())
	waitB := tenFleet(rig, ctx, "b", 3, 100)
	agents = 6
	priDriveFleet(t, rig, func() int { return agents }, func() bool { return len(rig.sentOrder()) >= joined+20 })
	stop()
	priDrive(t, rig.clk, func() bool { return rig.snap().Waiting == 0 })
	waitA()
	waitB()
	served := tenServed(rig, rig.sentOrder()[joined:joined+20])
	t.Logf("the 20 calls after b joined: %v tokens", served)
	assert.InDelta(t, 1000, served["b"], 200, "b gets about half, no more")
	assert.InDelta(t, 1000, served["a"], 200, "a keeps about half")
}

func TestTenantSnapshot(t *testing.T) {
	rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600, OutputTokensPerMinute: 60_000}),
		tollgate.WithMaxConcurrency(1), tollgate.WithTenantWeights(map[string]float64{"acme": 3}))
	rig.setReply(bgtProducesMaxTokens)
	for i := range 2 {
		_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), "acme"), "acme"+strconv.Itoa(i), "", 100))
		require.NoError(t, err)
	}
	held := bgtReceive(t, rig.start(bgtReq(tollgate.ContextWithTenant(context.Background(), "acme"), "held", "", 50)))
	require.NoError(t, held.err) // in flight, holding the only slot
	queued := rig.start(bgtReq(context.Background(), "no tenant", "", 10))
	rig.waitQueued(1)
	snap := rig.snap()
	require.Len(t, snap.Tenants, 2)
	assert.Equal(t, tollgate.TenantSnapshot{Name: "", Weight: 1, Waiting: 1}, snap.Tenants[0], "a call without a tenant is the tenant \"\"")
	acme := snap.Tenants[1]
	assert.Equal(t, "acme", acme.Name)
	assert.Equal(t, 3.0, acme.Weight)
	assert.Equal(t, 0, acme.Waiting)
	assert.Equal(t, 1, acme.InFlight)
	assert.Equal(t, int64(2), acme.Used[tollgate.Requests], "what settled: two calls")
	assert.Equal(t, int64(200), acme.Used[tollgate.OutputTokens])
	bgtSettle(held)
	bgtSettle(bgtReceive(t, queued))
	assert.Equal(t, int64(250), rig.snap().Tenants[1].Used[tollgate.OutputTokens])

	rig.clk.Advance(70 * time.Second)
	for _, ts := range rig.snap().Tenants {
		assert.Zero(t, ts.Used, "%q: nothing in the last minute", ts.Name)
	}
}

func TestTenantBadInput(t *testing.T) {
	t.Run("names", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}))
		long := strings.Repeat("é", 5000) // 10,000 bytes
		for _, name := range []string{"", long, long + "!"} {
			_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), name), "t"+strconv.Itoa(len(name)), "", 1))
			require.NoError(t, err)
		}
		assert.Empty(t, rig.record("t0").Tenant)
		shortened := rig.record("t10000").Tenant
		assert.LessOrEqual(t, len(shortened), 256)
		assert.True(t, strings.HasPrefix(shortened, strings.Repeat("é", 100)+"…"), shortened)
		assert.NotEqual(t, shortened, rig.record("t10001").Tenant, "names that differ past the prefix stay apart")
		snap := rig.snap()
		require.Len(t, snap.Tenants, 3)
		for _, ts := range snap.Tenants {
			assert.LessOrEqual(t, len(ts.Name), 256)
		}
	})
	t.Run("weights", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}), tollgate.WithTenantWeights(map[string]float64{
			"negative": -1, "zero": 0, "nan": math.NaN(), "inf": math.Inf(1), "-inf": math.Inf(-1), "half": 0.5,
		}))
		for _, name := range []string{"negative", "zero", "nan", "inf", "-inf", "half", "unnamed"} {
			_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), name), name, "", 1))
			require.NoError(t, err)
		}
		weights := map[string]float64{}
		for _, ts := range rig.snap().Tenants {
			weights[ts.Name] = ts.Weight
		}
		assert.Equal(t, map[string]float64{"negative": 1, "zero": 1, "nan": 1, "inf": 1, "-inf": 1, "half": 0.5, "unnamed": 1}, weights)
	})
	t.Run("idle tenants are forgotten", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 6000}))
		for i := range 10 {
			_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), "old"+strconv.Itoa(i)), "old"+strconv.Itoa(i), "", 1))
			require.NoError(t, err)
		}
		assert.Len(t, rig.snap().Tenants, 10)
		rig.clk.Advance(3 * time.Minute)
		_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), "new"), "new", "", 1))
		require.NoError(t, err)
		snap := rig.snap()
		require.Len(t, snap.Tenants, 1)
		assert.Equal(t, "new", snap.Tenants[0].Name)
	})
	t.Run("memory stays bounded", func(t *testing.T) {
		rig := newBgtRig(t, tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1_000_000}))
		for i := range 5000 {
			_, err := rig.do(bgtReq(tollgate.ContextWithTenant(context.Background(), "t"+strconv.Itoa(i)), "", "", 1))
			require.NoError(t, err)
		}
		n := len(rig.snap().Tenants)
		assert.LessOrEqual(t, n, 4096, "past 4,096 the idle tenants longest idle are forgotten")
		assert.Greater(t, n, 4000)
	})
}

func TestPriorityAndTenantCarriedByEveryAttempt(t *testing.T) {
	// An Interactive call of tenant acme draws a 429 and is retried: its
	// retry goes before the Normal attempt that heads the queue (a Normal
	// retry would queue behind it), and every span, the usage record and
	// the wait metrics carry its priority and tenant.
	srv := trScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-seq", r.Header.Get("X-Seq"))
		if r.Header.Get("X-Seq") == "interactive" && n == 2 {
			w.Header().Set("retry-after-ms", "1000")
			trAPIError(w, 429, "rate_limit_error")
			return
		}
		w.Header().Set("content-type", "application/json")
		out := 100
		if r.Header.Get("X-Seq") == "drain" {
			out = 6000
		}
		_, _ = fmt.Fprintf(w, `{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":0,"output_tokens":%d}}`, out)
	})
	var mu sync.Mutex
	var order []string
	base := trRoundTripper(func(req *http.Request) (*http.Response, error) {
		mu.Lock()
		order = append(order, req.Header.Get("X-Seq"))
		mu.Unlock()
		return trBase(t).RoundTrip(req)
	})
	rig := trNewRig(t, base, tollgate.WithLimits(tollgate.Limits{OutputTokensPerMinute: 6000}),
		tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens))
	send := func(ctx context.Context, seq string, maxTokens int) <-chan rtResult {
		body := `{"model":"claude-sonnet-4-5","max_tokens":` + strconv.Itoa(maxTokens) + `,"messages":[{"role":"user","content":"Hi"}]}`
		req := trPost(t, ctx, srv.URL, body)
		req.Header.Set("X-Seq", seq)
		done := make(chan rtResult, 1)
		go func() {
			resp, err := rig.rt.RoundTrip(req)
			if err == nil {
				trReadAll(t, resp)
			}
			done <- rtResult{resp, err}
		}()
		return done
	}
	require.NoError(t, (<-send(context.Background(), "drain", 6000)).err)
	key := tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}
	snap := func() tollgate.KeySnapshot { ks, _ := rig.rt.Snapshot().Key(key); return ks }
	normal := send(context.Background(), "normal", 3000)
	require.True(t, rig.clk.WaitForWaiters(1, 5*time.Second), "the Normal attempt waits 30.25 s")
	interactive := send(priCtx(tollgate.Interactive, "acme"), "interactive", 100)
	require.Eventually(t, func() bool { return snap().Budget.Waiting == 2 }, 5*time.Second, time.Millisecond)
	require.True(t, rig.clk.WaitForWaiters(2, 5*time.Second), "the Interactive attempt waits 1.25 s (cushion)")
	rig.clk.Advance(1250 * time.Millisecond)
	// Its first attempt draws the 429: the breaker pauses everyone for the
	// second the server asked, and the call waits as long to retry.
	require.Eventually(t, func() bool {
		return snap().Breaker.State == tollgate.BreakerOpen && snap().Budget.WaitingByPriority.Normal == 1 &&
			len(rig.clk.Pending()) >= 2
	}, 5*time.Second, time.Millisecond)
	rig.clk.Advance(time.Second)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 3
	}, 5*time.Second, time.Millisecond, "the retry goes at once")
	var ended []rtResult
	priDrive(t, rig.clk, func() bool {
		for _, ch := range []<-chan rtResult{normal, interactive} {
			select {
			case r := <-ch:
				ended = append(ended, r)
			default:
			}
		}
		return len(ended) == 2
	})
	for _, r := range ended {
		require.NoError(t, r.err)
	}
	assert.Equal(t, []string{"drain", "interactive", "interactive", "normal"}, order)

	calls := trCalls(t, rig.ended())
	require.Len(t, calls, 3)
	for _, call := range calls {
		for _, span := range call { // the call's span, then its attempts'
			attrs := trAttrs(span.Attributes)
			if len(call) == 3 { // the Interactive call: two attempts
				assert.Equal(t, "interactive", attrs["tollgate.priority"], span.Name)
				assert.Equal(t, "acme", attrs["tollgate.tenant"], span.Name)
				continue
			}
			assert.Equal(t, "normal", attrs["tollgate.priority"], span.Name)
			assert.NotContains(t, attrs, "tollgate.tenant", "no tenant, no attribute")
		}
	}
	var rec tollgate.UsageRecord
	for _, r := range rig.usageRecords() {
		if r.Attempts == 2 {
			rec = r
		}
	}
	assert.Equal(t, tollgate.Interactive, rec.Priority)
	assert.Equal(t, "acme", rec.Tenant)

	waits := map[string]float64{}
	for _, dp := range trMetric(t, rig.collect(t), "tollgate.wait.duration").Data.(metricdata.Histogram[float64]).DataPoints {
		p, _ := dp.Attributes.Value(attribute.Key("tollgate.priority"))
		c, _ := dp.Attributes.Value(attribute.Key("tollgate.wait.cause"))
		waits[p.AsString()+" "+c.AsString()] += dp.Sum
	}
	assert.Equal(t, 1.25, waits["interactive budget"], "its first attempt waited 1.25 s for its refill")
	assert.Positive(t, waits["interactive backoff"], "its retry waited for the retry-after")
	assert.Positive(t, waits["normal budget"])
}
