package usage

import (
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordSink records what a Reader tells it, in order.
type recordSink struct{ calls []string }

func (s *recordSink) FirstByte()        { s.calls = append(s.calls, "first byte") }
func (s *recordSink) Output()           { s.calls = append(s.calls, "output") }
func (s *recordSink) Done(Usage, error) { s.calls = append(s.calls, "done") }

// TestOutput pins when a stream counts as under way: at its first content,
// not at message_start, a role-only chunk or an error.
func TestOutput(t *testing.T) {
	for _, tc := range []struct {
		name, contentType, body string
		want                    []string
	}{
		{"anthropic delta", "text/event-stream", anthropicStream, []string{"first byte", "output", "done"}},
		{"anthropic overloaded before any content", "text/event-stream", events(
			`event: message_start`,
			`data: {"type":"message_start","message":{"id":"msg_2","usage":{"input_tokens":10,"output_tokens":1}}}`,
			``,
			`event: content_block_start`,
			`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
			``,
			`event: error`,
			`data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
			``,
		), []string{"first byte", "done"}},
		{"anthropic delta without event lines", "text/event-stream", events(
			`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}`, ``,
		), []string{"first byte", "output", "done"}},
		{"chat role chunk only", "text/event-stream", events(
			`data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`, ``,
			`data: {"error":{"message":"boom","type":"server_error"}}`, ``,
		), []string{"first byte", "done"}},
		{"chat content", "text/event-stream", chatStream, []string{"first byte", "output", "done"}},
		{"chat tool call", "text/event-stream", events(
			`data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}`, ``,
		), []string{"first byte", "output", "done"}},
		{"responses text", "text/event-stream", responsesStream, []string{"first byte", "output", "done"}},
		{"JSON body", "application/json", `{"usage":{"output_tokens":3}}`, []string{"first byte", "done"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &recordSink{}
			r := NewReader(io.NopCloser(strings.NewReader(tc.body)), tc.contentType, s)
			_, err := io.ReadAll(r)
			require.NoError(t, err)
			require.NoError(t, r.Close())
			assert.Equal(t, tc.want, s.calls)
		})
	}
}
