package tollgate_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Each endpoint is charged what the server charges it: count_tokens has a
// requests-per-minute pool of its own and costs no tokens; Message Batches,
// model listing and files are not paced by the messages limits at all.

var accCountTokens = tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "count_tokens"}

// accCountTokensBody is a count_tokens request for a prompt of about n
// tokens.
func accCountTokensBody(n int) string {
	b, err := json.Marshal(map[string]any{"model": "claude-sonnet-4-5",
		"messages": []accTurn{{Role: "user", Content: []accBlock{accText(accWords("prompt", n))}}}})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The scenario: six count_tokens calls for a 10,000-token prompt
// under a 30,000 input tokens a minute limit (WithLimits) go at once, one
// after the other, and leave the messages budget as it was; they draw one
// request each from a pool of their own.
func TestCountTokensChargesNoTokensToTheModelsPool(t *testing.T) {
	tier1 := tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}
	rig := newAccRig(t, accTier1(tollgatetest.Config{CountTokensPerMinute: 100, OutputAccounting: tollgatetest.CountAsProduced,
		RoundRemaining: tollgatetest.RoundNearest}), tollgate.WithLimits(tier1))
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 1024, "hello")))
	before := rig.budget(accSonnet)

	const prompt = 10_000
	body := accCountTokensBody(prompt)
	for i := range 6 {
		c := rig.ok(rig.anthropic(http.MethodPost, "/v1/messages/count_tokens", body))
		assert.JSONEq(t, fmt.Sprintf(`{"input_tokens":%d}`, prompt), c.body)
		assert.Zero(t, c.int(accEstInput), "call %d is charged no input tokens", i)
	}
	for _, rec := range rig.usageRecords() {
		assert.Zero(t, rec.Waits, "no call waited")
	}

	assert.Equal(t, before.Dimensions, rig.budget(accSonnet).Dimensions, "the messages budget is as it was")
	own := rig.budget(accCountTokens)
	assert.Equal(t, int64(100), own.Dimensions[tollgate.Requests].Limit, "count_tokens' own requests-per-minute limit, from its headers")
	assert.Equal(t, int64(6), own.Dimensions[tollgate.Requests].Used)
	for _, d := range []tollgate.Dimension{tollgate.InputTokens, tollgate.OutputTokens, tollgate.Tokens} {
		assert.Zero(t, own.Dimensions[d].Limit, "%s: the model's limits (WithLimits) are not count_tokens'", d)
		assert.Zero(t, own.Dimensions[d].Used, "%s", d)
	}
	assert.Zero(t, rig.srv.Stats().RateLimited)
}

// count_tokens is paced by its own requests-per-minute limit: once it is
// spent, the next count_tokens call waits for its refill (and the server
// never refuses one), while a Messages call goes at once.
func TestCountTokensIsPacedByItsOwnRequestsPerMinute(t *testing.T) {
	rig := newAccRig(t, accTier1(tollgatetest.Config{CountTokensPerMinute: 2, OutputAccounting: tollgatetest.CountAsProduced}))
	count := func() *http.Request {
		return rig.anthropic(http.MethodPost, "/v1/messages/count_tokens", accCountTokensBody(100))
	}
	rig.ok(count())
	rig.ok(count())

	third := rig.start(count())
	require.True(t, rig.clk.WaitForWaiters(1, accGuard), "the third count_tokens call waits on the clock")
	select {
	case r := <-rig.start(rig.messages(accSmall("claude-sonnet-4-5", 1024, "meanwhile"))):
		require.NoError(t, r.err)
		assert.Equal(t, http.StatusOK, r.resp.StatusCode)
		accReadAll(t, r.resp)
	case <-time.After(accGuard):
		t.Fatal("a Messages call waits for count_tokens' limit")
	}
	r, waits := rig.send(third)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.resp.StatusCode)
	accReadAll(t, r.resp)
	var waited time.Duration
	for _, w := range waits {
		waited += w
	}
	assert.Positive(t, waited)
	assert.LessOrEqual(t, waited, 31*time.Second, "at most the refill of one request at 2 a minute")
	assert.Zero(t, rig.srv.Stats().RateLimited)
}

// Message Batches, model listing and files are not paced by the messages
// limits: with the messages request budget spent, they go at once, and
// leave it as it was; a Messages call then waits for its refill.
func TestBatchesModelsAndFilesAreNotPacedByTheMessagesLimits(t *testing.T) {
	rig := newAccRig(t, tollgatetest.Config{RequestsPerMinute: 1, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 1024, "first")))
	before := rig.budget(accSonnet)
	require.Less(t, before.Dimensions[tollgate.Requests].Level, 1.0, "the messages request budget is spent")

	batch := `{"requests":[{"custom_id":"a","params":` + accSmall("claude-sonnet-4-5", 1024, "batched") + `}]}`
	others := []struct {
		method, path, body string
	}{
		{http.MethodGet, "/v1/models", ""},
		{http.MethodGet, "/v1/models/claude-sonnet-4-5", ""},
		{http.MethodPost, "/v1/messages/batches", batch},
		{http.MethodGet, "/v1/messages/batches/msgbatch_01", ""},
		{http.MethodGet, "/v1/messages/batches/msgbatch_01/results", ""},
		{http.MethodPost, "/v1/messages/batches/msgbatch_01/cancel", ""},
		{http.MethodGet, "/v1/files", ""},
		{http.MethodPost, "/v1/files", `{"file":"x"}`},
		{http.MethodGet, "/v1/files/file_01/content", ""},
	}
	requests := rig.srv.Stats().Requests
	for _, o := range others {
		c := rig.do(rig.anthropic(o.method, o.path, o.body))
		assert.NotEqual(t, http.StatusTooManyRequests, c.status, "%s %s", o.method, o.path)
		requests++
		assert.Equal(t, requests, rig.srv.Stats().Requests, "%s %s reached the server", o.method, o.path)
	}
	assert.Equal(t, before.Dimensions, rig.budget(accSonnet).Dimensions, "the messages budget is as it was")

	r, waits := rig.send(rig.start(rig.messages(accSmall("claude-sonnet-4-5", 1024, "second"))))
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.resp.StatusCode)
	accReadAll(t, r.resp)
	assert.NotEmpty(t, waits, "a Messages call waits for the refill")
	assert.Zero(t, rig.srv.Stats().RateLimited)
}
