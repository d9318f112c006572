package tollgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/fakeclock"
)

var testEpoch = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// withJitter replaces the random jitter, so backoff waits are exact.
func withJitter(f func(time.Duration) time.Duration) Option {
	return func(c *config) { c.jitter = f }
}

// fullCeiling makes "full jitter" pick the top of its range.
func fullCeiling(n time.Duration) time.Duration { return n - 1 }

// scripted is a test server that answers attempt n (1-based) with
// script(n, w, r) and records what it saw.
type scripted struct {
	*httptest.Server
	attempts atomic.Int32
	conns    atomic.Int32
	mu       sync.Mutex
	bodies   []string
}

func newScripted(t *testing.T, script func(n int, w http.ResponseWriter, r *http.Request)) *scripted {
	t.Helper()
	s := &scripted{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(s.attempts.Add(1))
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, string(b))
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

// countingBase is a base transport that counts the calls tollgate must never
// make on the caller's behalf.
type countingBase struct {
	*http.Transport
	closeIdle atomic.Int32
}

func (b *countingBase) CloseIdleConnections() {
	b.closeIdle.Add(1)
	b.Transport.CloseIdleConnections()
}

func newBase(t *testing.T) *countingBase {
	b := &countingBase{Transport: &http.Transport{}}
	t.Cleanup(b.Transport.CloseIdleConnections)
	return b
}

// retryClient is an http.Client with Retry over Observe on a fake clock.
func retryClient(t *testing.T, opts ...Option) (*http.Client, *fakeclock.Clock, *countingBase) {
	clk := fakeclock.New(testEpoch)
	s := NewState(append([]Option{WithClock(clk), withJitter(fullCeiling)}, opts...)...)
	base := newBase(t)
	return &http.Client{Transport: Chain(base, Retry(s), Observe(s))}, clk, base
}

type result struct {
	resp *http.Response
	err  error
}

// drive runs do while playing the clock: each wait do starts is recorded and
// then fired at once, so retries run without real sleeping.
func drive(clk *fakeclock.Clock, do func() (*http.Response, error)) (*http.Response, error, []time.Duration) {
	done := make(chan result, 1)
	go func() {
		resp, err := do()
		done <- result{resp, err}
	}()
	var waits []time.Duration
	for {
		changed := clk.Changed()
		if p := clk.Pending(); len(p) > 0 {
			waits = append(waits, p[0])
			clk.AdvanceToNext()
			continue
		}
		select {
		case r := <-done:
			return r.resp, r.err, waits
		case <-changed:
		}
	}
}

func post(t *testing.T, ctx context.Context, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("content-type", "application/json")
	return req
}

func readAll(t *testing.T, resp *http.Response) string {
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
			srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.WriteHeader(tt.status)
					return
				}
				fmt.Fprint(w, `{"ok":true}`)
			})
			client, clk, _ := retryClient(t)
			resp, err, _ := drive(clk, func() (*http.Response, error) {
				return client.Do(post(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			readAll(t, resp)
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
			srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					w.Header().Set("x-should-retry", tt.header)
					w.WriteHeader(tt.status)
				}
			})
			client, clk, _ := retryClient(t)
			resp, err, _ := drive(clk, func() (*http.Response, error) {
				return client.Do(post(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, tt.attempts, int(srv.attempts.Load()))
		})
	}
}

