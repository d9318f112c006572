package tollgate_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// obsHide is a middleware of the user's: it passes every request on, and
// hides from the layers above it what it wraps.
type obsHide struct{ next http.RoundTripper }

func (h obsHide) RoundTrip(req *http.Request) (*http.Response, error) { return h.next.RoundTrip(req) }

// A middleware of the user's between two layers hides the Observe layer
// under the inner one from the outer one, which puts in an Observe of its
// own: each attempt is still read once, and an attempt the inner layer
// refused before sending is no transport error.
func TestObserveBehindAUserMiddlewareReadsEachAttemptOnce(t *testing.T) {
	srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	t.Cleanup(srv.Close)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	var mu sync.Mutex
	var records []tollgate.UsageRecord
	s := tollgate.NewState(tollgate.WithUsageRecorder(func(_ context.Context, r tollgate.UsageRecord) {
		mu.Lock()
		records = append(records, r)
		mu.Unlock()
	}))
	hide := func(next http.RoundTripper) http.RoundTripper { return obsHide{next} }
	rt := tollgate.Chain(base, tollgate.Trace(s), hide, tollgate.Budget(s))
	call := func(ctx context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}`))
		require.NoError(t, err)
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("x-api-key", "test-key")
		return rt.RoundTrip(req)
	}
	const calls = 3
	for range calls {
		resp, err := call(context.Background())
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.NoError(t, resp.Body.Close())
	}
	key := tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-5"}
	ks, ok := s.Snapshot().Key(key)
	require.True(t, ok)
	assert.Equal(t, int64(calls), ks.Counters.Attempts, "one attempt each")
	assert.Equal(t, int64(srv.Stats().OutputTokens), ks.Budget.Dimensions[tollgate.OutputTokens].Used, "settled once each")
	mu.Lock()
	require.Len(t, records, calls)
	for _, r := range records {
		assert.Equal(t, 1, r.Attempts)
	}
	mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := call(ctx)
	require.ErrorIs(t, err, context.Canceled)
	ks, _ = s.Snapshot().Key(key)
	assert.Zero(t, ks.Counters.TransportErrors, "refused by the budget, not sent")
}
