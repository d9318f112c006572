package redisstore_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/redistest"
	"github.com/tollgate-go/tollgate/internal/syncbuf"
	"github.com/tollgate-go/tollgate/redisstore"
)

// api is a Messages endpoint that answers at once and counts what it served.
func api(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		served.Add(1)
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"id":"msg_1","type":"message","usage":{"input_tokens":5,"output_tokens":1}}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &served
}

func call(t *testing.T, c *http.Client, url string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", "sk-test")
	resp, err := c.Do(req)
	require.NoError(t, err, "no call fails because of Redis")
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func budgetOf(rt *tollgate.Transport) tollgate.BudgetSnapshot {
	ks, _ := rt.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-5"})
	return ks.Budget
}

// TestTransportFallsBackAndRecovers stops the Redis server under a
// Transport and starts it again: every call goes through, paced by the
// local fallback meanwhile, and the Transport shares again once Redis
// answers.
func TestTransportFallsBackAndRecovers(t *testing.T) {
	srv := redistest.Start(t)
	rdb := client(t, srv.Addr)
	prefix := redistest.Prefix(t)
	var logs syncbuf.Buffer
	rt := tollgate.New(nil,
		tollgate.WithStore(redisstore.New(rdb, redisstore.WithPrefix(prefix))),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}),
		tollgate.WithStoreTimeout(200*time.Millisecond),
		tollgate.WithStoreFallback(0.5, 20*time.Millisecond),
		tollgate.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	httpc := &http.Client{Transport: rt}
	upstream, served := api(t)

	for range 5 {
		call(t, httpc, upstream.URL)
	}
	assert.False(t, budgetOf(rt).Fallback)
	keys, err := rdb.Keys(context.Background(), prefix+":*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 1, "one hash per account and model family")
	level, err := rdb.HGet(context.Background(), keys[0], "v0").Float64()
	require.NoError(t, err)
	assert.InDelta(t, 595, level, 1, "five requests charged in Redis, plus a little refill")

	stopped := time.Now()
	srv.Stop()
	for range 5 {
		start := time.Now()
		call(t, httpc, upstream.URL)
		assert.Less(t, time.Since(start), time.Second, "no call hangs on a dead Redis")
	}
	b := budgetOf(rt)
	assert.True(t, b.Fallback)
	// Half of the level Redis last reported, less the five calls, plus the
	// refill at half of 10 a second since: each call may have waited out the
	// store's timeout first.
	level, refill := b.Dimensions[tollgate.Requests].Level, 5*time.Since(stopped).Seconds()
	assert.GreaterOrEqual(t, level, 0.5*595-5-1, "paced locally at half of 600, from half of the level Redis last reported")
	assert.LessOrEqual(t, level, 0.5*595-5+1+refill, "paced locally at half of 600, from half of the level Redis last reported")
	assert.Equal(t, 1, strings.Count(logs.String(), "level=WARN"), "said once")

	srv.Restart()
	// The next admission once the retry interval has passed asks Redis
	// again; each call here is a real one, and all go through.
	require.Eventually(t, func() bool {
		call(t, httpc, upstream.URL)
		return !budgetOf(rt).Fallback
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, strings.Count(logs.String(), "answers again"))
	keys, err = rdb.Keys(context.Background(), prefix+":*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 1, "the restarted Redis (no persistence) holds the budget again")
	level, err = rdb.HGet(context.Background(), keys[0], "v0").Float64()
	require.NoError(t, err)
	assert.Less(t, level, 599.0, "the restarted Redis starts from the level last known, not full")
	assert.GreaterOrEqual(t, served.Load(), int64(11))
}

// TestTransportOnSilentRedis points a Transport at a Redis that accepts
// connections and never answers: each call waits at most the store timeout
// once, then the Transport paces locally.
func TestTransportOnSilentRedis(t *testing.T) {
	rdb := client(t, blackHole(t))
	store := &countingStore{Store: redisstore.New(rdb)}
	rt := tollgate.New(nil,
		tollgate.WithStore(store),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 600}),
		tollgate.WithStoreTimeout(50*time.Millisecond),
		tollgate.WithStoreFallback(0.25, time.Hour),
		tollgate.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	httpc := &http.Client{Transport: rt}
	upstream, served := api(t)

	start := time.Now()
	for range 10 {
		call(t, httpc, upstream.URL)
	}
	assert.Less(t, time.Since(start), 5*time.Second, "bounded by the store timeout")
	assert.Equal(t, int64(1), store.calls.Load(), "one call timed out; the silent Redis is not asked again within the retry interval")
	assert.True(t, budgetOf(rt).Fallback)
	assert.Equal(t, int64(10), served.Load())
}

// TestTransportsShareOneBudget runs two Transports, as two processes
// would, on one Redis: what one spends the other waits for.
func TestTransportsShareOneBudget(t *testing.T) {
	addr := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	newTransport := func() *tollgate.Transport {
		return tollgate.New(nil,
			tollgate.WithStore(redisstore.New(client(t, addr), redisstore.WithPrefix(prefix))),
			tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 3}))
	}
	a, b := newTransport(), newTransport()
	upstream, served := api(t)
	for range 3 {
		call(t, &http.Client{Transport: a}, upstream.URL)
	}
	// b would be granted ahead by 20 s; it cannot wait that long.
	req, err := http.NewRequest(http.MethodPost, upstream.URL+"/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", "sk-test")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = (&http.Client{Transport: b}).Do(req.WithContext(ctx))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, int64(3), served.Load(), "b sent nothing: a spent the minute's requests")
	assert.Less(t, budgetOf(b).Dimensions[tollgate.Requests].Level, 1.0)
	keys, err := client(t, addr).Keys(context.Background(), prefix+":*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 1)
	level, err := client(t, addr).HGet(context.Background(), keys[0], "v0").Float64()
	require.NoError(t, err)
	assert.InDelta(t, 0, level, 0.1, "b's attempt, granted ahead and cancelled, was given back")
}