func TestRetrySpendLimitIsNotRetried(t *testing.T) {
	for name, body := range map[string]string{
		"anthropic": `{"type":"error","error":{"type":"rate_limit_error","message":"spend cap","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}`,
		"openai":    `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("content-type", "application/json")
				w.WriteHeader(429)
				fmt.Fprint(w, body)
			})
			client, clk, _ := retryClient(t)
			resp, err, waits := drive(clk, func() (*http.Response, error) {
				return client.Do(post(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			assert.Equal(t, 429, resp.StatusCode)
			assert.Equal(t, body, readAll(t, resp), "the caller gets the error body whole")
			assert.Equal(t, 1, int(srv.attempts.Load()))
			assert.Empty(t, waits)
		})
	}
}

func TestRetryWaitChoice(t *testing.T) {
	httpDate := testEpoch.Add(30 * time.Second).Format(http.TimeFormat)
	for _, tt := range []struct {
		name    string
		headers []string
		want    time.Duration
	}{
		{"retry-after-ms first", []string{"retry-after-ms", "1500", "retry-after", "3"}, 1500 * time.Millisecond},
		{"retry-after seconds", []string{"retry-after", "2"}, 2 * time.Second},
		{"retry-after fraction", []string{"retry-after", "0.25"}, 250 * time.Millisecond},
		{"retry-after http date", []string{"retry-after", httpDate}, 30 * time.Second},
		{"retry-after zero", []string{"retry-after", "0"}, 0},
		{"exhausted limit waits for its reset", []string{
			"anthropic-ratelimit-requests-remaining", "3",
			"anthropic-ratelimit-requests-reset", testEpoch.Add(50 * time.Second).Format(time.RFC3339),
			"anthropic-ratelimit-input-tokens-remaining", "0",
			"anthropic-ratelimit-input-tokens-reset", testEpoch.Add(12 * time.Second).Format(time.RFC3339)}, 12 * time.Second},
		{"openai exhausted limit", []string{"x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1.5s"}, 1500 * time.Millisecond},
		{"a reset past the cap is clamped", []string{
			"anthropic-ratelimit-tokens-remaining", "0",
			"anthropic-ratelimit-tokens-reset", testEpoch.Add(10 * time.Minute).Format(time.RFC3339)}, DefaultMaxWait},
		{"no hint: backoff", nil, DefaultBackoffBase - 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					for i := 0; i < len(tt.headers); i += 2 {
						w.Header().Set(tt.headers[i], tt.headers[i+1])
					}
					w.WriteHeader(429)
				}
			})
			// Jitter that would shorten any wait to nothing must not touch server waits.
			client, clk, _ := retryClient(t, withJitter(func(n time.Duration) time.Duration {
				if tt.headers == nil {
					return n - 1
				}
				return 0
			}))
			resp, err, waits := drive(clk, func() (*http.Response, error) {
				return client.Do(post(t, context.Background(), srv.URL, `{}`))
			})
			require.NoError(t, err)
			readAll(t, resp)
			assert.Equal(t, 200, resp.StatusCode)
			if tt.want == 0 {
				assert.Empty(t, waits)
			} else {
				assert.Equal(t, []time.Duration{tt.want}, waits)
			}
		})
	}
}

func TestRetryBackoffGrowsAndIsCapped(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(529)
	})
	client, clk, _ := retryClient(t, WithMaxAttempts(7), WithBackoff(100*time.Millisecond, time.Second))
	resp, err, waits := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	readAll(t, resp)
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{100*ms - 1, 200*ms - 1, 400*ms - 1, 800*ms - 1, time.Second - 1, time.Second - 1}, waits)
	assert.Equal(t, 7, int(srv.attempts.Load()))
}

func TestRetryFullJitterStaysInRange(t *testing.T) {
	cfg := newConfig(nil)
	for attempt := 1; attempt <= 40; attempt++ {
		ceiling := min(DefaultBackoffBase<<min(attempt-1, 20), DefaultBackoffMax)
		for range 50 {
			d := backoff(&cfg, attempt)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.Less(t, d, ceiling)
		}
	}
}

func TestRetryLongServerWaitReturnsResponseAtOnce(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "3600")
		w.Header().Set("request-id", "req_long")
		w.WriteHeader(429)
		fmt.Fprint(w, `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`)
	})
	client, clk, _ := retryClient(t, WithMaxWait(time.Minute))
	resp, err, waits := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "req_long", resp.Header.Get("request-id"))
	assert.Contains(t, readAll(t, resp), "slow down")
	assert.Empty(t, waits)
	assert.Equal(t, 1, int(srv.attempts.Load()))
}

func TestRetryExhaustedReturnsLastResponseIntact(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-attempt", strconv.Itoa(n))
		w.Header().Set("retry-after", "1")
		w.WriteHeader(529)
		fmt.Fprintf(w, `{"type":"error","error":{"type":"overloaded_error","message":"attempt %d"}}`, n)
	})
	client, clk, base := retryClient(t, WithMaxAttempts(3))
	resp, err, waits := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, "3", resp.Header.Get("x-attempt"))
	assert.Contains(t, readAll(t, resp), "attempt 3")
	assert.Equal(t, []time.Duration{time.Second, time.Second}, waits)
	assert.Equal(t, 3, int(srv.attempts.Load()))
	assert.Equal(t, 1, int(srv.conns.Load()), "abandoned bodies are drained so the connection is reused")
	assert.Zero(t, base.closeIdle.Load(), "the caller's idle connections are not closed")
}

func TestRetryCancelDuringWait(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "30")
		w.WriteHeader(429)
	})
	client, clk, base := retryClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() {
		resp, err := client.Do(post(t, ctx, srv.URL, `{}`))
		done <- result{resp, err}
	}()
	require.True(t, clk.WaitForWaiters(1, 5*time.Second))
	cancel()
	r := <-done
	require.Error(t, r.err)
	assert.ErrorIs(t, r.err, context.Canceled)
	assert.Nil(t, r.resp)
	assert.Equal(t, 1, int(srv.attempts.Load()))
	assert.Zero(t, base.closeIdle.Load())
}

func TestRetryWaitBeyondDeadlineReturnsResponse(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("retry-after", "30")
		w.WriteHeader(429)
	})
	client, clk, _ := retryClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err, waits := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, ctx, srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	readAll(t, resp)
	assert.Empty(t, waits)
}

func TestRetryReplaysBodyWithGetBody(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n < 3 {
			w.WriteHeader(503)
		}
	})
	client, clk, _ := retryClient(t)
	req := post(t, context.Background(), srv.URL, `{"model":"claude-sonnet-4-5","max_tokens":5}`)
	headerBefore := req.Header.Clone()
	resp, err, _ := drive(clk, func() (*http.Response, error) { return client.Do(req) })
	require.NoError(t, err)
	readAll(t, resp)
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
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(529)
	})
	client, clk, _ := retryClient(t)
	req := post(t, context.Background(), srv.URL, "")
	req.Body = io.NopCloser(strings.NewReader(`{"stream":true}`))
	req.GetBody = nil
	req.ContentLength = -1
	resp, err, waits := drive(clk, func() (*http.Response, error) { return client.Do(req) })
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, 1, int(srv.attempts.Load()))
	assert.Empty(t, waits)
}

func TestRetryConnectionErrorBeforeResponse(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		fmt.Fprint(w, "ok")
	})
	client, clk, _ := retryClient(t)
	resp, err, waits := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, context.Background(), srv.URL, `{}`))
	})
	require.NoError(t, err)
	assert.Equal(t, "ok", readAll(t, resp))
	assert.Equal(t, 2, int(srv.attempts.Load()))
	assert.Len(t, waits, 1)
}

type failingBase struct {
	calls atomic.Int32
	err   error
}

func (f *failingBase) RoundTrip(req *http.Request) (*http.Response, error) {
	f.calls.Add(1)
	return nil, f.err
}

func TestRetryFinalErrorsAreReturnedUnwrapped(t *testing.T) {
	openErr := &OpenError{Key: Key{Provider: ProviderAnthropic, Family: "claude-sonnet-4"}, Reason: "test"}
	for _, tt := range []struct {
		name     string
		err      error
		attempts int
	}{
		{"open breaker", openErr, 1},
		{"other error", errors.New("unsupported protocol scheme"), 1},
		{"connection reset", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, 3},
		{"unexpected EOF", io.ErrUnexpectedEOF, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := &failingBase{err: tt.err}
			clk := fakeclock.New(testEpoch)
			s := NewState(WithClock(clk), WithMaxAttempts(3), withJitter(fullCeiling))
			rt := Chain(base, Retry(s), Observe(s))
			_, err, _ := drive(clk, func() (*http.Response, error) {
				return rt.RoundTrip(post(t, context.Background(), "http://127.0.0.1:1", `{}`))
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
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		fmt.Fprint(w, "event: ping\ndata: {\"type\":\"ping\"}\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	client, clk, _ := retryClient(t)
	resp, err, _ := drive(clk, func() (*http.Response, error) {
		return client.Do(post(t, context.Background(), srv.URL, `{"stream":true}`))
	})
	require.NoError(t, err)
	_, err = io.ReadAll(resp.Body)
	assert.Error(t, err, "the broken stream reaches the caller")
	resp.Body.Close()
	assert.Equal(t, 1, int(srv.attempts.Load()))
}

func TestRetryRecordsBackoffWaits(t *testing.T) {
	srv := newScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.Header().Set("retry-after", "4")
			w.WriteHeader(429)
		}
	})
	clk := fakeclock.New(testEpoch)
	s := NewState(WithClock(clk))
	base := newBase(t)
	rt := Chain(base, Retry(s), Observe(s))
	req, c := s.callFor(post(t, context.Background(), srv.URL, `{}`))
	resp, err, _ := drive(clk, func() (*http.Response, error) { return rt.RoundTrip(req) })
	require.NoError(t, err)
	readAll(t, resp)
	assert.Equal(t, 4*time.Second, c.waits.Backoff)
	assert.Equal(t, 2, c.attemptCount())
	snap := s.Snapshot()
	require.Len(t, snap.Keys, 1)
	assert.Equal(t, Counters{Attempts: 2, RateLimited: 1}, snap.Keys[0].Counters)
}
