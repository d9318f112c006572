package tollgatetest_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Model listing is served in each provider's shape, with no rate-limit
// headers, and draws on no bucket, even an empty one.
func TestModelsAreNotPaced(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1, InputTokensPerMinute: 1000})
	srv.Consume(10, 0, 0)

	ac := anthropicClient(t, srv)
	page, err := ac.Models.List(context.Background(), anthropic.ModelListParams{})
	require.NoError(t, err)
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		assert.NotEmpty(t, m.DisplayName)
	}
	assert.Contains(t, ids, "claude-sonnet-5")
	m, err := ac.Models.Get(context.Background(), "claude-haiku-5-5", anthropic.ModelGetParams{})
	require.NoError(t, err)
	assert.Equal(t, "Claude Haiku 5.5", m.DisplayName)
	_, err = ac.Models.Get(context.Background(), "claude-nope", anthropic.ModelGetParams{})
	assert.ErrorContains(t, err, "404")

	oc := openAIClient(t, srv)
	list, err := oc.Models.List(context.Background())
	require.NoError(t, err)
	require.NotEmpty(t, list.Data)
	assert.Equal(t, "gpt-4o", list.Data[0].ID)

	c := httpClient(t)
	for _, hdr := range [][2]string{{"anthropic-version", "2023-06-01"}, {"Authorization", "Bearer k"}} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/models", nil)
		req.Header.Set(hdr[0], hdr[1])
		resp, err := c.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, 200, resp.StatusCode)
		for name := range resp.Header {
			assert.NotContains(t, name, "Ratelimit", "not paced: no rate-limit headers")
		}
	}
	resp, body := raw(t, srv).post("/v1/models", "{}", "anthropic-version", "2023-06-01")
	assert.Equal(t, 405, resp.StatusCode, body)

	assert.Equal(t, -9, srv.Limits().Requests.Remaining, "nothing drawn")
	assert.Zero(t, srv.Stats().RateLimited)
}

// An injected fault on count_tokens or the model listing carries that
// route's headers: count_tokens' own bucket, none for the listing.
func TestFaultHeadersFollowTheRoute(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{RequestsPerMinute: 50, CountTokensPerMinute: 7})
	srv.Inject(2, tollgatetest.Fault{Status: 529})
	rc := raw(t, srv)
	resp, _ := rc.post("/v1/messages/count_tokens", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	assert.Equal(t, 529, resp.StatusCode)
	assert.Equal(t, "7", resp.Header.Get("anthropic-ratelimit-requests-limit"))
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/models", nil)
	req.Header.Set("anthropic-version", "2023-06-01")
	r, err := httpClient(t).Do(req)
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, 529, r.StatusCode)
	assert.Empty(t, r.Header.Get("anthropic-ratelimit-requests-limit"))
}
