package tollgatetest_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// FuzzAnthropicPrompt posts arbitrary Messages bodies, twice (the second
// may read what the first wrote), to a server with caching on: the answer
// is 200 or 400, never a panic, and a 200's usage sums to what
// count_tokens says of the same body.
func FuzzAnthropicPrompt(f *testing.F) {
	for _, seed := range []string{
		`{"model":"claude-sonnet-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","max_tokens":5,"system":[{"type":"text","text":"s s s","cache_control":{"type":"ephemeral","ttl":"1h"}}],` +
			`"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}`,
		`{"model":"m","max_tokens":5,"tools":[{"name":"t","description":"d","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral"}}],` +
			`"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"x","content":[{"type":"text","text":"r","cache_control":{"type":"ephemeral"}}],"cache_control":{"type":"ephemeral","ttl":"5m"}}]}]}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"}],"cache_control":{"type":"ephemeral"}}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[]}],"cache_control":{"type":"ephemeral"}}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[1,"x",null,{"cache_control":7}]}]}`,
		`{"model":"m","max_tokens":5,"system":7,"tools":[null],"messages":[{"role":"user","content":{"cache_control":{}}}]}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"","cache_control":{"type":"ephemeral"}}]}]}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"x","cache_control":{"type":"ephemeral","ttl":null}}]}]}`,
		`{"model":"m","max_tokens":5,"cache_control":"ephemeral","messages":[{"role":"user","content":"a"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		srv := tollgatetest.NewHandler(tollgatetest.Config{OutputTokens: 1, MinCacheableTokens: func(string) int { return 1 }})
		defer srv.Close()
		post := func(path string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, req)
			return w
		}
		var count struct {
			InputTokens *int `json:"input_tokens"`
		}
		c := post("/v1/messages/count_tokens")
		for range 2 {
			w := post("/v1/messages")
			if w.Code != 200 && w.Code != 400 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if w.Code == 400 || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
				continue // a stream, or refused
			}
			var m struct {
				Usage usage `json:"usage"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
				t.Fatalf("reply: %v: %s", err, w.Body)
			}
			if c.Code != 200 || json.Unmarshal(c.Body.Bytes(), &count) != nil || count.InputTokens == nil {
				t.Fatalf("Messages answered 200 but count_tokens %d: %s", c.Code, c.Body)
			}
			u := m.Usage
			if u.InputTokens < 0 || u.CacheCreationInputTokens < 0 || u.CacheReadInputTokens < 0 || u.prompt() != *count.InputTokens {
				t.Fatalf("usage %+v does not sum to %d", u, *count.InputTokens)
			}
		}
	})
}
