package tollgate_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

// The Retry layer's tests run Chain(base, Retry(s)) (Retry puts its State's
// Observe under itself) on a fake clock, and read the waits it serves from
// the clock: either the durations of the waits it started (rtyDrive), or
// the gaps between the attempts the server saw (rtyScripted.gaps), which
// also show a wait of zero.
//
// There is no exported way to choose the backoff's jitter (the old tests
// replaced it through an internal option). These tests pin it by what full
// jitter promises instead: a wait the server gives is served exactly (a
// jittered one could not be), a backoff wait lies in [0, ceiling), and over
// many calls the waits spread across that range, whose ceiling doubles from
// WithBackoff's base up to its max. Those spread checks are statistical;
// each could fail by chance with a probability below 1e-9.

var rtyEpoch = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// rtyScripted is a test server that answers attempt n (1-based) with
// script(n, w, r) and records what it saw, and when on clk.
type rtyScripted struct {
	*httptest.Server
	clk      *fakeclock.Clock
	attempts atomic.Int32
	conns    atomic.Int32
	mu       sync.Mutex
	bodies   []string
	at       []time.Time
}

func rtyNewScripted(t *testing.T, clk *fakeclock.Clock, script func(n int, w http.ResponseWriter, r *http.Request)) *rtyScripted {
	t.Helper()
	s := &rtyScripted{clk: clk}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(s.attempts.Add(1))
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, string(b))
		s.at = append(s.at, clk.Now())
		s.mu.Unlock()
		script(n, w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// gaps returns the time between consecutive attempts, on the fake clock.
func (s *rtyScripted) gaps() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return rtyGaps(s.at)
}

func rtyGaps(at []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(at); i++ {
		out = append(out, at[i].Sub(at[i-1]))
	}
	return out
}

// rtyCountingBase is a base transport that counts the calls tollgate must
// never make on the caller's behalf.
type rtyCountingBase struct {
	*http.Transport
	closeIdle atomic.Int32
}

func (b *rtyCountingBase) CloseIdleConnections() {
	b.closeIdle.Add(1)
	b.Transport.CloseIdleConnections()
}

func rtyNewBase(t *testing.T) *rtyCountingBase {
	b := &rtyCountingBase{Transport: &http.Transport{}}
	t.Cleanup(b.Transport.CloseIdleConnections)
	return b
}

// rtyClient is an http.Client over Chain(base, Retry(s)) on clk.
func rtyClient(t *testing.T, clk *fakeclock.Clock, opts ...tollgate.Option) (*http.Client, *rtyCountingBase) {
	s := tollgate.NewState(append([]tollgate.Option{tollgate.WithClock(clk)}, opts...)...)
	base := rtyNewBase(t)
	return &http.Client{Transport: tollgate.Chain(base, tollgate.Retry(s))}, base
}

func rtyPost(t *testing.T, ctx context.Context, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	return req
}

func rtyReadAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return string(b)
}

func TestRetryStatuses(t *testing.T) {
	for _, tt := range []struct {
		status   int
		attempts int
	}{
		{408, 2}, {409, 2}, {429, 2}, {500, 2}, {502, 2}, {503, 2}, {504, 2}, {529, 2},
		{400, 1}, {401, 1}, {402, 1}, {403, 1}, {404, 1}, {413, 1}, {422, 1}, {501, 1}, {505, 1},
	} {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			clk := fakeclock.New(rtyEpoch)
			srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.WriteHeader(tt.status)
					return
				}
				fmt.Fprint(w, `{"ok":true}`)
			})
			client, _ := rtyClient(t, clk)
			resp, err, _ := driveClock(clk, func() (*http.Response, error) {
				return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			rtyReadAll(t, resp)
			assert.Equal(t, tt.attempts, int(srv.attempts.Load()))
			if tt.attempts == 1 {
				assert.Equal(t, tt.status, resp.StatusCode)
			} else {
				assert.Equal(t, 200, resp.StatusCode)
			}
		})
	}
}

func TestRetryShouldRetryOverridesStatus(t *testing.T) {
	for _, tt := range []struct {
		status   int
		header   string
		attempts int
	}{
		{400, "true", 2}, {200, "true", 1}, {429, "false", 1}, {529, "false", 1}, {503, "maybe", 2},
	} {
		t.Run(fmt.Sprint(tt.status, tt.header), func(t *testing.T) {
			clk := fakeclock.New(rtyEpoch)
			srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.Header().Set("x-should-retry", tt.header)
					w.WriteHeader(tt.status)
				}
			})
			client, _ := rtyClient(t, clk)
			resp, err, _ := driveClock(clk, func() (*http.Response, error) {
				return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			rtyReadAll(t, resp)
			assert.Equal(t, tt.attempts, int(srv.attempts.Load()))
		})
	}
}

