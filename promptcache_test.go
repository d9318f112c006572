package tollgate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// What the prompt cache takes off an attempt's estimate: Anthropic does not
// count cache reads against the input limit (but for Haiku 3.5), so what
// tollgate predicts the server will read from its cache is not charged.
// The prediction shows on the call span (tollgate.estimate.cache_read.*),
// and the server's own account of it in the usage attributes.

// accAgentConvo is the start of a coding agent's conversation: a long
// shared system prompt and a task.
func accAgentConvo(model string) *accConvo {
	c := &accConvo{model: model, maxTokens: 1024, system: accWords("system", 2000)}
	return c.say("user", accWords("task", 100))
}

// next appends turn i's reply and tool result.
func (c *accConvo) next(i int) *accConvo {
	return c.say("assistant", accWords(fmt.Sprint("reply", i), 150)).say("user", accWords(fmt.Sprint("result", i), 400))
}

// The second call of a conversation is not charged for what it is
// predicted to read from the cache: its input estimate is the one the same
// request gets without cache_control (from a Transport that learned the
// same), less at least the predicted read — and it still covers what the
// server counts.
func TestPromptCacheSecondCallIsNotChargedForThePredictedRead(t *testing.T) {
	marked := newAccRig(t, accRoomy(tollgatetest.Config{}))
	plain := newAccRig(t, accRoomy(tollgatetest.Config{}))
	convo := accAgentConvo("claude-sonnet-4-5")
	first := marked.ok(marked.messages(convo.body(true, "")))
	plainFirst := plain.ok(plain.messages(convo.body(false, "")))
	assert.Equal(t, plainFirst.int(accCountedIn), first.int(accCountedIn), "the first call's input counts whole, cached or not")
	assert.Zero(t, first.int(accEstCached), "nothing is cached yet")

	convo.next(0)
	second := marked.ok(marked.messages(convo.body(true, "")))
	plainSecond := plain.ok(plain.messages(convo.body(false, "")))
	read := second.int(accUsageRead)
	require.Positive(t, read, "the server read the conversation so far from its cache")
	predicted := second.int(accEstCached)
	assert.InEpsilon(t, read, predicted, 0.1, "the predicted read is about what the server read")
	assert.Zero(t, plainSecond.int(accEstCached))
	assert.GreaterOrEqual(t, plainSecond.int(accEstInput)-second.int(accEstInput), predicted-1,
		"the estimate leaves out the predicted read (%d without cache_control, %d with)",
		plainSecond.int(accEstInput), second.int(accEstInput))
	assert.GreaterOrEqual(t, second.int(accEstInput), second.int(accCountedIn), "the estimate covers what the server counted")
	assert.Less(t, second.int(accEstInput), second.int(accUsageInput)/2, "most of the prompt is a cache read")
	assert.Equal(t, 3, marked.budget(accSonnet).CachedPrefixes,
		"the system prompt, and the conversation up to each call's newest turn")
}

// A cached prefix lives for the TTL its breakpoint asks, 5 minutes unless
// "1h": past it the prompt is charged whole again, as the server counts it;
// within it the read is predicted.
func TestPromptCacheTTL(t *testing.T) {
	tests := []struct {
		name   string
		ttl    string
		cached bool
	}{
		{"default 5m expires", "", false},
		{"5m expires", "5m", false},
		{"1h survives 5m", "1h", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
			convo := accAgentConvo("claude-sonnet-4-5")
			rig.ok(rig.messages(convo.body(true, tc.ttl)))
			rig.clk.Advance(5*time.Minute + time.Second)
			c := rig.ok(rig.messages(convo.next(0).body(true, tc.ttl)))
			if !tc.cached {
				require.Zero(t, c.int(accUsageRead), "the server's entries expired")
				assert.Zero(t, c.int(accEstCached), "no read predicted past the TTL")
				assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn), "charged again for the whole prompt")
				return
			}
			require.Positive(t, c.int(accUsageRead), "the server's 1h entries live")
			assert.InEpsilon(t, c.int(accUsageRead), c.int(accEstCached), 0.1)
		})
	}
}

