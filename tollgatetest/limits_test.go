package tollgatetest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestRequestBucketRefillsContinuously(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 60, OutputTokens: 1})
	rc := raw(t, srv)
	for i := range 60 {
		resp, body := rc.post("/v1/messages", msg("hi", 10))
		require.Equal(t, 200, resp.StatusCode, "request %d: %s", i, body)
		assert.Equal(t, itoa(59-i), resp.Header.Get("anthropic-ratelimit-requests-remaining"))
		assert.Equal(t, "60", resp.Header.Get("anthropic-ratelimit-requests-limit"))
		assert.Equal(t, t0.Add(time.Duration(i+1)*time.Second).Format(time.RFC3339),
			resp.Header.Get("anthropic-ratelimit-requests-reset"))
	}
	resp, body := rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("retry-after"))
	assert.Equal(t, "0", resp.Header.Get("anthropic-ratelimit-requests-remaining"))
	assert.Equal(t, t0.Add(time.Minute).Format(time.RFC3339), resp.Header.Get("anthropic-ratelimit-requests-reset"))
	assert.True(t, strings.HasPrefix(resp.Header.Get("request-id"), "req_"))
	assert.Regexp(t, `^\{"type":"error","error":\{"type":"rate_limit_error","message":"[^"]+"\},"request_id":"req_\w+"\}$`, body)
	assert.NotContains(t, resp.Header, "Anthropic-Ratelimit-Input-Tokens-Limit", "only set limits are sent")

	clock.Advance(999 * time.Millisecond)
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("retry-after"), "1 ms left rounds up to 1 s")

	clock.Advance(time.Millisecond) // exactly 1 s: exactly one request refilled
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 200, resp.StatusCode)
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode)

	clock.Advance(5 * time.Second)
	for range 5 {
		resp, _ = rc.post("/v1/messages", msg("hi", 10))
		require.Equal(t, 200, resp.StatusCode)
	}
	resp, _ = rc.post("/v1/messages", msg("hi", 10))
	require.Equal(t, 429, resp.StatusCode)

	st := srv.Stats()
	assert.Equal(t, 66, st.OK)
	assert.Equal(t, 4, st.RateLimited)
	assert.Equal(t, map[int]int{200: 66, 429: 4}, st.Status)
}

func TestTokenHeadersAndRounding(t *testing.T) {
	for _, exact := range []bool{false, true} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, InputTokensPerMinute: 10000,
			OutputTokensPerMinute: 2000, OutputTokens: 10, ExactRemaining: exact})
		resp, _ := raw(t, srv).post("/v1/messages", msg(words(1500), 100))
		require.Equal(t, 200, resp.StatusCode)
		h := resp.Header
		round := func(exactV, rounded string) string {
			if exact {
				return exactV
			}
			return rounded
		}
		assert.Equal(t, "10000", h.Get("anthropic-ratelimit-input-tokens-limit"))
		assert.Equal(t, round("8500", "8000"), h.Get("anthropic-ratelimit-input-tokens-remaining"))
		// 1500 tokens at 10000/60 per second: full again in 9 s.
		assert.Equal(t, "2026-03-04T05:06:16Z", h.Get("anthropic-ratelimit-input-tokens-reset"))
		// max_tokens 100 is reserved at admission: 1900 left, full in 3 s.
		assert.Equal(t, "2000", h.Get("anthropic-ratelimit-output-tokens-limit"))
		assert.Equal(t, round("1900", "1000"), h.Get("anthropic-ratelimit-output-tokens-remaining"))
		assert.Equal(t, "2026-03-04T05:06:10Z", h.Get("anthropic-ratelimit-output-tokens-reset"))
		// tokens-* is the most restrictive: output.
		assert.Equal(t, "2000", h.Get("anthropic-ratelimit-tokens-limit"))
		assert.Equal(t, round("1900", "1000"), h.Get("anthropic-ratelimit-tokens-remaining"))
		assert.Equal(t, "2026-03-04T05:06:10Z", h.Get("anthropic-ratelimit-tokens-reset"))
		assert.Empty(t, h.Get("anthropic-ratelimit-requests-limit"))

		// Settled to the 10 tokens actually produced.
		lim := srv.Limits()
		assert.Equal(t, 1990, lim.OutputTokens.Remaining)
		assert.Equal(t, 8500, lim.InputTokens.Remaining)
		assert.Equal(t, t0.Add(300*time.Millisecond), lim.OutputTokens.FullAt)
	}
}

