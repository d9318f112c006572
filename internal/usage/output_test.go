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
func (s *recordSink) Produced(int64)    {}

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

// producedSink records the totals Produced is told, and whether Output came
// first.
type producedSink struct {
	output      bool
	totals      []int64
	beforeFirst bool // Produced was called before Output
	done        Usage
}

func (s *producedSink) FirstByte() {}
func (s *producedSink) Output()    { s.output = true }
func (s *producedSink) Produced(n int64) {
	s.beforeFirst = s.beforeFirst || !s.output
	s.totals = append(s.totals, n)
}
func (s *producedSink) Done(u Usage, _ error) { s.done = u }

// oneByte reads one byte at a time, so that every Read can tell.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }

// TestProducedCountsTheBytesOfOutputEvents pins what a stream's output
// measure holds: every byte of the events that carried output, named or
// not, and nothing of the others; told as it grows, after Output, and
// reported again in Usage.OutputBytes.
func TestProducedCountsTheBytesOfOutputEvents(t *testing.T) {
	delta := func(text string) string {
		return "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"" + text + "\"}}\n\n"
	}
	chunk := func(text string) string {
		return `data: {"choices":[{"index":0,"delta":{"content":"` + text + `"}}]}` + "\n\n"
	}
	start := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
	end := "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	role := `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n\n"
	for _, tc := range []struct {
		name, body string
		want       int64
	}{
		{"anthropic", start + delta("Hello") + ": ping\n\n" + delta(strings.Repeat("x", 2000)) + end,
			int64(len(delta("Hello")) + len(delta(strings.Repeat("x", 2000))))},
		{"chat chunks", role + chunk("Hi") + chunk("there") + "data: [DONE]\n\n", int64(len(chunk("Hi")) + len(chunk("there")))},
		{"no output", start + end, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &producedSink{}
			r := NewReader(io.NopCloser(oneByte{strings.NewReader(tc.body)}), "text/event-stream", s)
			_, err := io.ReadAll(r)
			require.NoError(t, err)
			assert.Equal(t, tc.want, s.done.OutputBytes)
			assert.False(t, s.beforeFirst, "Produced before Output")
			if tc.want == 0 {
				assert.Empty(t, s.totals)
				return
			}
			require.NotEmpty(t, s.totals)
			assert.Equal(t, tc.want, s.totals[len(s.totals)-1])
			assert.IsIncreasing(t, s.totals)
		})
	}
}