// A cached prefix lives from the start of the request that wrote it, not
// from the end of its reply: after a reply that took 4 minutes, a 5-minute
// entry has a minute left, and a call 5 minutes after the first was sent
// is charged for the whole prompt again.
func TestPromptCacheLifetimeRunsFromTheRequestStart(t *testing.T) {
	var slow atomic.Bool
	var rig *accRig
	rig = newAccRigThrough(t, accRoomy(tollgatetest.Config{}), func(_ *tollgatetest.Server, next http.RoundTripper) http.RoundTripper {
		return accAfter{next: next, after: func() {
			if slow.Swap(false) {
				rig.clk.Advance(4 * time.Minute) // the reply took 4 minutes
			}
		}}
	})
	convo := accAgentConvo("claude-sonnet-4-5")
	slow.Store(true)
	rig.ok(rig.messages(convo.body(true, "")))
	rig.clk.Advance(time.Minute + time.Second)
	c := rig.ok(rig.messages(convo.next(0).body(true, "")))
	require.Zero(t, c.int(accUsageRead), "the server's entries expired 5 minutes after the first call was sent")
	assert.Zero(t, c.int(accEstCached), "no read predicted")
	assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn), "charged again for the whole prompt")
}

// accAfter sends requests on and calls after once each response's
// headers are in.
type accAfter struct {
	next  http.RoundTripper
	after func()
}

func (a accAfter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(req)
	a.after()
	return resp, err
}

// A read refreshes the entry it read: a prefix written at 0 and read at 4
// minutes is still cached at 8.
func TestPromptCacheHitRefreshesTheTTL(t *testing.T) {
	rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
	body := accAgentConvo("claude-sonnet-4-5").body(true, "")
	rig.ok(rig.messages(body))
	rig.clk.Advance(4 * time.Minute)
	hit := rig.ok(rig.messages(body))
	require.Positive(t, hit.int(accUsageRead))
	assert.Positive(t, hit.int(accEstCached))
	rig.clk.Advance(4 * time.Minute)
	again := rig.ok(rig.messages(body))
	require.Equal(t, again.int(accUsageInput), again.int(accUsageRead), "the server refreshed the entry it read at 4 minutes")
	assert.InEpsilon(t, again.int(accUsageRead), again.int(accEstCached), 0.1,
		"8 minutes after it was written, 4 after it was read, the prefix is predicted cached")
}

// The server looks back at most 20 blocks before a breakpoint for a cached
// prefix; so does the prediction. A system prompt cached by one call is
// read by a breakpoint 20 blocks after it, not by one 21 blocks after.
func TestPromptCacheLookbackIsTwentyBlocks(t *testing.T) {
	for _, after := range []int{20, 21} {
		t.Run(fmt.Sprint(after, " blocks after"), func(t *testing.T) {
			rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
			system := accWords("system", 1500)
			rig.ok(rig.messages(accRequest("claude-sonnet-4-5", 256, []accBlock{accMarked(accText(system), "")},
				accTurn{Role: "user", Content: []accBlock{accText(accWords("question", 20))}})))

			var blocks []accBlock
			for i := range after {
				blocks = append(blocks, accText(accWords(fmt.Sprint("part", i), 10)))
			}
			blocks[after-1] = accMarked(blocks[after-1], "")
			c := rig.ok(rig.messages(accRequest("claude-sonnet-4-5", 256, []accBlock{accText(system)},
				accTurn{Role: "user", Content: blocks})))
			if after <= 20 {
				require.Positive(t, c.int(accUsageRead), "the server found the system prompt")
				assert.InEpsilon(t, c.int(accUsageRead), c.int(accEstCached), 0.1)
				return
			}
			require.Zero(t, c.int(accUsageRead), "the system prompt is beyond the server's lookback")
			assert.Zero(t, c.int(accEstCached), "and beyond the prediction's")
		})
	}
}