func TestResetRoundsUpToWholeSeconds(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, InputTokensPerMinute: 6000, ExactRemaining: true})
	resp, _ := raw(t, srv).post("/v1/messages", msg(words(150), 100)) // 1.5 s to refill
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "2026-03-04T05:06:09Z", resp.Header.Get("anthropic-ratelimit-input-tokens-reset"))
	assert.Equal(t, "5850", resp.Header.Get("anthropic-ratelimit-input-tokens-remaining"))
}

func TestRetryAfterForTokens(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, InputTokensPerMinute: 600}) // 10 tokens/s
	rc := raw(t, srv)
	resp, _ := rc.post("/v1/messages", msg(words(500), 10))
	require.Equal(t, 200, resp.StatusCode)
	resp, body := rc.post("/v1/messages", msg(words(500), 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "40", resp.Header.Get("retry-after"), "400 missing tokens at 10/s")
	assert.Contains(t, body, "input tokens")

	clock.Advance(39500 * time.Millisecond)
	resp, _ = rc.post("/v1/messages", msg(words(500), 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("retry-after"))
	clock.Advance(500 * time.Millisecond)
	resp, _ = rc.post("/v1/messages", msg(words(500), 10))
	require.Equal(t, 200, resp.StatusCode)

	// retry-after is the longest wait among the short buckets.
	clock.Advance(time.Hour)
	srv2 := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1, InputTokensPerMinute: 60})
	rc2 := raw(t, srv2)
	resp, _ = rc2.post("/v1/messages", msg(words(30), 10))
	require.Equal(t, 200, resp.StatusCode)
	clock.Advance(50 * time.Second)
	resp, _ = rc2.post("/v1/messages", msg(words(59), 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "10", resp.Header.Get("retry-after"), "requests short by 10 s, input by 9 s")
}

func TestRequestLargerThanLimitIsNeverAdmitted(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{InputTokensPerMinute: 100, OutputTokensPerMinute: 1000})
	rc := raw(t, srv)
	resp, body := rc.post("/v1/messages", msg(words(101), 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("retry-after"))
	assert.Equal(t, "false", resp.Header.Get("x-should-retry"))
	assert.Contains(t, body, "never")
	resp, _ = rc.post("/v1/messages", msg("hi", 1001)) // reservation larger than the output limit
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "false", resp.Header.Get("x-should-retry"))
}

func TestOutputReserveThenSettle(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 1000, OutputTokens: 10})
	rc := raw(t, srv)
	srv.Consume(0, 0, 300)
	assert.Equal(t, 700, srv.Limits().OutputTokens.Remaining)
	resp, _ := rc.post("/v1/messages", msg("hi", 800))
	require.Equal(t, 429, resp.StatusCode, "800 reserved > 700 available")
	assert.Equal(t, "6", resp.Header.Get("retry-after"), "100 tokens at 1000/60 per s = 6 s")
	resp, _ = rc.post("/v1/messages", msg("hi", 700))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "0", resp.Header.Get("anthropic-ratelimit-output-tokens-remaining"), "reservation visible in headers")
	assert.Equal(t, 690, srv.Limits().OutputTokens.Remaining, "settled to the 10 produced")
}

func TestOutputCountAsProduced(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 1000, OutputTokens: 10,
		OutputAccounting: tollgatetest.CountAsProduced, ExactRemaining: true})
	rc := raw(t, srv)
	srv.Consume(0, 0, 300)
	resp, _ := rc.post("/v1/messages", msg("hi", 800))
	require.Equal(t, 200, resp.StatusCode, "nothing is reserved")
	assert.Equal(t, "700", resp.Header.Get("anthropic-ratelimit-output-tokens-remaining"))
	assert.Equal(t, 690, srv.Limits().OutputTokens.Remaining)
	resp, _ = rc.post("/v1/messages", msg("hi", 5000))
	require.Equal(t, 200, resp.StatusCode, "max_tokens above the limit is fine")

	// Debt: 60 OTPM (1 token/s); a 100-token reply drives the bucket to -40.
	srv2 := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 60, OutputTokens: 100,
		OutputAccounting: tollgatetest.CountAsProduced})
	rc2 := raw(t, srv2)
	resp, _ = rc2.post("/v1/messages", msg("hi", 200))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, -40, srv2.Limits().OutputTokens.Remaining)
	resp, _ = rc2.post("/v1/messages", msg("hi", 200))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "41", resp.Header.Get("retry-after"), "41 tokens to reach 1")
	assert.Equal(t, "0", resp.Header.Get("anthropic-ratelimit-output-tokens-remaining"))
	clock.Advance(41 * time.Second)
	resp, _ = rc2.post("/v1/messages", msg("hi", 200))
	require.Equal(t, 200, resp.StatusCode)
}

