package tollgatetest_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	ooption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestErrorResponses(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{})
	rc := raw(t, srv)

	resp, body := rc.post("/v1/nope", "{}")
	assert.Equal(t, 404, resp.StatusCode)
	assert.Contains(t, body, `"type":"not_found_error"`)
	assert.Contains(t, body, `"request_id":"req_`)

	resp, body = rc.post("/v1/embeddings", "{}")
	assert.Equal(t, 404, resp.StatusCode)
	assert.JSONEq(t, `{"error":{"message":"Invalid URL (POST /v1/embeddings)","type":"invalid_request_error","param":null,"code":null}}`, body)

	resp, body = rc.post("/v1/messages", "{not json")
	assert.Equal(t, 400, resp.StatusCode)
	assert.Contains(t, body, `"type":"invalid_request_error"`)

	resp, body = rc.post("/v1/chat/completions", "[1,2]")
	assert.Equal(t, 400, resp.StatusCode)
	assert.Contains(t, body, `"type":"invalid_request_error"`)

	for _, b := range []string{
		`{"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","max_tokens":10,"messages":[]}`,
	} {
		resp, _ = rc.post("/v1/messages", b)
		assert.Equal(t, 400, resp.StatusCode, b)
	}

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/messages", nil)
	r, err := httpClient(t).Do(req)
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, 405, r.StatusCode)

	st := srv.Stats()
	assert.Equal(t, 9, st.Requests)
	assert.Equal(t, map[int]int{404: 2, 400: 6, 405: 1}, st.Status)
}

func TestAPIKey(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{APIKey: "secret", RequestsPerMinute: 10})
	ac := anthropicClient(t, srv)
	_, err := ac.Messages.New(context.Background(), userParams("hi", 10))
	var aErr *anthropic.Error
	require.True(t, errors.As(err, &aErr), "%v", err)
	assert.Equal(t, 401, aErr.StatusCode)
	assert.Equal(t, "authentication_error", string(aErr.Type()))

	good := anthropic.NewClient(aoptionBase(srv.URL), aoptionKey("secret"), aoptionRetries(0), aoptionHTTP(httpClient(t)))
	_, err = good.Messages.New(context.Background(), userParams("hi", 10))
	require.NoError(t, err, "the SDK sends Authorization: Bearer")
	resp, _ := raw(t, srv).post("/v1/messages", msg("hi", 10), "x-api-key", "secret")
	assert.Equal(t, 200, resp.StatusCode)
	resp, _ = raw(t, srv).post("/v1/messages", msg("hi", 10), "x-api-key", "wrong")
	assert.Equal(t, 401, resp.StatusCode)

	oc := openAIClient(t, srv)
	_, err = oc.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	var oErr *openai.Error
	require.True(t, errors.As(err, &oErr), "%v", err)
	assert.Equal(t, 401, oErr.StatusCode)
	assert.Equal(t, "invalid_api_key", oErr.Code)

	oc = openAIClient(t, srv, ooption.WithAPIKey("secret"))
	_, err = oc.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	require.NoError(t, err)
	assert.Equal(t, 7, srv.Limits().Requests.Remaining, "401s take no budget")
}

func TestPeakConcurrency(t *testing.T) {
	const n = 16
	var arrived sync.WaitGroup
	arrived.Add(n)
	release := make(chan struct{})
	srv := newServer(t, tollgatetest.Config{FaultFunc: func(r *http.Request, _ int) *tollgatetest.Fault {
		arrived.Done()
		select { // every request waits here until all n are in flight
		case <-release:
		case <-time.After(5 * time.Second):
		}
		return nil
	}})
	client := anthropicClient(t, srv)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := client.Messages.New(context.Background(), userParams("hi", 10))
			errs <- err
		})
	}
	arrived.Wait()
	st := srv.Stats()
	assert.Equal(t, n, st.InFlight)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st = srv.Stats()
	assert.Equal(t, n, st.PeakConcurrency)
	assert.Zero(t, st.InFlight)
	assert.Equal(t, n, st.OK)
}