// A prefix shorter than the model's minimum cacheable length (1,024 tokens;
// 2,048 for Haiku) is not written, so it is not predicted cached; one as
// long is.
func TestPromptCacheShortPrefixIsNotPredictedCached(t *testing.T) {
	tests := []struct {
		model         string
		system, turn  int // tokens
		systemCached  bool
		minimumReason string
	}{
		{"claude-sonnet-4-5", 600, 600, false, "under Sonnet's 1,024"},
		{"claude-sonnet-4-5", 1300, 100, true, "over Sonnet's 1,024"},
		{"claude-haiku-4-5", 1300, 1000, false, "over Sonnet's minimum but under Haiku's 2,048"},
		{"claude-haiku-4-5", 2300, 100, true, "over Haiku's 2,048"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s %d tokens", tc.model, tc.system), func(t *testing.T) {
			rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
			system := []accBlock{accMarked(accText(accWords("system", tc.system)), "")}
			turn := func(seed string) accTurn {
				return accTurn{Role: "user", Content: []accBlock{accMarked(accText(accWords(seed, tc.turn)), "")}}
			}
			first := rig.ok(rig.messages(accRequest(tc.model, 256, system, turn("first"))))
			require.Positive(t, first.int(accUsageCreated), "the whole first prompt is long enough to be written")
			// The same system prompt, another question.
			c := rig.ok(rig.messages(accRequest(tc.model, 256, system, turn("second"))))
			if !tc.systemCached {
				require.Zero(t, c.int(accUsageRead), "the server did not cache a system prompt %s", tc.minimumReason)
				assert.Zero(t, c.int(accEstCached), "a system prompt %s is not predicted cached", tc.minimumReason)
				return
			}
			require.Equal(t, int64(tc.system), c.int(accUsageRead), "the server cached the system prompt")
			assert.InEpsilon(t, c.int(accUsageRead), c.int(accEstCached), 0.1, "a system prompt %s is predicted cached", tc.minimumReason)
		})
	}
}

// A prediction the server's usage contradicts is forgotten: when the server
// reports no cache read for a prefix predicted read, the next calls are
// charged whole again (and their estimates cover what is counted).
func TestPromptCacheWrongPredictionCorrectsItself(t *testing.T) {
	rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
	// The same account's requests then reach a server that lost its cache
	// (it caches nothing at all).
	cold := tollgatetest.NewServer(accRoomy(tollgatetest.Config{NoPromptCaching: true, Now: rig.clk.Now}))
	t.Cleanup(cold.Close)
	convo := accAgentConvo("claude-sonnet-4-5")
	rig.ok(rig.messages(convo.body(true, "")))

	wrong := rig.ok(rig.to(cold.URL, rig.messages(convo.next(0).body(true, ""))))
	require.Zero(t, wrong.int(accUsageRead))
	require.Positive(t, wrong.int(accEstCached), "a read was predicted")
	assert.Less(t, wrong.int(accEstInput), wrong.int(accCountedIn), "the wrong prediction under-estimated the call")
	for i := 1; i <= 3; i++ {
		c := rig.ok(rig.to(cold.URL, rig.messages(convo.next(i).body(true, ""))))
		assert.Zero(t, c.int(accEstCached), "call %d after the wrong prediction predicts no read", i)
		assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn), "call %d after the wrong prediction covers the count", i)
	}
	assert.Zero(t, rig.budget(accSonnet).CachedPrefixes, "nothing is known cached")
}

// A read the server reports that was not predicted (another process warmed
// the cache) is learned: the next call predicts it.
func TestPromptCacheUnpredictedReadIsLearned(t *testing.T) {
	warm := newAccRig(t, accRoomy(tollgatetest.Config{}))
	convo := accAgentConvo("claude-sonnet-4-5")
	warm.ok(warm.messages(convo.body(true, "")))

	rig := warm.another()
	first := rig.ok(rig.messages(convo.body(true, "")))
	require.Positive(t, first.int(accUsageRead), "the server read what the other Transport wrote")
	assert.Zero(t, first.int(accEstCached), "this Transport knew nothing of it")
	second := rig.ok(rig.messages(convo.next(0).body(true, "")))
	require.Positive(t, second.int(accUsageRead))
	assert.Positive(t, second.int(accEstCached), "the read it was told of is predicted")
	assert.GreaterOrEqual(t, second.int(accEstInput), second.int(accCountedIn), "the estimate covers the count")
}