func TestStreamChargesAsProducedAndSettlesOnAbort(t *testing.T) {
	for _, mode := range []tollgatetest.OutputAccounting{tollgatetest.ReserveMaxTokens, tollgatetest.CountAsProduced} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 1000, OutputTokens: 40,
			StreamChunkTokens: 10, OutputAccounting: mode})
		srv.Inject(1, tollgatetest.Fault{DropMidBody: true})
		client := anthropicClient(t, srv)
		stream := client.Messages.NewStreaming(context.Background(), userParams("hi", 100))
		var acc anthropic.Message
		for stream.Next() {
			require.NoError(t, acc.Accumulate(stream.Current()))
		}
		require.Error(t, stream.Err())
		require.NoError(t, stream.Close())
		assert.Equal(t, tollgatetest.GeneratedText(20), acc.Content[0].Text, "two of four deltas")
		st := srv.Stats()
		assert.Equal(t, 20, st.OutputTokens)
		assert.Equal(t, 980, srv.Limits().OutputTokens.Remaining, "mode %d", mode)
	}
}

// A non-streaming reply's output is counted while it is generated, before
// the reply is sent, and a request that ends meanwhile keeps what it had
// generated counted: under either rule, the reservation is settled to it.
func TestNonStreamingReplyCountsOutputWhileGenerated(t *testing.T) {
	for _, mode := range []tollgatetest.OutputAccounting{tollgatetest.ReserveMaxTokens, tollgatetest.CountAsProduced} {
		clock := tollgatetest.NewClock(t0) // no refill: the levels show only what was taken
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 8000, OutputTokens: 1000,
			StreamChunkTokens: 10, TimePerOutputToken: time.Millisecond, OutputAccounting: mode})
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/messages", strings.NewReader(msg("hi", 2000)))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		client, done := httpClient(t), make(chan error, 1)
		go func() {
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		taken := func() int { return 8000 - srv.Limits().OutputTokens.Remaining }
		if mode == tollgatetest.CountAsProduced {
			require.Eventually(t, func() bool { return taken() > 0 }, 5*time.Second, time.Millisecond)
		} else {
			require.Eventually(t, func() bool { return srv.Stats().OutputTokens > 0 }, 5*time.Second, time.Millisecond)
			assert.Equal(t, 2000, taken(), "max_tokens reserved while the reply is generated")
		}
		st := srv.Stats()
		assert.Less(t, st.OutputTokens, 1000, "mode %d: counted before the whole reply is generated", mode)
		cancel()
		require.ErrorIs(t, <-done, context.Canceled, "the reply was not sent")
		require.Eventually(t, func() bool { return srv.Stats().InFlight == 0 }, 5*time.Second, time.Millisecond)
		st = srv.Stats()
		assert.Positive(t, st.OutputTokens)
		assert.Less(t, st.OutputTokens, 1000)
		assert.Equal(t, st.OutputTokens, taken(), "mode %d: what was generated stays counted", mode)
	}
}

func TestCombinedTokensAndConsume(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, TokensPerMinute: 1000, RequestsPerMinute: 10, OutputTokens: 10})
	rc := raw(t, srv)
	resp, _ := rc.post("/v1/chat/completions", chat(words(490), `,"max_tokens":500`))
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "10", resp.Header.Get("x-ratelimit-remaining-tokens"), "490 + 500 reserved")
	assert.Equal(t, 500, srv.Limits().Tokens.Remaining, "490 + 10 after settling")

	srv.Consume(9, 0, 0)
	resp, body := rc.post("/v1/chat/completions", chat("hi", ""))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "6", resp.Header.Get("retry-after"))
	assert.Contains(t, body, `"type":"requests"`)
	assert.Contains(t, body, `"code":"rate_limit_exceeded"`)

	clock.Advance(6 * time.Second)
	resp, body = rc.post("/v1/chat/completions", chat(words(600), ""))
	require.Equal(t, 429, resp.StatusCode)
	assert.JSONEq(t, `{"error":{"message":"Rate limit reached on tokens per min (TPM): Limit 1000, Used 400, Requested 610. Please try again in 600ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`, body)
	assert.Equal(t, "1", resp.Header.Get("retry-after"))

	// Anthropic routes are limited by the same combined bucket.
	resp, _ = rc.post("/v1/messages", msg(words(600), 10))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1000", resp.Header.Get("anthropic-ratelimit-tokens-limit"))
}