func TestRetrySpendLimitIsNotRetried(t *testing.T) {
	anthropicCap := `{"type":"error","error":{"type":"rate_limit_error","message":"spend cap","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}`
	for _, tt := range []struct {
		name, body, shouldRetry string
	}{
		{"anthropic", anthropicCap, ""},
		{"openai", `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`, ""},
		{"even when the server says x-should-retry: true", anthropicCap, "true"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := fakeclock.New(rtyEpoch)
			srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("content-type", "application/json")
				if tt.shouldRetry != "" {
					w.Header().Set("x-should-retry", tt.shouldRetry)
				}
				w.WriteHeader(429)
				fmt.Fprint(w, tt.body)
			})
			client, _ := rtyClient(t, clk)
			resp, err, waits := driveClock(clk, func() (*http.Response, error) {
				return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			assert.Equal(t, 429, resp.StatusCode)
			assert.Equal(t, tt.body, rtyReadAll(t, resp), "the caller gets the error body whole")
			assert.Equal(t, 1, int(srv.attempts.Load()))
			assert.Empty(t, waits)
		})
	}
}

// TestRetryWaitChoice pins which wait is served before the second attempt:
// retry-after-ms, else retry-after, else the reset of a limit with nothing
// remaining, else backoff. A wait the server gave is served exactly, which
// a jittered wait would not be.
func TestRetryWaitChoice(t *testing.T) {
	httpDate := rtyEpoch.Add(30 * time.Second).Format(http.TimeFormat)
	reset := func(d time.Duration) string { return rtyEpoch.Add(d).Format(time.RFC3339) }
	const backoff = -1 // the want of a wait chosen by backoff: in [0, DefaultBackoffBase)
	for _, tt := range []struct {
		name    string
		status  int
		headers []string
		want    time.Duration
	}{
		{"retry-after-ms first", 429, []string{"retry-after-ms", "1500", "retry-after", "3"}, 1500 * time.Millisecond},
		{"retry-after seconds", 429, []string{"retry-after", "2"}, 2 * time.Second},
		{"retry-after fraction", 429, []string{"retry-after", "0.25"}, 250 * time.Millisecond},
		{"retry-after http date", 429, []string{"retry-after", httpDate}, 30 * time.Second},
		{"retry-after zero", 429, []string{"retry-after", "0"}, 0},
		{"retry-after on a 529", 529, []string{"retry-after", "3"}, 3 * time.Second},
		{"retry-after on a status x-should-retry makes retryable", 400, []string{"x-should-retry", "true", "retry-after", "4"}, 4 * time.Second},
		{"exhausted limit waits for its reset", 429, []string{
			"anthropic-ratelimit-requests-remaining", "3",
			"anthropic-ratelimit-requests-reset", reset(50 * time.Second),
			"anthropic-ratelimit-input-tokens-remaining", "0",
			"anthropic-ratelimit-input-tokens-reset", reset(12 * time.Second)}, 12 * time.Second},
		{"the latest reset of the exhausted limits", 429, []string{
			"anthropic-ratelimit-requests-remaining", "0",
			"anthropic-ratelimit-requests-reset", reset(7 * time.Second),
			"anthropic-ratelimit-output-tokens-remaining", "0",
			"anthropic-ratelimit-output-tokens-reset", reset(9 * time.Second)}, 9 * time.Second},
		{"retry-after beats a reset", 429, []string{
			"retry-after", "2",
			"anthropic-ratelimit-input-tokens-remaining", "0",
			"anthropic-ratelimit-input-tokens-reset", reset(40 * time.Second)}, 2 * time.Second},
		{"openai exhausted limit", 429, []string{"x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1.5s"}, 1500 * time.Millisecond},
		{"a reset past the cap is clamped", 429, []string{
			"anthropic-ratelimit-tokens-remaining", "0",
			"anthropic-ratelimit-tokens-reset", reset(10 * time.Minute)}, tollgate.DefaultMaxWait},
		{"a limit with some left is no reason to wait for its reset", 429, []string{
			"anthropic-ratelimit-requests-remaining", "1",
			"anthropic-ratelimit-requests-reset", reset(30 * time.Second)}, backoff},
		{"no hint: backoff", 429, nil, backoff},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := fakeclock.New(rtyEpoch)
			srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					for i := 0; i < len(tt.headers); i += 2 {
						w.Header().Set(tt.headers[i], tt.headers[i+1])
					}
					w.WriteHeader(tt.status)
				}
			})
			client, _ := rtyClient(t, clk)
			resp, err, waits := driveClock(clk, func() (*http.Response, error) {
				return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			rtyReadAll(t, resp)
			assert.Equal(t, 200, resp.StatusCode)
			gaps := srv.gaps()
			require.Len(t, gaps, 1)
			switch tt.want {
			case backoff:
				assert.GreaterOrEqual(t, gaps[0], time.Duration(0))
				assert.Less(t, gaps[0], tollgate.DefaultBackoffBase)
			case 0:
				assert.Empty(t, waits)
				assert.Zero(t, gaps[0])
			default:
				assert.Equal(t, []time.Duration{tt.want}, waits, "the server's wait, exactly")
				assert.Equal(t, tt.want, gaps[0])
			}
		})
	}
}