// OpenAI counts cached prompt tokens like any other: nothing is taken off
// the estimate, whatever cache_control markers the request carries, and
// the input counted is the whole prompt.
func TestPromptCacheOpenAICountsCachedPromptTokens(t *testing.T) {
	rig := newAccRig(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 1_000_000})
	part := func(text string) map[string]any {
		return map[string]any{"type": "text", "text": text, "cache_control": map[string]any{"type": "ephemeral"}}
	}
	body, err := json.Marshal(map[string]any{"model": "gpt-4o", "max_tokens": 100, "messages": []map[string]any{
		{"role": "system", "content": []map[string]any{part(accWords("system", 2000))}},
		{"role": "user", "content": []map[string]any{part(accWords("task", 100))}},
	}})
	require.NoError(t, err)
	var reads int64
	for i := range 3 {
		c := rig.ok(rig.chat(string(body)))
		reads += c.int(accUsageRead)
		assert.Zero(t, c.int(accEstCached), "call %d", i)
		assert.Equal(t, c.int(accUsageInput), c.int(accCountedIn), "call %d: every prompt token counts", i)
		assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn), "call %d", i)
	}
	require.Positive(t, reads, "the server served cached prompt tokens")
	assert.Zero(t, rig.budget(tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"}).CachedPrefixes)
}

// The models whose input limit counts cache reads (Haiku 3.5) are charged
// for them: no read is taken off their estimate, and what is counted is
// the whole prompt. Other models of the same provider are not.
func TestPromptCacheModelsThatCountCacheReadsAreChargedForThem(t *testing.T) {
	for _, tc := range []struct {
		model       string
		countsReads bool
	}{
		{"claude-3-5-haiku-20241022", true},
		{"claude-haiku-4-5", false},
	} {
		t.Run(tc.model, func(t *testing.T) {
			rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
			convo := accAgentConvo(tc.model)
			convo.system = accWords("system", 2500) // over Haiku's minimum
			rig.ok(rig.messages(convo.body(true, "")))
			c := rig.ok(rig.messages(convo.next(0).body(true, "")))
			read := c.int(accUsageRead)
			require.Positive(t, read, "the server read the conversation so far")
			if tc.countsReads {
				assert.Zero(t, c.int(accEstCached), "nothing is taken off the estimate")
				assert.Equal(t, c.int(accUsageInput), c.int(accCountedIn), "the read counts")
				assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn))
				return
			}
			assert.Positive(t, c.int(accEstCached))
			assert.Equal(t, c.int(accUsageInput)-read, c.int(accCountedIn), "the read does not count")
		})
	}
}

// accPrefixCap is how many prefixes a pool remembers
// (promptcache.go's maxCachedPrefixes).
const accPrefixCap = 4096

// A pool remembers a bounded number of prefixes, the least recently used
// dropped first: after many more distinct prefixes than the cap,
// CachedPrefixes is at the cap, the newest are still predicted, the oldest
// are not.
func TestPromptCacheRemembersABoundedNumberOfPrefixes(t *testing.T) {
	clk := fakeclock.New(accEpoch)
	rig := newAccRigOn(t, clk, accCacheWriter{})
	// Each request has four breakpoints, on prefixes no other request has.
	request := func(i int) string {
		system := []accBlock{accMarked(accText(accWords(fmt.Sprint("system", i), 250)), "")}
		turn := accTurn{Role: "user"}
		for j := range 3 {
			turn.Content = append(turn.Content, accMarked(accText(fmt.Sprint("part ", j)), ""))
		}
		return accRequest("claude-sonnet-4-5", 16, system, turn)
	}
	const calls = accPrefixCap/4 + 100
	for i := range calls {
		rig.quiet(rig.messages(request(i)))
		if i%64 == 0 || i == calls-1 {
			require.LessOrEqual(t, rig.budget(accSonnet).CachedPrefixes, accPrefixCap, "after %d calls", i+1)
		}
	}
	assert.Equal(t, accPrefixCap, rig.budget(accSonnet).CachedPrefixes, "the cap is reached")
	rig.spans.Reset()
	newest := rig.ok(rig.messages(request(calls - 1)))
	assert.Positive(t, newest.int(accEstCached), "the newest prefixes are remembered")
	oldest := rig.ok(rig.messages(request(1))) // the first call's were never remembered: the bytes per token were not known yet
	assert.Zero(t, oldest.int(accEstCached), "the oldest were dropped")
}

// accCacheWriter is a server that reports every request's prompt written
// to its cache (one token a byte of the body, 10 of them left uncached),
// and never a read.
type accCacheWriter struct{}

func (accCacheWriter) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	tokens := len(body)
	return accJSONResponse(req, http.StatusOK, fmt.Sprintf(
		`{"type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":10,"cache_creation_input_tokens":%d,"cache_read_input_tokens":0,"output_tokens":5}}`,
		tokens-10)), nil
}

