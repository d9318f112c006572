package reqscan

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tollgate-go/tollgate/internal/testio"
)

func newRequest(t testing.TB, method, url, body string) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	return req
}

const (
	anthropicRequest = `{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
 "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral"}}],
 "messages":[
  {"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}}]},
  {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"look","input":{"q":"x"}}]},
  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"found it"},{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0x"}}]}
 ],
 "tools":[{"name":"look","description":"Looks.","input_schema":{"type":"object"}}]}`
	// You are terse.(14) What is this?(13) look(4) {"q":"x"}(9) found it(8) look(4) Looks.(6) {"type":"object"}(17)
	anthropicRequestPromptBytes = 75

	chatRequest = `{"model":"gpt-4o","max_completion_tokens":300,"stream":false,"messages":[
 {"role":"system","content":"Be brief."},
 {"role":"user","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
 {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
 {"role":"tool","tool_call_id":"call_1","content":"ok"}
],"tools":[{"type":"function","function":{"name":"f","description":"Does f.","parameters":{"type":"object"}}}],"stream_options":{"include_usage":true}}`
	// Be brief.(9) Describe(8) f(1) {"a":1}(7) ok(2) f(1) Does f.(7) {"type":"object"}(17)
	chatRequestPromptBytes = 52
)

func TestReadInfo(t *testing.T) {
	for _, tc := range []struct {
		name, method, url, body string
		header                  http.Header
		want                    Info
	}{
		{
			"anthropic messages", "POST", "https://api.anthropic.com/v1/messages", anthropicRequest, nil,
			Info{Model: "claude-sonnet-4-5", MaxTokens: 1024, Stream: true, PromptBytes: anthropicRequestPromptBytes, Images: 2},
		},
		{
			"anthropic count_tokens", "POST", "https://api.anthropic.com/v1/messages/count_tokens",
			`{"model":"claude-opus-4-1","messages":[{"role":"user","content":"Hello, world"}]}`, nil,
			Info{Model: "claude-opus-4-1", PromptBytes: 12},
		},
		{
			"openai chat", "POST", "https://api.openai.com/v1/chat/completions", chatRequest, nil,
			Info{Model: "gpt-4o", MaxTokens: 300, PromptBytes: chatRequestPromptBytes, Images: 1},
		},
		{
			"openai chat with max_tokens", "POST", "https://api.openai.com/v1/chat/completions/",
			`{"model":"gpt-4o-mini","max_tokens":77,"stream":true,"messages":[{"role":"user","content":"abcde"}]}`, nil,
			Info{Model: "gpt-4o-mini", MaxTokens: 77, Stream: true, PromptBytes: 5},
		},
		{
			"openai responses", "POST", "https://api.openai.com/v1/responses",
			`{"model":"gpt-4.1","instructions":"Be nice.","input":[{"role":"user","content":[{"type":"input_text","text":"Hi there"},{"type":"input_image","image_url":"data:image/png;base64,AAAA"}]},{"type":"function_call_output","call_id":"c1","output":"42"}],"max_output_tokens":50}`, nil,
			Info{Model: "gpt-4.1", MaxTokens: 50, PromptBytes: 18, Images: 1},
		},
		{
			"openai responses string input", "POST", "https://api.openai.com/v1/responses",
			`{"model":"o3","input":"Tell me a joke"}`, nil,
			Info{Model: "o3", PromptBytes: 14},
		},
		{
			"openai embeddings", "POST", "https://api.openai.com/v1/embeddings",
			`{"model":"text-embedding-3-small","input":["abc","de",[1,2,3]]}`, nil,
			Info{Model: "text-embedding-3-small", PromptBytes: 5},
		},
		{
			"openai legacy completions", "POST", "https://api.openai.com/v1/completions",
			`{"model":"gpt-3.5-turbo-instruct","prompt":"Say hi","max_tokens":5}`, nil,
			Info{Model: "gpt-3.5-turbo-instruct", MaxTokens: 5, PromptBytes: 6},
		},
		{
			"escapes count as the bytes they decode to", "POST", "https://api.anthropic.com/v1/messages",
			`{"model":"m\u0031","messages":[{"role":"user","content":"\u00e9\n\ud83d\ude00x\"\\"}]}`, nil,
			Info{Model: "m1", PromptBytes: 10},
		},
		{
			"anthropic-version header", "POST", "https://llm-gateway.internal/v1/chat/completions",
			`{"model":"claude-sonnet-4-5","messages":[]}`, http.Header{"Anthropic-Version": {"2023-06-01"}},
			Info{Model: "claude-sonnet-4-5"},
		},
		{
			"unknown path on an anthropic host", "GET", "https://api.anthropic.com/v1/models", "", nil,
			Info{},
		},
		{
			"unknown path elsewhere", "POST", "https://example.com/v1/generate", `{"model":"x"}`, nil,
			Info{Model: "x"},
		},
		{
			"assistants thread messages", "POST", "https://api.openai.com/v1/threads/t_1/messages", `{"role":"user","content":"hi"}`, nil,
			Info{},
		},
		{
			"malformed JSON", "POST", "https://api.anthropic.com/v1/messages",
			`{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}`, nil,
			Info{PromptBytes: 87}, // the whole body: an estimate errs on the side of charging more
		},
		{
			"trailing garbage", "POST", "https://api.anthropic.com/v1/messages", `{"model":"a"} {"model":"b"}`, nil,
			Info{PromptBytes: 27},
		},
		{
			"not an object", "POST", "https://api.openai.com/v1/embeddings", `["model"]`, nil,
			Info{PromptBytes: 9},
		},
		{
			"odd value types", "POST", "https://api.anthropic.com/v1/messages",
			`{"model":7,"max_tokens":"many","stream":"yes","messages":[{"role":"user","content":[true,null,{"type":"text","text":{"nested":"abc"}}]}]}`, nil,
			Info{},
		},
		{
			"deep nesting", "POST", "https://api.anthropic.com/v1/messages",
			`{"model":"m","messages":` + strings.Repeat(`[{"content":`, 5000) + `"x"` + strings.Repeat(`}]`, 5000) + `,"max_tokens":3}`, nil,
			Info{Model: "m", MaxTokens: 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, tc.method, tc.url, tc.body)
			for k, v := range tc.header {
				req.Header[k] = v
			}
			got := Read(req)
			got.Blocks = nil // TestBlocks pins them
			assert.Equal(t, tc.want, got)
			if tc.body != "" {
				got, err := io.ReadAll(req.Body)
				require.NoError(t, err)
				assert.Equal(t, tc.body, string(got), "the caller's body is untouched")
			}
		})
	}
}