// rtyFunc is a base transport answering with a function, for tests that
// make many attempts.
type rtyFunc func(*http.Request) (*http.Response, error)

func (f rtyFunc) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return f(req)
}

// rtyBackoffGaps sends calls calls through Retry to a server that always
// answers 529 with no wait of its own, and returns the gaps between
// attempts by retry: gaps[i] holds the wait before attempt i+2 of every
// call.
func rtyBackoffGaps(t *testing.T, calls int, opts ...tollgate.Option) [][]time.Duration {
	t.Helper()
	clk := fakeclock.New(rtyEpoch)
	var mu sync.Mutex
	var at []time.Time
	base := rtyFunc(func(req *http.Request) (*http.Response, error) {
		mu.Lock()
		at = append(at, clk.Now())
		mu.Unlock()
		return &http.Response{StatusCode: 529, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
	})
	s := tollgate.NewState(append([]tollgate.Option{tollgate.WithClock(clk)}, opts...)...)
	rt := tollgate.Chain(base, tollgate.Retry(s))
	var byRetry [][]time.Duration
	for range calls {
		mu.Lock()
		at = nil
		mu.Unlock()
		resp, err, _ := driveClock(clk, func() (*http.Response, error) {
			return rt.RoundTrip(rtyPost(t, context.Background(), "http://api.test", `{}`))
		})
		require.NoError(t, err)
		require.Equal(t, 529, resp.StatusCode)
		rtyReadAll(t, resp)
		mu.Lock()
		gaps := rtyGaps(at)
		mu.Unlock()
		if byRetry == nil {
			byRetry = make([][]time.Duration, len(gaps))
		}
		require.Len(t, gaps, len(byRetry))
		for i, g := range gaps {
			byRetry[i] = append(byRetry[i], g)
		}
	}
	return byRetry
}

func TestRetryBackoffGrowsAndIsCapped(t *testing.T) {
	// Full jitter: retry n waits uniformly in [0, min(base·2ⁿ⁻¹, max)).
	ms := time.Millisecond
	ceilings := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}
	byRetry := rtyBackoffGaps(t, 100, tollgate.WithMaxAttempts(7), tollgate.WithBackoff(100*ms, time.Second))
	require.Len(t, byRetry, len(ceilings), "7 attempts, 6 waits")
	for i, ceiling := range ceilings {
		lo, hi := slices.Min(byRetry[i]), slices.Max(byRetry[i])
		assert.GreaterOrEqual(t, lo, time.Duration(0), "retry %d", i+1)
		assert.Less(t, hi, ceiling, "retry %d waits less than its ceiling (the last two: the max)", i+1)
		assert.Less(t, lo, ceiling/2, "retry %d: full jitter, some waits are short", i+1)
		if i > 0 && ceiling > ceilings[i-1] {
			assert.Greater(t, hi, ceilings[i-1], "retry %d: the ceiling grew", i+1)
		}
	}
}

func TestRetryFullJitterStaysInRange(t *testing.T) {
	// 40 attempts take the doubling past any shift a Duration can hold; the
	// ceiling stays at DefaultBackoffMax.
	byRetry := rtyBackoffGaps(t, 10, tollgate.WithMaxAttempts(40))
	require.Len(t, byRetry, 39)
	var capped []time.Duration
	for i, gaps := range byRetry {
		ceiling := tollgate.DefaultBackoffMax
		if i < 5 {
			ceiling = min(tollgate.DefaultBackoffBase<<i, tollgate.DefaultBackoffMax)
		}
		for _, g := range gaps {
			require.GreaterOrEqual(t, g, time.Duration(0), "retry %d", i+1)
			require.Less(t, g, ceiling, "retry %d", i+1)
		}
		if ceiling == tollgate.DefaultBackoffMax {
			capped = append(capped, gaps...)
		}
	}
	assert.Less(t, slices.Min(capped), tollgate.DefaultBackoffMax/4, "the waits spread over the whole range")
	assert.Greater(t, slices.Max(capped), tollgate.DefaultBackoffMax*3/4, "the waits spread over the whole range")
}