// accJSONResponse is a Messages response with roomy Tier-4 limit headers.
func accJSONResponse(req *http.Request, status int, body string) *http.Response {
	h := http.Header{}
	h.Set("content-type", "application/json")
	h.Set("request-id", "req_acc")
	reset := accEpoch.Add(time.Second).Format(time.RFC3339)
	for d, limit := range map[string]int{"requests": 4_000, "input-tokens": 2_000_000, "output-tokens": 400_000} {
		h.Set("anthropic-ratelimit-"+d+"-limit", strconv.Itoa(limit))
		h.Set("anthropic-ratelimit-"+d+"-remaining", strconv.Itoa(limit))
		h.Set("anthropic-ratelimit-"+d+"-reset", reset)
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: req, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
}

// ---- Bad input ----

// accOddRequest is a request the prompt-cache estimate cannot trust: the
// odd body (sent after a first call that cached the conversation's system
// prompt) and the same request without any cache_control.
type accOddRequest struct {
	name       string
	odd, plain func(c *accConvo) string
	status     int // the server's answer to the odd request
}

// accCheckOddRequest sends tc's odd request after a first call of a
// conversation, and the plain one to a twin that learned the same: the odd
// request reaches the server byte for byte, nothing panics, and its input
// estimate errs high: at least the plain request's, with no read predicted.
func accCheckOddRequest(t *testing.T, tc accOddRequest) {
	t.Helper()
	rig := newAccRig(t, accRoomy(tollgatetest.Config{}))
	twin := newAccRig(t, accRoomy(tollgatetest.Config{}))
	convo := accAgentConvo("claude-sonnet-4-5")
	rig.ok(rig.messages(convo.body(true, "")))
	twin.ok(twin.messages(convo.body(false, "")))

	convo.next(0)
	odd := tc.odd(convo)
	c := rig.do(rig.messages(odd))
	require.Equal(t, tc.status, c.status, "the server's answer: %s", c.body)
	sent := rig.base.sent()
	assert.Equal(t, []byte(odd), sent[len(sent)-1], "the request reaches the server unchanged")
	plain := twin.ok(twin.messages(tc.plain(convo)))
	assert.Zero(t, c.int(accEstCached), "no cache read is predicted for it")
	assert.GreaterOrEqual(t, c.int(accEstInput), plain.int(accEstInput),
		"its estimate is at least that of the same request without cache_control")
}

// accMarkAll is the conversation's request with cache_control asking ttl on
// its system block and on every block of its last n turns.
func accMarkAll(c *accConvo, n int, ttl string) string {
	turns := append([]accTurn(nil), c.turns...)
	for i := len(turns) - n; i < len(turns); i++ {
		content := make([]accBlock, len(turns[i].Content))
		for j, b := range turns[i].Content {
			content[j] = accMarked(b, ttl)
		}
		turns[i].Content = content
	}
	return accRequest(c.model, c.maxTokens, []accBlock{accMarked(accText(c.system), ttl)}, turns...)
}

// accSplitNewest returns a copy of the conversation whose newest turn is
// split in two blocks.
func accSplitNewest(c *accConvo) *accConvo {
	out := *c
	out.turns = append([]accTurn(nil), c.turns...)
	newest := &out.turns[len(out.turns)-1]
	text := newest.Content[len(newest.Content)-1]["text"].(string)
	half := strings.LastIndexByte(text[:len(text)/2], ' ')
	newest.Content = append(append([]accBlock(nil), newest.Content[:len(newest.Content)-1]...),
		accText(text[:half]), accText(text[half+1:]))
	return &out
}

// accWithToolTurns is the conversation with a tool call and its result
// appended; result is the tool_result block's content.
func accWithToolTurns(c *accConvo, result []accBlock) string {
	turns := append(append([]accTurn(nil), c.turns...),
		accTurn{Role: "assistant", Content: []accBlock{{"type": "tool_use", "id": "toolu_1", "name": "read", "input": map[string]any{"path": "main.go"}}}},
		accTurn{Role: "user", Content: []accBlock{{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}}})
	return accRequest(c.model, c.maxTokens, []accBlock{accText(c.system)}, turns...)
}

// Requests whose cache_control the server refuses (more than 4
// breakpoints) or does not take as breakpoints (inside a tool_result) go
// through unchanged and are charged no less than without cache_control.
func TestPromptCacheOddBreakpointsErrHigh(t *testing.T) {
	for _, tc := range []accOddRequest{
		{
			name: "more than 4 breakpoints",
			odd:  func(c *accConvo) string { return accMarkAll(accSplitNewest(c), 3, "") }, // system + 4 blocks
			plain: func(c *accConvo) string {
				return accSplitNewest(c).body(false, "")
			},
			status: http.StatusBadRequest,
		},
		{
			name: "cache_control inside a tool_result",
			odd: func(c *accConvo) string {
				return accWithToolTurns(c, []accBlock{accMarked(accText(accWords("file", 300)), "")})
			},
			plain: func(c *accConvo) string {
				return accWithToolTurns(c, []accBlock{accText(accWords("file", 300))})
			},
			status: http.StatusOK, // the server does not take it as a breakpoint either
		},
	} {
		t.Run(tc.name, func(t *testing.T) { accCheckOddRequest(t, tc) })
	}
}

// ---- Benchmark ----

// The per-call cost of the prompt-cache estimate, on an agent's 30-turn
// conversation (a 6,000-token system prompt, replies and tool results,
// cache_control on the system prompt and the newest turn): the same
// request with and without cache_control through Budget and Observe, so
// that the difference is what the cache estimate costs (reading the blocks,
// the prediction, learning from the usage).
func BenchmarkPromptCacheEstimate(b *testing.B) {
	convo := &accConvo{model: "claude-sonnet-4-5", maxTokens: 8192, system: accWords("system", 6000)}
	convo.say("user", accWords("task", 200))
	for i := range 30 {
		convo.say("assistant", accWords(fmt.Sprint("reply", i), 100+i*17%500)).
			say("user", accWords(fmt.Sprint("result", i), 300+i*53%1700))
	}
	for _, side := range []struct {
		name   string
		marked bool
	}{{"cache_control", true}, {"none", false}} {
		b.Run(side.name, func(b *testing.B) {
			body := []byte(convo.body(side.marked, ""))
			// The usage of a call that read all but its newest turn.
			usage := `{"type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":0,` +
				`"cache_creation_input_tokens":700,"cache_read_input_tokens":` + strconv.Itoa(len(body)/5-700) + `,"output_tokens":300}}`
			s := tollgate.NewState()
			rt := tollgate.Chain(accStatic(usage), tollgate.Budget(s), tollgate.Observe(s))
			ctx := context.Background()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1:1/v1/messages", bytes.NewReader(body))
				req.Header.Set("anthropic-version", "2023-06-01")
				resp, err := rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		})
	}
}

// accStatic answers every request with the same Messages response, under
// limits no benchmark comes near.
type accStatic string

func (s accStatic) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	resp := accJSONResponse(req, http.StatusOK, string(s))
	reset := time.Now().Add(time.Second).UTC().Format(time.RFC3339)
	for _, d := range []string{"requests", "input-tokens", "output-tokens"} {
		resp.Header.Set("anthropic-ratelimit-"+d+"-limit", "100000000")
		resp.Header.Set("anthropic-ratelimit-"+d+"-remaining", "99999000")
		resp.Header.Set("anthropic-ratelimit-"+d+"-reset", reset)
	}
	return resp, nil
}

