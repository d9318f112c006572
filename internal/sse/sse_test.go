package sse

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// collect is a Handler that wants events not named "skip" and records all.
type collect struct{ got []string }

func (c *collect) Wants(name []byte) bool { return string(name) != "skip" }
func (c *collect) Event(name, data []byte) {
	if data == nil {
		c.got = append(c.got, string(name)+":<not kept>")
		return
	}
	c.got = append(c.got, fmt.Sprintf("%s:%s", name, data))
}

func TestParser(t *testing.T) {
	stream := "\xEF\xBB\xBF: comment\nevent: a\ndata: 1\ndata:2\nid: 9\n\n" +
		"event: skip\ndata: " + strings.Repeat("x", 200) + "\n\n" +
		"data: no name\r\n\r\n" +
		"event: empty\ndata:\n\n" +
		"event: nodata\n\n" +
		"data: cut off"
	for _, n := range []int{1, 2, 7, len(stream)} {
		h := &collect{}
		p := New(h)
		for i := 0; i < len(stream); i += n {
			p.Feed([]byte(stream[i:min(i+n, len(stream))]))
		}
		assert.Equal(t, []string{"a:1\n2", "skip:<not kept>", ":no name"}, h.got, "pieces of %d", n)
		assert.False(t, p.Dropped)
	}
}

func TestParserLineCap(t *testing.T) {
	h := &collect{}
	p := New(h)
	p.Feed([]byte("event: big\ndata: " + strings.Repeat("x", MaxLine) + "\n\nevent: next\ndata: ok\n\n"))
	assert.Equal(t, []string{"big:<not kept>", "next:ok"}, h.got)
	assert.True(t, p.Dropped, "a wanted event over the cap is reported")
}

// sizes is a Handler that records the Size of each event it is given.
type sizes struct {
	p   *Parser
	got []int
}

func (s *sizes) Wants(name []byte) bool  { return string(name) != "skip" }
func (s *sizes) Event(name, data []byte) { s.got = append(s.got, s.p.Size()) }

func TestParserSizeCountsEveryByteOfTheEventKeptOrNot(t *testing.T) {
	kept := "event: a\ndata: 1\n\n"                                       // 18 bytes
	skipped := "event: skip\ndata: " + strings.Repeat("x", 3000) + "\n\n" // 12 + 3007
	crlf := "data: x\r\n\r\n"                                             // 11
	stream := kept + skipped + crlf
	for _, n := range []int{1, 5, 64, len(stream)} {
		h := &sizes{}
		h.p = New(h)
		for i := 0; i < len(stream); i += n {
			h.p.Feed([]byte(stream[i:min(i+n, len(stream))]))
		}
		// The '\n' of a "\r\n" ending an event is counted with the next one.
		assert.Equal(t, []int{len(kept), len(skipped), len(crlf) - 1}, h.got, "pieces of %d", n)
	}
}