func TestRetryLongServerWaitReturnsResponseAtOnce(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "3600")
		w.Header().Set("request-id", "req_long")
		w.WriteHeader(429)
		fmt.Fprint(w, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`)
	})
	client, _ := rtyClient(t, clk, tollgate.WithMaxWait(time.Minute))
	resp, err, waits := driveClock(clk, func() (*http.Response, error) {
		return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "req_long", resp.Header.Get("request-id"))
	assert.Contains(t, rtyReadAll(t, resp), "slow down")
	assert.Empty(t, waits)
	assert.Equal(t, 1, int(srv.attempts.Load()))
}

func TestRetryExhaustedReturnsLastResponseIntact(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-attempt", strconv.Itoa(n))
		w.Header().Set("retry-after", "1")
		w.WriteHeader(529)
		fmt.Fprintf(w, `{"type":"error","error":{"type":"overloaded_error","message":"attempt %d"}}`, n)
	})
	client, base := rtyClient(t, clk, tollgate.WithMaxAttempts(3))
	resp, err, waits := driveClock(clk, func() (*http.Response, error) {
		return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, "3", resp.Header.Get("x-attempt"))
	assert.Contains(t, rtyReadAll(t, resp), "attempt 3")
	assert.Equal(t, []time.Duration{time.Second, time.Second}, waits)
	assert.Equal(t, 3, int(srv.attempts.Load()))
	assert.Equal(t, 1, int(srv.conns.Load()), "abandoned bodies are drained so the connection is reused")
	assert.Zero(t, base.closeIdle.Load(), "the caller's idle connections are not closed")
}

func TestRetryCancelDuringWait(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "30")
		w.WriteHeader(429)
	})
	client, base := rtyClient(t, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan rtResult, 1)
	go func() {
		resp, err := client.Do(rtyPost(t, ctx, srv.URL, `{}`))
		done <- rtResult{resp, err}
	}()
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	assert.Equal(t, []time.Duration{30 * time.Second}, clk.Pending())
	cancel()
	var r rtResult
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled call did not return")
	}
	require.Error(t, r.err)
	assert.ErrorIs(t, r.err, context.Canceled)
	assert.Nil(t, r.resp)
	assert.Empty(t, clk.Pending(), "the wait's timer is stopped")
	assert.Equal(t, 1, int(srv.attempts.Load()))
	assert.Zero(t, base.closeIdle.Load())
}

func TestRetryWaitBeyondDeadlineReturnsResponse(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "30")
		w.WriteHeader(429)
	})
	client, _ := rtyClient(t, clk)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err, waits := driveClock(clk, func() (*http.Response, error) {
		return client.Do(rtyPost(t, ctx, srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	rtyReadAll(t, resp)
	assert.Empty(t, waits)
	assert.Equal(t, 1, int(srv.attempts.Load()))
}

func TestRetryReplaysBodyWithGetBody(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		if n < 3 {
			w.WriteHeader(503)
		}
	})
	client, _ := rtyClient(t, clk)
	req := rtyPost(t, context.Background(), srv.URL, `{"model":"claude-sonnet-4-5","max_tokens":5}`)
	headerBefore := req.Header.Clone()
	resp, err, _ := driveClock(clk, func() (*http.Response, error) { return client.Do(req) })
	require.NoError(t, err)
	rtyReadAll(t, resp)
	assert.Equal(t, 200, resp.StatusCode)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	assert.Equal(t, []string{
		`{"model":"claude-sonnet-4-5","max_tokens":5}`,
		`{"model":"claude-sonnet-4-5","max_tokens":5}`,
		`{"model":"claude-sonnet-4-5","max_tokens":5}`,
	}, srv.bodies)
	assert.Equal(t, headerBefore, req.Header, "the caller's request is not modified")
}

func TestRetryNonReplayableBodyIsSentOnce(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(529)
	})
	client, _ := rtyClient(t, clk)
	req := rtyPost(t, context.Background(), srv.URL, "")
	req.Body = io.NopCloser(strings.NewReader(`{"stream":true}`))
	req.GetBody = nil
	req.ContentLength = -1
	resp, err, waits := driveClock(clk, func() (*http.Response, error) { return client.Do(req) })
	require.NoError(t, err)
	rtyReadAll(t, resp)
	assert.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, 1, int(srv.attempts.Load()))
	assert.Empty(t, waits)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	assert.Equal(t, []string{`{"stream":true}`}, srv.bodies, "sent once, whole")
}

func TestRetryConnectionErrorBeforeResponse(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		fmt.Fprint(w, "ok")
	})
	client, _ := rtyClient(t, clk)
	resp, err, _ := driveClock(clk, func() (*http.Response, error) {
		return client.Do(rtyPost(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, "ok", rtyReadAll(t, resp))
	assert.Equal(t, 2, int(srv.attempts.Load()))
	gaps := srv.gaps()
	require.Len(t, gaps, 1)
	assert.Less(t, gaps[0], tollgate.DefaultBackoffBase, "a connection error waits a backoff")
}

type rtyFailingBase struct {
	calls atomic.Int32
	err   error
}

func (f *rtyFailingBase) RoundTrip(req *http.Request) (*http.Response, error) {
	f.calls.Add(1)
	return nil, f.err
}

func TestRetryFinalErrorsAreReturnedUnwrapped(t *testing.T) {
	openErr := &tollgate.OpenError{Key: tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}, Reason: "test"}
	for _, tt := range []struct {
		name     string
		err      error
		attempts int
	}{
		{"open breaker", openErr, 1},
		{"other error", errors.New("unsupported protocol scheme"), 1},
		{"cancelled", context.Canceled, 1},
		{"connection reset", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, 3},
		{"unexpected EOF", io.ErrUnexpectedEOF, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := &rtyFailingBase{err: tt.err}
			clk := fakeclock.New(rtyEpoch)
			s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithMaxAttempts(3))
			rt := tollgate.Chain(base, tollgate.Retry(s))
			_, err, _ := driveClock(clk, func() (*http.Response, error) {
				return rt.RoundTrip(rtyPost(t, context.Background(), "http://127.0.0.1:1", `{}`))
			})
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.err)
			var ue *url.Error
			assert.False(t, errors.As(err, &ue), "the inner client's url.Error is removed: %v", err)
			assert.Equal(t, tt.attempts, int(base.calls.Load()))
		})
	}
}

func TestRetryNeverRetriesAfterTheBodyStarted(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		fmt.Fprint(w, "event: ping\ndata: {\"type\":\"ping\"}\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	client, _ := rtyClient(t, clk)
	resp, err, _ := driveClock(clk, func() (*http.Response, error) {
		return client.Do(rtyPost(t, context.Background(), srv.URL, `{"stream":true}`))
	})
	require.NoError(t, err)
	_, err = io.ReadAll(resp.Body)
	assert.Error(t, err, "the broken stream reaches the caller")
	resp.Body.Close()
	assert.Equal(t, 1, int(srv.attempts.Load()))
}

func TestRetryRecordsBackoffWaits(t *testing.T) {
	clk := fakeclock.New(rtyEpoch)
	srv := rtyNewScripted(t, clk, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.Header().Set("retry-after", "4")
			w.WriteHeader(429)
		}
	})
	var mu sync.Mutex
	var records []tollgate.UsageRecord
	s := tollgate.NewState(tollgate.WithClock(clk), tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
		mu.Lock()
		records = append(records, rec)
		mu.Unlock()
	}))
	rt := tollgate.Chain(rtyNewBase(t), tollgate.Trace(s), tollgate.Retry(s))
	resp, err, _ := driveClock(clk, func() (*http.Response, error) {
		return rt.RoundTrip(rtyPost(t, context.Background(), srv.URL, `{"model":"claude-sonnet-4-5"}`))
	})
	require.NoError(t, err)
	rtyReadAll(t, resp)
	mu.Lock()
	require.Len(t, records, 1, "one record per call, once its body is closed")
	rec := records[0]
	mu.Unlock()
	assert.Equal(t, tollgate.Waits{Backoff: 4 * time.Second}, rec.Waits)
	assert.Equal(t, 2, rec.Attempts)
	assert.Equal(t, 200, rec.Status)

	snap := s.Snapshot()
	require.Len(t, snap.Keys, 1)
	assert.Equal(t, tollgate.Counters{Attempts: 2, RateLimited: 1}, snap.Keys[0].Counters,
		"Retry reads every attempt through the Observe it put under itself")
}