func TestOpenAIHeaders(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 60, TokensPerMinute: 60000, OutputTokens: 10})
	rc := raw(t, srv)
	resp, _ := rc.post("/v1/chat/completions", chat(words(1490), ""))
	require.Equal(t, 200, resp.StatusCode)
	h := resp.Header
	assert.Equal(t, "60", h.Get("x-ratelimit-limit-requests"))
	assert.Equal(t, "59", h.Get("x-ratelimit-remaining-requests"))
	assert.Equal(t, "1s", h.Get("x-ratelimit-reset-requests"))
	assert.Equal(t, "60000", h.Get("x-ratelimit-limit-tokens"))
	assert.Equal(t, "58500", h.Get("x-ratelimit-remaining-tokens"))
	assert.Equal(t, "1.5s", h.Get("x-ratelimit-reset-tokens"))
	assert.True(t, strings.HasPrefix(h.Get("x-request-id"), "req_"))
	assert.Empty(t, h.Get("anthropic-ratelimit-requests-limit"))

	clock.Advance(1480 * time.Millisecond)
	resp, _ = rc.post("/v1/chat/completions", chat("a", ""))
	// 20 tokens still missing (20 ms at 1000/s) plus this request's 11: 31 ms.
	assert.Equal(t, "31ms", resp.Header.Get("x-ratelimit-reset-tokens"))
	clock.Advance(11 * time.Millisecond)
	assert.Equal(t, clock.Now().Add(20*time.Millisecond), srv.Limits().Tokens.FullAt)

	srv2 := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 60})
	srv2.Consume(360, 0, 0)
	resp, _ = raw(t, srv2).post("/v1/chat/completions", chat("a", ""))
	require.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "6m0s", resp.Header.Get("x-ratelimit-reset-requests"))
	assert.Equal(t, "0", resp.Header.Get("x-ratelimit-remaining-requests"))
}

func TestSDKSeesRateLimitError(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 1})
	client := anthropicClient(t, srv)
	_, err := client.Messages.New(context.Background(), userParams("hi", 10))
	require.NoError(t, err)
	_, err = client.Messages.New(context.Background(), userParams("hi", 10))
	var apiErr *anthropic.Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 429, apiErr.StatusCode)
	assert.Equal(t, "rate_limit_error", string(apiErr.Type()))
	assert.Equal(t, "60", apiErr.Response.Header.Get("retry-after"))
	assert.True(t, strings.HasPrefix(apiErr.RequestID, "req_"))
}

// The token headers' remaining under each rounding; the requests header is
// always exact.
func TestRemainingRounding(t *testing.T) {
	for _, tc := range []struct {
		mode  tollgatetest.RemainingRounding
		exact bool // ExactRemaining
		left  int
		want  string
	}{
		{tollgatetest.RoundDown, false, 1999, "1000"},
		{tollgatetest.RoundDown, false, 999, "0"},
		{tollgatetest.RoundNearest, false, 1499, "1000"},
		{tollgatetest.RoundNearest, false, 1500, "2000"},
		{tollgatetest.RoundNearest, false, 499, "0"},
		{tollgatetest.RoundNearest, false, 500, "1000"},
		{tollgatetest.RoundNearest, false, 9999, "10000"},
		{tollgatetest.Exact, false, 1499, "1499"},
		{tollgatetest.RoundNearest, true, 1499, "1499"},
		{tollgatetest.RoundDown, true, 1999, "1999"},
	} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 7, InputTokensPerMinute: 20_000,
			OutputTokensPerMinute: 30_000, OutputTokens: 1, RoundRemaining: tc.mode, ExactRemaining: tc.exact})
		// Leave tc.left input tokens after a 1-token request.
		srv.Consume(0, 20_000-tc.left-1, 0)
		resp, body := raw(t, srv).post("/v1/messages", msg("a", 1))
		require.Equal(t, 200, resp.StatusCode, body)
		h := resp.Header
		assert.Equal(t, tc.want, h.Get("anthropic-ratelimit-input-tokens-remaining"), "%+v", tc)
		assert.Equal(t, tc.want, h.Get("anthropic-ratelimit-tokens-remaining"), "%+v: input is the most restrictive", tc)
		assert.Equal(t, "6", h.Get("anthropic-ratelimit-requests-remaining"), "%+v", tc)
	}
}

