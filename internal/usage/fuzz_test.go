package usage

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each target checks what must hold for any input: no panic, the caller
// gets exactly the bytes of the body, done runs exactly once (readThrough
// checks both), and the usage does not depend on how the body was cut into
// Reads.

func FuzzSSEUsage(f *testing.F) {
	for _, tc := range sseCases {
		for _, ending := range []string{"\n", "\r\n", "\r"} {
			f.Add([]byte(strings.ReplaceAll(tc.body, "\n", ending)), uint8(7))
		}
	}
	f.Add(sampleSSE(3), uint8(0))
	f.Add(sampleChatSSE(3), uint8(200))
	f.Add([]byte("data: {\"usage\":{\"output_tokens\":1}}\r"), uint8(1))
	f.Add([]byte("\xEF\xBB"), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		fuzzSplits(t, body, "text/event-stream", chunk)
	})
}

func FuzzJSONUsage(f *testing.F) {
	for _, tc := range jsonCases {
		f.Add([]byte(tc.body), uint8(5))
	}
	f.Add(sampleJSONBody(2<<10), uint8(0))
	f.Add([]byte(`{"choices":[{"index":1,"finish_reason":"stop"},{"finish_reason":"length"}]}`), uint8(3))
	f.Add([]byte(`{"usage":{"a":[[[["\"]"]]]],"input_tokens":5}}`), uint8(2))
	f.Add([]byte(`12`), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		fuzzSplits(t, body, "application/json", chunk)
	})
}

func fuzzSplits(t *testing.T, body []byte, contentType string, chunk uint8) {
	want, out := readThrough(t, body, contentType, sizes())
	require.Equal(t, body, out)
	got, out := readThrough(t, body, contentType, func() int { return 1 })
	require.Equal(t, want, got, "one byte per Read")
	require.Equal(t, body, out)
	got, out = readThrough(t, body, contentType, func() int { return 1 + int(chunk) })
	require.Equal(t, want, got, "%d bytes per Read", 1+int(chunk))
	require.Equal(t, body, out)
	got, _ = readThrough(t, body, contentType, sizes(len(body)/2))
	require.Equal(t, want, got, "split in the middle")
}