// TestTransportsSharePauses has one Transport draw a 429 with retry-after
// and another, on the same Redis, find the pause at its next admission.
func TestTransportsSharePauses(t *testing.T) {
	addr := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	newTransport := func() *tollgate.Transport {
		return tollgate.New(nil,
			tollgate.WithStore(redisstore.New(client(t, addr), redisstore.WithPrefix(prefix))),
			tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000}),
			tollgate.WithMaxAttempts(1))
	}
	a, b := newTransport(), newTransport()
	var served atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		served.Add(1)
		w.Header().Set("content-type", "application/json")
		w.Header().Set("retry-after", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`)
	}))
	t.Cleanup(upstream.Close)
	send := func(rt *tollgate.Transport, ctx context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, upstream.URL+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}`))
		require.NoError(t, err)
		req.Header.Set("X-Api-Key", "sk-test")
		return (&http.Client{Transport: rt}).Do(req)
	}

	resp, err := send(a, context.Background())
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = send(b, ctx)
	var open *tollgate.OpenError
	require.ErrorAs(t, err, &open, "b cannot wait out a's 30 s pause within its 2 s")
	assert.Equal(t, "shared: retry-after", open.Reason)
	assert.InDelta(t, 30, time.Until(open.Until).Seconds(), 1)
	assert.Less(t, time.Since(start), time.Second, "told at once, not after waiting")
	assert.Equal(t, int64(1), served.Load(), "b sent nothing")
	ks, ok := b.Snapshot().Key(tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-5"})
	require.True(t, ok)
	assert.Equal(t, tollgate.BreakerOpen, ks.Breaker.State, "b's own breaker now holds its next calls")
}

// countingStore counts the calls made to a Store.
type countingStore struct {
	tollgate.Store
	calls atomic.Int64
}

func (c *countingStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	c.calls.Add(1)
	return c.Store.Admit(ctx, name, a)
}

func (c *countingStore) Settle(ctx context.Context, name string, s tollgate.Settlement) (tollgate.Levels, error) {
	c.calls.Add(1)
	return c.Store.Settle(ctx, name, s)
}

func (c *countingStore) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	c.calls.Add(1)
	return c.Store.Pause(ctx, name, d, reason)
}