// Counted as produced, max_tokens does not factor into admission on the
// Messages route (any max_tokens is admitted while one output token is
// left); reserved, it must be available. Chat completions always reserve,
// as OpenAI counts max_tokens when the request is made.
func TestOutputRulesAtAdmission(t *testing.T) {
	for _, tc := range []struct {
		rule      tollgatetest.OutputAccounting
		path      string
		left      int // output tokens left before the request
		maxTokens int
		admitted  bool
	}{
		{tollgatetest.ReserveMaxTokens, "/v1/messages", 1000, 1000, true},
		{tollgatetest.ReserveMaxTokens, "/v1/messages", 999, 1000, false},
		{tollgatetest.CountAsProduced, "/v1/messages", 1, 8192, true},
		{tollgatetest.CountAsProduced, "/v1/messages", 0, 1, false},
		{tollgatetest.CountAsProduced, "/v1/chat/completions", 999, 1000, false},
		{tollgatetest.CountAsProduced, "/v1/chat/completions", 1000, 1000, true},
	} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokensPerMinute: 2000, OutputTokens: 10,
			OutputAccounting: tc.rule, ExactRemaining: true})
		srv.Consume(0, 0, 2000-tc.left)
		body := msg("hi", tc.maxTokens)
		if tc.path != "/v1/messages" {
			body = chat("hi", `,"max_tokens":`+itoa(tc.maxTokens))
		}
		resp, out := raw(t, srv).post(tc.path, body)
		if !tc.admitted {
			assert.Equal(t, 429, resp.StatusCode, "%+v: %s", tc, out)
			continue
		}
		require.Equal(t, 200, resp.StatusCode, "%+v: %s", tc, out)
		if tc.rule == tollgatetest.CountAsProduced && tc.path == "/v1/messages" {
			assert.Equal(t, itoa(tc.left), resp.Header.Get("anthropic-ratelimit-output-tokens-remaining"), "%+v: nothing reserved", tc)
		} else if tc.path == "/v1/messages" {
			assert.Equal(t, itoa(tc.left-tc.maxTokens), resp.Header.Get("anthropic-ratelimit-output-tokens-remaining"), "%+v: reserved", tc)
		} else {
			assert.Equal(t, itoa(tc.left-tc.maxTokens), resp.Header.Get("x-ratelimit-remaining-tokens"), "%+v: reserved", tc)
		}
		assert.Equal(t, tc.left-10, srv.Limits().OutputTokens.Remaining, "%+v: the 10 produced, in the end", tc)
	}
}

// OutputTokensHeader sets one request's reply length, capped by max_tokens,
// instead of OutputTokens / OutputTokensFunc.
func TestOutputTokensHeader(t *testing.T) {
	calls := 0
	srv := newServer(t, tollgatetest.Config{OutputTokensFunc: func(string, int) int { calls++; return 7 }})
	rc := raw(t, srv)
	for _, tc := range []struct {
		header    string
		maxTokens int
		want      int
	}{
		{"25", 100, 25},
		{" 0 ", 100, 0},
		{"500", 100, 100},
		{"-3", 100, 7},
		{"many", 100, 7},
		{"", 100, 7},
	} {
		var hdr []string
		if tc.header != "" {
			hdr = []string{tollgatetest.OutputTokensHeader, tc.header}
		}
		_, body := rc.post("/v1/messages", msg("hi", tc.maxTokens), hdr...)
		assert.Contains(t, body, `"output_tokens":`+itoa(tc.want)+`}`, "%+v", tc)
		_, body = rc.post("/v1/chat/completions", chat("hi", `,"max_tokens":`+itoa(tc.maxTokens)), hdr...)
		assert.Contains(t, body, `"completion_tokens":`+itoa(tc.want)+`,`, "%+v", tc)
	}
	assert.Equal(t, 2*3, calls, "the function is asked only without a valid header")
}