// Requests whose cache_control the server refuses — an unknown ttl, a
// breakpoint on a thinking block — and bodies the estimator cannot parse go
// through unchanged and are charged no less than without cache_control:
// no cache read is predicted for a request the server will not read the
// cache for.
func TestPromptCacheOddRequestsErrHigh(t *testing.T) {
	for _, tc := range []accOddRequest{
		{
			name:   "an unknown ttl",
			odd:    func(c *accConvo) string { return c.body(true, "2h") },
			plain:  func(c *accConvo) string { return c.body(false, "") },
			status: http.StatusBadRequest,
		},
		{
			name: "a 1h breakpoint after a 5m one",
			odd: func(c *accConvo) string {
				// The system block's (the last in the body, whose keys are sorted) asks 5m.
				b := c.body(true, "1h")
				i := strings.LastIndex(b, `"ttl":"1h"`)
				return b[:i] + `"ttl":"5m"` + b[i+len(`"ttl":"1h"`):]
			},
			plain:  func(c *accConvo) string { return c.body(false, "") },
			status: http.StatusBadRequest,
		},
		{
			name: "cache_control on an empty text block",
			odd: func(c *accConvo) string {
				return accWithEmptyBlock(c, accMarked(accText(""), ""))
			},
			plain: func(c *accConvo) string {
				return accWithEmptyBlock(c, accText(""))
			},
			status: http.StatusBadRequest,
		},
		{
			name: "cache_control on a thinking block",
			odd: func(c *accConvo) string {
				return accWithThinkingTurn(c, accMarked(accThinking(), ""))
			},
			plain: func(c *accConvo) string {
				return accWithThinkingTurn(c, accThinking())
			},
			status: http.StatusBadRequest,
		},
		{
			name:   "a body cut short",
			odd:    func(c *accConvo) string { b := c.body(true, ""); return b[:len(b)-1] },
			plain:  func(c *accConvo) string { return c.body(false, "") },
			status: http.StatusBadRequest,
		},
		{
			name: "a body with a stray comma",
			odd: func(c *accConvo) string {
				return strings.Replace(c.body(true, ""), `"messages":[`, `"messages":[,`, 1)
			},
			plain:  func(c *accConvo) string { return c.body(false, "") },
			status: http.StatusBadRequest,
		},
	} {
		t.Run(tc.name, func(t *testing.T) { accCheckOddRequest(t, tc) })
	}
}

