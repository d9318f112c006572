package reqscan

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzRead checks what must hold for any body: no panic, a prompt never
// longer than its JSON, no negative counts, cache blocks in order and
// within the prompt, at most MaxBreakpoints, the caller's body untouched.
func FuzzRead(f *testing.F) {
	f.Add([]byte(anthropicRequest))
	f.Add([]byte(chatRequest))
	f.Add([]byte(`{"model":"gpt-4.1","instructions":"Be nice.","input":[{"role":"user","content":[{"type":"input_text","text":"Hi"},{"type":"input_image","image_url":"data:,"}]}],"max_output_tokens":50}`))
	f.Add([]byte(`{"model":"m","input":["a",[1,2]]}`))
	f.Add([]byte(`{"model":"m\u0031","messages":[{"role":"user","content":"\u00e9\n\ud83d\ude00x"}]}`))
	f.Add([]byte(`{"messages":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{"text":"x"}]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`))
	f.Add([]byte(`{"model":"x",`))
	f.Add([]byte(agentTurn(3, "1h")))
	f.Add([]byte(`{"tools":[{"name":"t","cache_control":{"type":"ephemeral","ttl":"5m"}}],"system":"s","messages":[{"role":"user","content":"x"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := &http.Request{
			Method:        http.MethodPost,
			URL:           &url.URL{Scheme: "https", Host: "api.example.com", Path: "/v1/messages"},
			Header:        http.Header{},
			Body:          io.NopCloser(bytes.NewReader(body)),
			GetBody:       func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
			ContentLength: int64(len(body)),
		}
		info := Read(req)
		require.GreaterOrEqual(t, info.PromptBytes, int64(0))
		require.LessOrEqual(t, info.PromptBytes, int64(len(body)), "prompt text is never longer than its JSON")
		require.GreaterOrEqual(t, info.MaxTokens, int64(0))
		require.GreaterOrEqual(t, info.Images, 0)
		marks := 0
		var last int64
		for _, b := range info.Blocks {
			require.GreaterOrEqual(t, b.Bytes, last, "blocks' bytes only grow")
			last = b.Bytes
			if b.Breakpoint {
				marks++
			}
		}
		require.LessOrEqual(t, last, info.PromptBytes, "the blocks are within the prompt")
		require.LessOrEqual(t, marks, MaxBreakpoints)
		if len(info.Blocks) > 0 {
			require.Positive(t, marks, "blocks only for a prompt with breakpoints")
		}
		got, err := io.ReadAll(req.Body)
		require.NoError(t, err)
		require.Equal(t, body, got, "the caller's body is untouched")
	})
}
