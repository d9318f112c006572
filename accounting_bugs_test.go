package tollgate_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Tests of issue 12's accounting that fail on the code as it is: each
// names the behaviour it asserts; the report of the tests-accounting
// branch diagnoses each failure. Merge this file with the fixes.

// Where max_tokens is reserved, the server takes it when the request is
// admitted and gives back what the reply did not use when it ends. The
// remaining a response reports at its start counts the whole max_tokens;
// once the response has ended, the budget must know the unused part is
// back: its level is at least that reading plus max_tokens less the
// output, and a next call that fits on the server goes at once.
func TestOutputReservedUnusedMaxTokensAreGivenBackWhenTheResponseEnds(t *testing.T) {
	tests := []struct {
		name     string
		cfg      tollgatetest.Config
		dim      tollgate.Dimension
		key      tollgate.Key
		request  func(rig *accRig, maxTokens int) *http.Request
		maxToken int
		next     int // the next call's max_tokens: it fits on the server
		warm     bool
	}{
		{
			name: "anthropic, a call after the first", dim: tollgate.OutputTokens, key: accSonnet,
			cfg: accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens, RoundRemaining: tollgatetest.Exact}),
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "call"))
			},
			maxToken: 4096, next: 5000, warm: true,
		},
		{
			name: "anthropic, the first call", dim: tollgate.OutputTokens, key: accSonnet,
			cfg: accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens, RoundRemaining: tollgatetest.Exact}),
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "call"))
			},
			maxToken: 4096, next: 5000,
		},
		{
			name: "openai, a call after the first", dim: tollgate.Tokens,
			key: tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"},
			cfg: tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 10_000},
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.chat(`{"model":"gpt-4o","max_tokens":` + strconv.Itoa(maxTokens) + `,"messages":[{"role":"user","content":"Hello there"}]}`)
			},
			maxToken: 4000, next: 6000, warm: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rig := newAccRig(t, tc.cfg, tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens))
			if tc.warm {
				rig.ok(tc.request(rig, tc.maxToken))
				rig.clk.Advance(time.Minute) // every bucket full again, on both sides
			}
			c := rig.ok(tc.request(rig, tc.maxToken))
			var reading int64
			if tc.dim == tollgate.Tokens {
				reading = c.int("tollgate.ratelimit.tokens.remaining")
			} else {
				reading = c.int("tollgate.ratelimit.output_tokens.remaining")
			}
			out := c.int(accCountedOut)
			require.Less(t, out, int64(tc.maxToken), "the reply used less than max_tokens")
			level := rig.budget(tc.key).Dimensions[tc.dim].Level
			assert.GreaterOrEqual(t, level, float64(reading+int64(tc.maxToken)-out),
				"the level knows the %d tokens of max_tokens the reply did not use are back (the server's reading at the start of the response was %d)",
				int64(tc.maxToken)-out, reading)

			left := rig.srv.Limits()
			require.GreaterOrEqual(t, max(left.OutputTokens.Remaining, left.Tokens.Remaining), tc.next+100, "the next call fits on the server")
			r, waits := rig.send(rig.start(tc.request(rig, tc.next)))
			require.NoError(t, r.err)
			accReadAll(t, r.resp)
			assert.Empty(t, waits, "a call that fits on the server goes at once")
		})
	}
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