func accThinking() accBlock {
	return accBlock{"type": "thinking", "thinking": accWords("thought", 200), "signature": "c2lnbmF0dXJl"}
}

// accWithThinkingTurn is the conversation with an assistant turn that
// begins with thinking, and a user turn after it.
func accWithThinkingTurn(c *accConvo, thinking accBlock) string {
	turns := append(append([]accTurn(nil), c.turns...),
		accTurn{Role: "assistant", Content: []accBlock{thinking, accText(accWords("answer", 100))}},
		accTurn{Role: "user", Content: []accBlock{accText(accWords("more", 50))}})
	return accRequest(c.model, c.maxTokens, []accBlock{accText(c.system)}, turns...)
}

// accWithEmptyBlock is the conversation's request, unmarked, with empty
// appended to its newest turn.
func accWithEmptyBlock(c *accConvo, empty accBlock) string {
	turns := append([]accTurn(nil), c.turns...)
	newest := &turns[len(turns)-1]
	newest.Content = append(append([]accBlock(nil), newest.Content...), empty)
	return accRequest(c.model, c.maxTokens, []accBlock{accText(c.system)}, turns...)
}

// accSharedPrefix starts a call of an agent's first turn through a rig
// told tier-1 limits, holds it at the base (in flight, its response not
// begun), and starts a second call with the same system prompt and
// another task, under ctx; it returns both calls and what releases the
// base.
func accSharedPrefix(t *testing.T, ctx context.Context) (rig *accRig, first, second <-chan rtResult, release func()) {
	t.Helper()
	rig = newAccRig(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens}),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}))
	arrived, release := rig.base.hold()
	t.Cleanup(release)
	convo := accAgentConvo("claude-sonnet-4-5")
	first = rig.start(rig.messages(convo.body(true, "")))
	rig.awaitSent(arrived, 1)
	other := &accConvo{model: convo.model, maxTokens: convo.maxTokens, system: convo.system}
	second = rig.start(rig.messages(other.say("user", accWords("another task", 100)).body(true, "")).WithContext(ctx))
	require.True(t, bgtEventually(func() bool {
		b := rig.budget(accSonnet)
		return b.InFlight == 1 && b.Waiting == 1 && len(rig.clk.Pending()) == 1
	}), "the second call waits though the budget covers it")
	// At most the refill of what the wait saves: the 2,000-token system
	// prompt at 30,000 input tokens a minute is 4 s.
	assert.InDelta(t, float64(4*time.Second), float64(rig.clk.Pending()[0]), float64(2*time.Second))
	return rig, first, second, release
}