func TestConcurrentAdmissionIsExact(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 20, OutputTokensPerMinute: 10000,
		OutputTokens: 5, StreamChunkTokens: 1})
	client := anthropicClient(t, srv)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range 60 {
		wg.Go(func() {
			code := 200
			if i%2 == 0 {
				_, err := client.Messages.New(context.Background(), userParams("hi", 10))
				var e *anthropic.Error
				if errors.As(err, &e) {
					code = e.StatusCode
				} else if err != nil {
					code = -1
				}
			} else {
				s := client.Messages.NewStreaming(context.Background(), userParams("hi", 10))
				for s.Next() {
				}
				var e *anthropic.Error
				if errors.As(s.Err(), &e) {
					code = e.StatusCode
				} else if s.Err() != nil {
					code = -1
				}
				s.Close()
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	assert.Equal(t, map[int]int{200: 20, 429: 40}, codes)
	st := srv.Stats()
	assert.Equal(t, 20, st.OK)
	assert.Equal(t, 40, st.RateLimited)
	assert.Equal(t, 100, st.OutputTokens)
	assert.Equal(t, 9900, srv.Limits().OutputTokens.Remaining)
	assert.Zero(t, st.InFlight)
	assert.LessOrEqual(t, st.PeakConcurrency, 60)
}

func TestStatsTimelineWindowSinceReset(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, RequestsPerMinute: 2, OutputTokens: 3})
	rc := raw(t, srv)
	rc.post("/v1/messages", msg("one two", 10))
	clock.Advance(1500 * time.Millisecond)
	rc.post("/v1/messages", msg("one", 10))
	before := srv.Stats()
	rc.post("/v1/messages", msg("one", 10)) // 429
	clock.Advance(70 * time.Second)
	rc.post("/v1/messages", msg("one", 10))

	st := srv.Stats()
	require.Len(t, st.Timeline, 3)
	assert.Equal(t, tollgatetest.Second{Start: t0, Requests: 1, OK: 1, InputTokens: 2, PromptTokens: 2, OutputTokens: 3,
		Admitted: 1, AdmittedInputTokens: 2}, st.Timeline[0])
	assert.Equal(t, tollgatetest.Second{Start: t0.Add(time.Second), Requests: 2, OK: 1, RateLimited: 1, InputTokens: 1, PromptTokens: 1, OutputTokens: 3,
		Admitted: 1, AdmittedInputTokens: 1}, st.Timeline[1])
	w := st.Window(t0, t0.Add(time.Minute))
	assert.Equal(t, tollgatetest.Second{Start: t0, Requests: 3, OK: 2, RateLimited: 1, InputTokens: 3, PromptTokens: 3, OutputTokens: 6,
		Admitted: 2, AdmittedInputTokens: 3}, w)

	d := st.Since(before)
	assert.Equal(t, 2, d.Requests)
	assert.Equal(t, 1, d.OK)
	assert.Equal(t, 1, d.RateLimited)
	assert.Equal(t, map[int]int{200: 1, 429: 1}, d.Status)
	assert.Len(t, d.Timeline, 2)

	srv.ResetStats()
	st = srv.Stats()
	assert.Zero(t, st.Requests)
	assert.Empty(t, st.Timeline)
	assert.Empty(t, st.Status)
}

// Input is counted in Stats when the reply is sent, and as admitted in the
// second the limiter took it: a window's admitted input is what the limit
// counted in it, even where replies lag.
func TestStatsTimelineCountsAdmissionWhenTheLimiterAdmits(t *testing.T) {
	var reads atomic.Int64
	tick := func() time.Time { return t0.Add(time.Duration(reads.Add(1)) * time.Second) } // every reading a second later
	srv := newServer(t, tollgatetest.Config{Now: tick, InputTokensPerMinute: 1000, OutputTokens: 3})
	rc := raw(t, srv)
	rc.post("/v1/messages", msg("one two", 10))

	var admitted, served []tollgatetest.Second
	for _, sec := range srv.Stats().Timeline {
		if sec.Admitted > 0 {
			admitted = append(admitted, sec)
		}
		if sec.InputTokens > 0 {
			served = append(served, sec)
		}
	}
	require.Len(t, admitted, 1)
	require.Len(t, served, 1)
	assert.Equal(t, 2, admitted[0].AdmittedInputTokens)
	assert.Zero(t, admitted[0].InputTokens, "the reply is sent in a later second")
	assert.Equal(t, 2, served[0].InputTokens)
	assert.True(t, admitted[0].Start.Before(served[0].Start))
}

func TestClientDisconnectMidStream(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokens: 1000, StreamChunkTokens: 1,
		StreamEventDelay: 2 * time.Millisecond, OutputTokensPerMinute: 100000, ExactRemaining: true})
	client := anthropicClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	stream := client.Messages.NewStreaming(ctx, userParams("hi", 2000))
	deltas := 0
	for stream.Next() {
		if stream.Current().Type == "content_block_delta" {
			deltas++
			if deltas == 3 {
				cancel()
				break
			}
		}
	}
	stream.Close()
	cancel()
	require.Eventually(t, func() bool { return srv.Stats().InFlight == 0 }, 5*time.Second, 2*time.Millisecond)
	st := srv.Stats()
	assert.Less(t, st.OutputTokens, 1000)
	assert.GreaterOrEqual(t, st.OutputTokens, 3)
	assert.Equal(t, 100000-st.OutputTokens, srv.Limits().OutputTokens.Remaining, "reservation settled to tokens sent")
}

func TestCloseEndsWaits(t *testing.T) {
	srv := tollgatetest.NewServer(tollgatetest.Config{Latency: time.Minute})
	client := anthropicClient(t, srv)
	done := make(chan error, 1)
	go func() {
		_, err := client.Messages.New(context.Background(), userParams("hi", 10))
		done <- err
	}()
	require.Eventually(t, func() bool { return srv.Stats().InFlight == 1 }, 5*time.Second, time.Millisecond)
	start := time.Now()
	srv.Close()
	assert.Less(t, time.Since(start), 5*time.Second)
	require.Error(t, <-done)
	srv.Close() // idempotent
}

func TestLatencyAndTimePerToken(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{Latency: 20 * time.Millisecond, TimePerOutputToken: time.Millisecond,
		OutputTokens: 10, StreamEventDelay: time.Millisecond})
	client := anthropicClient(t, srv)
	start := time.Now()
	_, err := client.Messages.New(context.Background(), userParams("hi", 100))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)

	start = time.Now()
	s := client.Messages.NewStreaming(context.Background(), userParams("hi", 100))
	for s.Next() {
	}
	require.NoError(t, s.Err())
	s.Close()
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
}

func TestNewHandlerOnOwnListener(t *testing.T) {
	h := tollgatetest.NewHandler(tollgatetest.Config{RequestsPerMinute: 5})
	defer h.Close()
	assert.Empty(t, h.URL)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: h.Handler(), ReadHeaderTimeout: time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	client := anthropic.NewClient(aoptionBase("http://"+ln.Addr().String()), aoptionKey("k"),
		aoptionRetries(0), aoptionHTTP(httpClient(t)))
	m, err := client.Messages.New(context.Background(), userParams("hi", 10))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(m.ID, "msg_"))
	assert.Equal(t, 1, h.Stats().OK)
}