func TestReadInfoWithoutGetBody(t *testing.T) {
	req := newRequest(t, "POST", "https://api.anthropic.com/v1/messages", "")
	req.Body = io.NopCloser(strings.NewReader(anthropicRequest))
	req.ContentLength = int64(len(anthropicRequest))
	req.Header.Set("Accept", "text/event-stream")
	info := Read(req)
	assert.Equal(t, Info{Stream: true, PromptBytes: int64(len(anthropicRequest))}, info)
	got, err := io.ReadAll(req.Body)
	require.NoError(t, err)
	assert.Equal(t, anthropicRequest, string(got), "the body was not read")

	req.Body = io.NopCloser(strings.NewReader("{}"))
	req.ContentLength = -1
	req.Header.Del("Accept")
	assert.Equal(t, Info{}, Read(req))

	req.GetBody = func() (io.ReadCloser, error) { return nil, errors.New("gone") }
	req.ContentLength = 40
	assert.Equal(t, Info{PromptBytes: 40}, Read(req))

	assert.Equal(t, Info{}, Read(nil))
}

func TestReadInfoClosesItsCopy(t *testing.T) {
	req := newRequest(t, "POST", "https://api.anthropic.com/v1/messages", anthropicRequest)
	var copies []*testio.ChunkReader
	req.GetBody = func() (io.ReadCloser, error) {
		c := &testio.ChunkReader{Data: []byte(anthropicRequest), Next: func() int { return 100 }}
		copies = append(copies, c)
		return c, nil
	}
	info := Read(req)
	assert.Equal(t, "claude-sonnet-4-5", info.Model)
	require.Len(t, copies, 1)
	assert.Equal(t, 1, copies[0].Closed)
}

func TestReadInfoBigBody(t *testing.T) {
	prefix := `{"model":"claude-sonnet-4-5","max_tokens":9,"messages":[{"role":"user","content":[{"type":"image","source":{"data":"x"}},{"type":"text","text":"`
	size := int64(MaxRead + 5<<20)
	body := func() io.Reader {
		return io.MultiReader(strings.NewReader(prefix), &genReader{left: size - int64(len(prefix)) - 4}, strings.NewReader(`"}]}`))
	}
	for _, known := range []bool{true, false} {
		req := newRequest(t, "POST", "https://api.anthropic.com/v1/messages", "")
		req.Body = io.NopCloser(body())
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(body()), nil }
		req.ContentLength = -1
		if known {
			req.ContentLength = size
		}
		info := Read(req)
		assert.Equal(t, Info{Model: "claude-sonnet-4-5", MaxTokens: 9, PromptBytes: size, Images: 1}, info, "content length known: %v", known)
	}
}

// sampleRequest builds an Anthropic request of about size bytes.
func sampleRequest(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"model":"claude-sonnet-4-5","max_tokens":1024,"system":"You are terse.","messages":[`)
	for b.Len() < size {
		b.WriteString(`{"role":"user","content":[{"type":"text","text":"The quick brown fox jumps over the lazy dog.\nIt said \"hi\" and left."}]},`)
		b.WriteString(`{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"look","input":{"q":"x","n":[1,2,3]}}]},`)
		b.WriteString(`{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"found it"}]},`)
	}
	b.WriteString(`{"role":"user","content":"end"}],"tools":[{"name":"look","description":"Looks.","input_schema":{"type":"object"}}]}`)
	return b.Bytes()
}

// genReader produces size bytes of filler (JSON string contents with an
// escape now and then) without holding them.
type genReader struct{ left int64 }

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), g.left))
	for i := range n {
		p[i] = 'a' + byte(i%26)
	}
	if n >= 8 {
		copy(p[n/2:], `\"\\`)
	}
	g.left -= int64(n)
	return n, nil
}

func BenchmarkRead(b *testing.B) {
	body := sampleRequest(100 << 10)
	req, err := http.NewRequest("POST", "https://api.anthropic.com/v1/messages", bytes.NewReader(body))
	require.NoError(b, err)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if Read(req).Model == "" {
			b.Fatal("no model")
		}
	}
}