// accEnded waits for the call to end, reads its body and returns it with
// the span it ended (the newest call span).
func accEnded(t *testing.T, rig *accRig, done <-chan rtResult) accCall {
	t.Helper()
	var r rtResult
	select {
	case r = <-done:
	case <-time.After(accGuard):
		t.Fatal("the call did not end")
	}
	require.NoError(t, r.err)
	body := accReadAll(t, r.resp)
	spans := rig.callSpans()
	return accCall{t: t, status: r.resp.StatusCode, body: body, span: accAttrs(spans[len(spans)-1].Attributes)}
}

// Calls sent together all pay for the prefix they share: the server makes
// a cache entry usable only once the response that writes it has begun. So
// a call whose prompt's prefix an attempt in flight is writing waits for
// that attempt, as Anthropic's docs advise, and then goes charged only for
// what the cache does not hold.
func TestPromptCacheCallWaitsForTheWriteInFlight(t *testing.T) {
	rig, first, second, release := accSharedPrefix(t, context.Background())
	release()
	w := accEnded(t, rig, first)
	require.Equal(t, http.StatusOK, w.status)
	require.Positive(t, w.int(accUsageCreated), "the first call wrote the system prompt")
	require.True(t, bgtEventually(func() bool { return rig.budget(accSonnet).Waiting == 0 }),
		"the second call goes once the first has ended")
	c := accEnded(t, rig, second)
	require.Equal(t, http.StatusOK, c.status)
	require.Positive(t, c.int(accUsageRead), "the server read the system prompt from its cache")
	assert.InEpsilon(t, c.int(accUsageRead), c.int(accEstCached), 0.1, "and the estimate left it out")
	assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn))
	assert.Zero(t, rig.srv.Stats().RateLimited)
}

// The wait is worth at most what it saves: once the input bucket would
// have refilled the tokens it spares, the call goes, charged in full.
func TestPromptCacheWaitForTheWriteIsBounded(t *testing.T) {
	rig, first, second, release := accSharedPrefix(t, context.Background())
	rig.clk.AdvanceToNext()
	require.True(t, bgtEventually(func() bool { return rig.budget(accSonnet).InFlight == 2 }),
		"the second call is sent while the first is still in flight")
	release()
	accEnded(t, rig, first)
	c := accEnded(t, rig, second)
	require.Equal(t, http.StatusOK, c.status)
	assert.Zero(t, c.int(accEstCached), "nothing is predicted read")
	assert.GreaterOrEqual(t, c.int(accEstInput), c.int(accCountedIn))
	assert.Zero(t, rig.srv.Stats().RateLimited)
}

// A call that cannot wait that long (WithMaxQueueWait, or its context's
// deadline) does not wait for the write at all: it goes at once, charged
// in full, rather than give up waiting for what it could have had.
func TestPromptCacheNoWaitForTheWriteBeyondTheQueueWaitCap(t *testing.T) {
	rig := newAccRig(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens}),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}),
		tollgate.WithMaxQueueWait(time.Second))
	arrived, release := rig.base.hold()
	t.Cleanup(release)
	convo := accAgentConvo("claude-sonnet-4-5")
	first := rig.start(rig.messages(convo.body(true, "")))
	rig.awaitSent(arrived, 1)
	other := &accConvo{model: convo.model, maxTokens: convo.maxTokens, system: convo.system}
	second := rig.start(rig.messages(other.say("user", accWords("another task", 100)).body(true, "")))
	rig.awaitSent(arrived, 1)
	release()
	accEnded(t, rig, first)
	c := accEnded(t, rig, second)
	require.Equal(t, http.StatusOK, c.status)
	assert.Zero(t, c.int(accEstCached))
}

// A call waiting for a write in flight ends at once when its context does,
// holding nothing; the writer goes on.
func TestPromptCacheWaitForTheWriteEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	rig, first, second, release := accSharedPrefix(t, ctx)
	cancel()
	select {
	case r := <-second:
		require.ErrorIs(t, r.err, context.Canceled)
	case <-time.After(accGuard):
		t.Fatal("the cancelled call did not return")
	}
	b := rig.budget(accSonnet)
	assert.Zero(t, b.Waiting, "the cancelled call left the queue")
	assert.Equal(t, 1, b.InFlight)
	release()
	assert.Equal(t, http.StatusOK, accEnded(t, rig, first).status)
	assert.Equal(t, 1, rig.srv.Stats().Requests, "the cancelled call was never sent")
}
