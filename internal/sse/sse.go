// Package sse splits a text/event-stream into events as the bytes stream
// past, in any cut, with a hard cap on every buffer it keeps.
//
// It follows the framing of the HTML standard's event-stream: lines end in
// CR, LF or CRLF; a leading byte order mark is skipped; "event:" names the
// event, "data:" lines are joined with "\n", a blank line dispatches, lines
// starting with ':' are comments, other fields are ignored.
package sse

import (
	"bytes"

	"github.com/tollgate-go/tollgate/internal/jsonscan"
)

// Caps. Every buffer a Parser keeps is bounded by one of these.
const (
	MaxLine = 1 << 20 // one line, and the data of one event
	MaxName = 256     // an event name
)

// A Handler receives the events of a stream.
type Handler interface {
	// Wants reports whether the data of events of that name is wanted; the
	// data of others is not kept. The name is empty until an "event:" line
	// names the event.
	Wants(name []byte) bool
	// Event receives every event that had data lines: with its data, whole,
	// when the event is wanted, else with nil data. The slices are valid
	// only during the call.
	Event(name, data []byte)
}

// A Parser splits a stream into events for its Handler. Its zero value is
// not usable; use New.
type Parser struct {
	h Handler

	line     []byte // the current line when it spans Feeds
	lineOver bool   // the current line passed MaxLine; head holds its start
	head     [8]byte
	headLen  int
	cr       bool // the last byte was '\r': a '\n' right after it ends nothing
	bom      int  // bytes of a leading byte order mark seen; -1 once past it

	name        []byte
	nameOver    bool
	data        []byte
	dataSeen    bool
	dataSkipped bool // data lines were dropped while the event was not wanted
	over        bool // the event's data passed MaxLine
	size        int  // the bytes of the stream the current event took so far
	// Dropped reports that a wanted event was dropped: its data passed
	// MaxLine, or arrived before the line that named it wanted.
	Dropped bool
}

// New returns a Parser that hands events to h.
func New(h Handler) *Parser { return &Parser{h: h} }

const utf8BOM = "\xEF\xBB\xBF"

// Feed parses the next bytes of the stream.
func (s *Parser) Feed(p []byte) {
	for s.bom >= 0 && len(p) > 0 {
		if p[0] == utf8BOM[s.bom] {
			p = p[1:]
			if s.bom++; s.bom == len(utf8BOM) {
				s.bom = -1
			}
			continue
		}
		n := s.bom
		s.bom = -1
		s.feedLines([]byte(utf8BOM[:n]))
	}
	s.feedLines(p)
}

func (s *Parser) feedLines(p []byte) {
	for len(p) > 0 {
		if s.cr {
			s.cr = false
			if p[0] == '\n' {
				s.size++
				p = p[1:]
				continue
			}
		}
		j := jsonscan.IndexEither(p, '\n', '\r')
		if j < 0 {
			s.size += len(p)
			s.appendLine(p)
			return
		}
		s.size += j + 1
		switch {
		case s.lineOver:
			s.overLine()
		case len(s.line) == 0 && j <= MaxLine: // the whole line is in p
			s.processLine(p[:j])
		default:
			s.appendLine(p[:j])
			if s.lineOver {
				s.overLine()
			} else {
				s.processLine(s.line)
			}
		}
		s.line, s.lineOver, s.headLen = s.line[:0], false, 0
		s.cr = p[j] == '\r'
		p = p[j+1:]
	}
}

func (s *Parser) appendLine(b []byte) {
	if s.lineOver {
		return
	}
	if len(s.line)+len(b) > MaxLine {
		s.headLen = copy(s.head[:], s.line)
		s.headLen += copy(s.head[s.headLen:], b)
		s.lineOver = true
		s.line = nil // let a megabyte go
		return
	}
	s.line = appendDoubling(s.line, b)
	// A long comment, or data of an event that is not wanted, need not be
	// kept until its end: skip it now, as if it were over the cap.
	if len(s.line) > 64 && (s.line[0] == ':' || bytes.HasPrefix(s.line, []byte("data:")) && s.ignored()) {
		s.headLen = copy(s.head[:], s.line)
		s.lineOver = true
		s.line = s.line[:0]
	}
}

// overLine handles a line longer than MaxLine, of which only the head is
// known.
func (s *Parser) overLine() {
	head := s.head[:s.headLen]
	k := bytes.IndexByte(head, ':')
	if k < 0 {
		return // a field name this long is none we know
	}
	switch string(head[:k]) {
	case "data":
		s.dataSeen = true
		if s.ignored() {
			s.dataSkipped = true
		} else {
			s.over = true
			s.data = s.data[:0]
		}
	case "event":
		s.nameOver = true
	}
}

func (s *Parser) processLine(line []byte) {
	if len(line) == 0 {
		s.dispatch()
		return
	}
	if line[0] == ':' {
		return // comment
	}
	field, value := line, []byte(nil)
	if k := bytes.IndexByte(line, ':'); k >= 0 {
		field, value = line[:k], line[k+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "event":
		s.nameOver = len(value) > MaxName
		if s.nameOver {
			s.name = s.name[:0]
		} else {
			s.name = append(s.name[:0], value...)
		}
	case "data":
		sep := s.dataSeen
		s.dataSeen = true
		switch {
		case s.ignored():
			s.dataSkipped = true
		case s.over:
		case len(s.data)+1+len(value) > MaxLine:
			s.over = true
			s.data = s.data[:0]
		default:
			if sep {
				s.data = append(s.data, '\n')
			}
			s.data = appendDoubling(s.data, value)
		}
	}
	// id, retry and unknown fields carry nothing to keep.
}

// Size returns how many bytes of the stream the event being dispatched
// took, its lines and their ends, whether its data was kept or not: the
// measure of an event too long to keep. It is valid during Handler.Event.
func (s *Parser) Size() int { return s.size }

// ignored reports whether the current event's data is not wanted.
func (s *Parser) ignored() bool { return s.nameOver || !s.h.Wants(s.name) }

func (s *Parser) dispatch() {
	defer s.resetEvent()
	if !s.dataSeen {
		return
	}
	if s.ignored() {
		s.h.Event(s.name, nil)
		return
	}
	if s.over || s.dataSkipped {
		s.Dropped = true
		s.h.Event(s.name, nil)
		return
	}
	if len(s.data) == 0 {
		return // an event with an empty data buffer is not dispatched
	}
	s.h.Event(s.name, s.data)
}

func (s *Parser) resetEvent() {
	s.name = s.name[:0]
	if cap(s.data) > 64<<10 {
		s.data = nil
	}
	s.data = s.data[:0]
	s.nameOver, s.dataSeen, s.dataSkipped, s.over = false, false, false, false
	s.size = 0
}

// appendDoubling appends b to buf, growing it by doubling: append's gentler
// growth for large slices would allocate several times the final size on
// the way to a capped buffer of a megabyte.
func appendDoubling(buf, b []byte) []byte {
	if n := len(buf) + len(b); n > cap(buf) {
		grown := make([]byte, len(buf), max(n, 2*cap(buf), 512))
		copy(grown, buf)
		buf = grown
	}
	return append(buf, b...)
}
