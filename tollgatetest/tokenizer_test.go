package tollgatetest_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestPromptTokenRules(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{})
	rc := raw(t, srv)
	count := func(body string) int {
		resp, b := rc.post("/v1/messages/count_tokens", body)
		require.Equal(t, 200, resp.StatusCode, b)
		var r struct {
			InputTokens int `json:"input_tokens"`
		}
		require.NoError(t, json.Unmarshal([]byte(b), &r))
		return r.InputTokens
	}
	// system (2) + text block (2) + image (0) + thinking (1) + tool_use name (1) and input JSON
	// + tool_result content (2) + tool name, description and schema JSON.
	body := `{"model":"m","system":"be brief","messages":[
		{"role":"user","content":[{"type":"text","text":"hello there"},{"type":"image","source":{"type":"base64","data":"AAAA"}}]},
		{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"tool_use","id":"t1","name":"search","input":{"q":"x y"}}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"found it"}]}]}],
		"tools":[{"name":"search","description":"Search the web","input_schema":{"type":"object"}}]}`
	want := 2 + 2 + 1 + 1 + tollgatetest.CountTokens(`{"q":"x y"}`) + 2 +
		1 + tollgatetest.CountTokens("Search the web") + tollgatetest.CountTokens(`{"type":"object"}`)
	assert.Equal(t, want, count(body))
	assert.Equal(t, 2, count(`{"model":"m","system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":""}]}`))

	// OpenAI: content parts, tool calls, tools.
	resp, b := rc.post("/v1/chat/completions", `{"model":"gpt-4o","messages":[
		{"role":"user","content":[{"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"x"}}]},
		{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"search","arguments":"{\"q\":\"x y\"}"}}]},
		{"role":"tool","tool_call_id":"c","content":"found it"}],
		"tools":[{"type":"function","function":{"name":"search","description":"Search the web","parameters":{"type":"object"}}}]}`)
	require.Equal(t, 200, resp.StatusCode, b)
	var c struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		}
	}
	require.NoError(t, json.Unmarshal([]byte(b), &c))
	assert.Equal(t, 2+1+tollgatetest.CountTokens(`{"q":"x y"}`)+2+
		1+tollgatetest.CountTokens("Search the web")+tollgatetest.CountTokens(`{"type":"object"}`), c.Usage.PromptTokens)
}
