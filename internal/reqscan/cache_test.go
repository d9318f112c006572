package reqscan

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// agentTurn builds an Anthropic request as agent harnesses send them: a
// system prompt with a breakpoint, then turns, the newest user turn's last
// block with one. Keys come in the Go SDK's order: messages before system.
func agentTurn(turns int, ttl string) string {
	marker := `{"type":"ephemeral"}`
	if ttl != "" {
		marker = `{"type":"ephemeral","ttl":"` + ttl + `"}`
	}
	var msgs []string
	for i := range turns {
		cc := ""
		if i == turns-1 {
			cc = `,"cache_control":` + marker
		}
		msgs = append(msgs,
			fmt.Sprintf(`{"role":"user","content":[{"type":"text","text":"task %d"%s}]}`, i, cc))
		if i < turns-1 {
			msgs = append(msgs, fmt.Sprintf(`{"role":"assistant","content":[{"type":"text","text":"reply %d"}]}`, i))
		}
	}
	return `{"max_tokens":8192,"messages":[` + strings.Join(msgs, ",") + `],"model":"claude-sonnet-4-5",` +
		`"system":[{"type":"text","text":"You are a coding agent.","cache_control":` + marker + `}],` +
		`"tools":[{"name":"read","description":"Reads.","input_schema":{"type":"object"}}]}`
}

func blocksOf(t *testing.T, body string) Info {
	t.Helper()
	return Read(newRequest(t, "POST", "https://api.anthropic.com/v1/messages", body))
}

func TestBlocks(t *testing.T) {
	one := blocksOf(t, agentTurn(1, ""))
	require.Len(t, one.Blocks, 3, "tool, system, the one message")
	assert.Equal(t, one.PromptBytes, one.Blocks[2].Bytes, "the blocks cover the whole prompt")
	assert.False(t, one.Blocks[0].Breakpoint, "tools come first in cache order, whatever the key order")
	assert.True(t, one.Blocks[1].Breakpoint)
	assert.Equal(t, 5*time.Minute, one.Blocks[1].TTL)
	assert.True(t, one.Blocks[2].Breakpoint)

	// The next turn: the marker moved to the newest turn, but the prefix up
	// to the first message is the same.
	three := blocksOf(t, agentTurn(3, "1h"))
	require.Len(t, three.Blocks, 7)
	assert.Equal(t, one.Blocks[2].Prefix, three.Blocks[2].Prefix, "a marker that moved changes no prefix")
	assert.Equal(t, one.Blocks[2].Bytes, three.Blocks[2].Bytes)
	assert.False(t, three.Blocks[2].Breakpoint)
	assert.Equal(t, time.Hour, three.Blocks[6].TTL)
	for i := 1; i < len(three.Blocks); i++ {
		assert.NotEqual(t, three.Blocks[i-1].Prefix, three.Blocks[i].Prefix)
		assert.Greater(t, three.Blocks[i].Bytes, three.Blocks[i-1].Bytes)
	}

	// The same text under another role is another prompt.
	other := blocksOf(t, strings.Replace(agentTurn(1, ""), `"role":"user"`, `"role":"assistant"`, 1))
	assert.NotEqual(t, one.Blocks[2].Prefix, other.Blocks[2].Prefix)
}

func TestBlocksBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		blocks     bool
		ttl        time.Duration
	}{
		{"no breakpoint", `{"model":"m","system":"Be terse.","messages":[{"role":"user","content":"hi"}]}`, false, 0},
		// What the provider refuses is predicted nothing from the cache.
		{"unknown ttl", agentTurn(1, "7d"), false, 0},
		{"not an object", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","cache_control":"yes"}]}]}`, false, 0},
		{"1h after 5m", `{"model":"m","system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}],` +
			`"messages":[{"role":"user","content":[{"type":"text","text":"y","cache_control":{"type":"ephemeral","ttl":"1h"}}]}]}`, false, 0},
		{"5m after 1h", `{"model":"m","system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"1h"}}],` +
			`"messages":[{"role":"user","content":[{"type":"text","text":"y","cache_control":{"type":"ephemeral"}}]}]}`, true, 5 * time.Minute},
		{"empty text", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"","cache_control":{"type":"ephemeral"}}]}]}`, false, 0},
		{"thinking", `{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s","cache_control":{"type":"ephemeral"}}]}]}`, false, 0},
		{"five breakpoints", `{"model":"m","messages":[{"role":"user","content":[` +
			strings.Repeat(`{"type":"text","text":"x","cache_control":{"type":"ephemeral"}},`, 4) +
			`{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]}]}`, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := blocksOf(t, tc.body)
			if !tc.blocks {
				assert.Nil(t, info.Blocks)
				return
			}
			require.NotEmpty(t, info.Blocks)
			last := info.Blocks[len(info.Blocks)-1]
			assert.True(t, last.Breakpoint)
			assert.Equal(t, tc.ttl, last.TTL)
		})
	}
}
