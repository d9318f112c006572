package tollgate_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Waiting is not failing: 16 agents, through each official SDK, JSON and
// streamed, offer about three times what a limit serves. Their calls wait
// in tollgate's queue for minutes (past WithMaxWait's and WithMaxPause's
// 60 s, which bound only the waits a server asks for), and
// none fails, with no 429 either. The fake API and tollgate share a fake
// clock that moves only while every agent waits on it, so the simulated
// minutes take milliseconds.
func TestWaitingIsNotFailing(t *testing.T) {
	const (
		agents        = 16
		callsPerAgent = 2
		promptWords   = 500 // tokens, as tollgatetest counts them
		replyTokens   = 50
	)
	prompt := strings.Repeat("word ", promptWords)
	for _, api := range []string{"anthropic", "openai"} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", api, stream), func(t *testing.T) {
				clk := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
				cfg := tollgatetest.Config{RequestsPerMinute: 1000, OutputTokens: replyTokens, Now: clk.Now}
				// A limit that serves about 5 calls a minute: the agents'
				// 32 calls take about six simulated minutes.
				if api == "openai" {
					cfg.TokensPerMinute = 3000
				} else {
					cfg.InputTokensPerMinute, cfg.OutputTokensPerMinute = 3000, 100_000
				}
				srv := tollgatetest.NewServer(cfg)
				defer srv.Close()
				base := &waitingBase{rt: &http.Transport{}}
				defer base.rt.CloseIdleConnections()
				var mu sync.Mutex
				var longest time.Duration
				// Told the limits, so that the first calls are paced too.
				rt := tollgate.New(base, tollgate.WithClock(clk), tollgate.WithLimits(tollgate.Limits{
					RequestsPerMinute: cfg.RequestsPerMinute, TokensPerMinute: cfg.TokensPerMinute,
					InputTokensPerMinute: cfg.InputTokensPerMinute, OutputTokensPerMinute: cfg.OutputTokensPerMinute}),
					tollgate.WithUsageRecorder(func(_ context.Context, r tollgate.UsageRecord) {
						mu.Lock()
						longest = max(longest, r.Waits.Budget+r.Waits.Pause)
						mu.Unlock()
					}))
				hc := &http.Client{Transport: rt}
				call := waitingCaller(api, stream, srv.URL, hc, prompt)

				var running atomic.Int32
				running.Store(agents)
				var failures []error
				var wg sync.WaitGroup
				for range agents {
					wg.Go(func() {
						defer running.Add(-1)
						for range callsPerAgent {
							if err := call(context.Background()); err != nil {
								mu.Lock()
								failures = append(failures, err)
								mu.Unlock()
							}
						}
					})
				}
				// The clock moves to the next wait whenever no attempt is at
				// the server: every agent then waits, in tollgate's queue, on
				// a pause or for a retry (or is between two steps, for which
				// time passing early changes nothing).
				priDriveWhen(t, clk, func() bool { return base.inFlight.Load() == 0 },
					func() bool { return running.Load() == 0 })
				wg.Wait()

				assert.Empty(t, failures, "no call fails for waiting")
				st := srv.Stats()
				assert.Equal(t, agents*callsPerAgent, st.OK)
				assert.Zero(t, st.RateLimited, "and none drew a 429")
				// How long the longest wait is depends on when each agent
				// queued its first call (the clock may move before the last
				// has); past a minute it always is.
				assert.Greater(t, longest, time.Minute, "calls waited past WithMaxWait's and WithMaxPause's 60 s")
				t.Logf("%d calls in %v simulated; the longest waited %v", st.OK, clk.Now().Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), longest)
			})
		}
	}
}

// waitingCaller returns a function that makes one call of prompt through
// the official SDK of api, streamed or not, reading the reply in full.
func waitingCaller(api string, stream bool, url string, hc *http.Client, prompt string) func(context.Context) error {
	if api == "openai" {
		client := openai.NewClient(openaioption.WithBaseURL(url+"/v1"), openaioption.WithAPIKey("sk-test"),
			openaioption.WithHTTPClient(hc), openaioption.WithMaxRetries(0))
		params := openai.ChatCompletionNewParams{
			Model:               openai.ChatModelGPT4oMini,
			MaxCompletionTokens: openai.Int(64),
			Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		}
		if !stream {
			return func(ctx context.Context) error {
				_, err := client.Chat.Completions.New(ctx, params)
				return err
			}
		}
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		return func(ctx context.Context) error {
			s := client.Chat.Completions.NewStreaming(ctx, params)
			defer s.Close()
			for s.Next() {
			}
			return s.Err()
		}
	}
	client := anthropic.NewClient(anthropicoption.WithBaseURL(url), anthropicoption.WithAPIKey("sk-ant-test"),
		anthropicoption.WithHTTPClient(hc), anthropicoption.WithMaxRetries(0), anthropicoption.WithoutOpenTelemetry())
	params := anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet4_5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
	}
	if !stream {
		return func(ctx context.Context) error {
			_, err := client.Messages.New(ctx, params)
			return err
		}
	}
	return func(ctx context.Context) error {
		s := client.Messages.NewStreaming(ctx, params)
		defer s.Close()
		for s.Next() {
		}
		return s.Err()
	}
}

// waitingBase is a base transport that counts the attempts at the server:
// from when it is sent until its response body is closed.
type waitingBase struct {
	rt       *http.Transport
	inFlight atomic.Int32
}

func (b *waitingBase) RoundTrip(req *http.Request) (*http.Response, error) {
	b.inFlight.Add(1)
	resp, err := b.rt.RoundTrip(req)
	if err != nil {
		b.inFlight.Add(-1)
		return nil, err
	}
	resp.Body = &waitingBody{ReadCloser: resp.Body, done: func() { b.inFlight.Add(-1) }}
	return resp, nil
}

type waitingBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *waitingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
