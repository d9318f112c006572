package jsonscan

import "bytes"

// Bounds of what a Scanner keeps, whatever the document holds.
const (
	// MaxCapture is the longest value captured; a longer one is dropped
	// and marks the scan partial.
	MaxCapture = 64 << 10
	// maxCaptures bounds the values captured from one document (an array
	// path captures one per element); past it the scan is partial.
	maxCaptures = 256
	// maxArena bounds the bytes of all captures of one document together.
	maxArena = 256 << 10
)

// A Capture is one value found at a path of the table.
type Capture struct {
	Field int // the Path's Field
	// Elem is the position of the element, in the innermost array the path
	// goes through, that holds the value; -1 when the path goes through
	// none.
	Elem int
	// Raw is the value's bytes as they appeared (strings with their quotes
	// and escapes), valid until the next Reset.
	Raw []byte
}

type jstate uint8

const (
	jValue      jstate = iota // a value is due
	jValueOrEnd               // after '[': a value or ']'
	jKeyOrEnd                 // after '{': a key or '}'
	jKey                      // after ',' in an object
	jColon
	jAfter // after a value: ',' or a closer
	jString
	jStringEsc // must follow jString
	jScalar
	jSkip // inside a skipped container: brackets and strings only
	jSkipStr
	jSkipEsc // must follow jSkipStr
	jDone
	jBad
)

// A Scanner reads one JSON document at a time against a Table. Its zero
// value is not usable; use New.
type Scanner struct {
	t *Table

	state  jstate
	depth  int               // containers open
	nodes  [maxDepth + 1]int // table node of each walked container, by level
	elems  [maxDepth + 1]int // position of the current element of an array, by level
	arrays uint16            // bit i: the container at level i is an array
	skipTo int               // in jSkip: the depth at which the skipped container ends
	key    [maxKeyBuf]byte   // the member key being read, or last read
	keyLen int               // -1: longer than any key of the table
	inKey  bool              // the string being read is a key
	cap    captureInProgress // the value being captured, if any
	caps   []capture         // what was captured, in document order
	arena  []byte            // the bytes of caps
	out    []Capture         // Captures' answer, reused
	done   bool              // complete
	cut    bool              // partial
}

// maxKeyBuf bounds the key bytes kept: keys longer than the table's
// longest cannot match anyway.
const maxKeyBuf = 64

type captureInProgress struct {
	on    bool
	field int
	elem  int
	depth int  // depth at which the value started
	prim  bool // a string or scalar, not a container
	start int  // offset in arena
	over  bool // passed MaxCapture
}

type capture struct {
	field, elem int
	start, end  int
}

// New returns a Scanner for the paths of t.
func New(t *Table) *Scanner {
	s := &Scanner{t: t}
	s.Reset()
	return s
}

// Reset prepares s for a new document, keeping its buffers.
func (s *Scanner) Reset() {
	s.state, s.depth, s.arrays = jValue, 0, 0
	s.keyLen, s.inKey = 0, false
	s.cap = captureInProgress{}
	s.caps = s.caps[:0]
	if cap(s.arena) > maxArena {
		s.arena = nil
	}
	s.arena = s.arena[:0]
	s.done, s.cut = false, false
}

// Complete reports whether one whole JSON value was read, with nothing but
// white space after it.
func (s *Scanner) Complete() bool { return s.done }

// Partial reports whether a value at a path was dropped for exceeding a
// bound (MaxCapture, or the number or total size of captures).
func (s *Scanner) Partial() bool { return s.cut }

// Captures returns the values captured so far, in document order. The
// slice and the bytes are valid until the next Feed or Reset.
func (s *Scanner) Captures() []Capture {
	s.out = s.out[:0]
	for _, c := range s.caps {
		s.out = append(s.out, Capture{Field: c.field, Elem: c.elem, Raw: s.arena[c.start:c.end]})
	}
	return s.out
}

// End marks the end of the input: a top-level scalar ends there.
func (s *Scanner) End() {
	if s.state == jScalar && s.depth == 0 {
		s.endPrim()
		s.state, s.done = jDone, true
	}
}

// Feed scans the next bytes of the document.
func (s *Scanner) Feed(p []byte) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch s.state {
		case jBad:
			return
		case jDone:
			if !isSpace(c) {
				// Something after the value: not one JSON document.
				s.state, s.done = jBad, false
				return
			}
		case jString, jSkipStr:
			j := IndexQuoteOrEscape(p[i:])
			if j < 0 {
				s.strBytes(p[i:])
				return
			}
			s.strBytes(p[i : i+j])
			i += j
			c = p[i]
			s.capByte(c)
			switch {
			case c == '\\':
				s.state++
			case s.state == jSkipStr:
				s.state = jSkip
			case s.inKey:
				s.inKey = false
				s.state = jColon
			default:
				s.endPrim()
				s.afterValue()
			}
		case jStringEsc, jSkipEsc:
			s.strBytes(p[i : i+1])
			s.state--
		case jScalar:
			if isScalarByte(c) {
				s.capByte(c)
				continue
			}
			s.endPrim()
			s.afterValue()
			i-- // the delimiter belongs to the enclosing state
		case jValue, jValueOrEnd:
			switch {
			case isSpace(c):
			case c == ']' && s.state == jValueOrEnd:
				s.close(c)
			default:
				s.startValue(c)
			}
		case jKeyOrEnd, jKey:
			switch {
			case isSpace(c):
			case c == '"':
				s.capByte(c)
				s.inKey, s.keyLen = true, 0
				s.state = jString
			case c == '}' && s.state == jKeyOrEnd:
				s.close(c)
			default:
				s.state = jBad
			}
		case jColon:
			switch {
			case isSpace(c):
			case c == ':':
				s.capByte(c)
				s.state = jValue
			default:
				s.state = jBad
			}
		case jAfter:
			switch {
			case isSpace(c):
			case c == ',':
				s.capByte(c)
				lvl := s.depth - 1
				if !s.isArray(lvl) {
					s.state = jKey
					continue
				}
				s.elems[lvl]++
				s.state = jValue
			case c == '}' || c == ']':
				s.close(c)
			default:
				s.state = jBad
			}
		case jSkip:
			k := i
			for k < len(p) && !skipStops[p[k]] {
				k++
			}
			s.capBytes(p[i:k])
			if k == len(p) {
				return
			}
			i, c = k, p[k]
			s.capByte(c)
			switch c {
			case '"':
				s.inKey = false
				s.state = jSkipStr
			case '{', '[':
				s.depth++
			default: // '}', ']'
				if s.depth--; s.depth == s.skipTo {
					if s.cap.on && s.depth == s.cap.depth {
						s.endCapture()
					}
					s.afterValue()
				}
			}
		}
	}
}

// skipStops are the bytes that matter inside a skipped container.
var skipStops = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}

func (s *Scanner) isArray(lvl int) bool { return s.arrays&(1<<lvl) != 0 }

// strBytes takes a run of string contents (no closing quote).
func (s *Scanner) strBytes(b []byte) {
	if s.inKey && s.keyLen >= 0 {
		if s.keyLen+len(b) <= s.t.keyMax && s.keyLen+len(b) <= maxKeyBuf {
			s.keyLen += copy(s.key[s.keyLen:], b)
		} else {
			s.keyLen = -1
		}
	}
	s.capBytes(b)
}

func (s *Scanner) capBytes(b []byte) {
	if !s.cap.on || s.cap.over || len(b) == 0 {
		return
	}
	if len(s.arena)-s.cap.start+len(b) > MaxCapture || len(s.arena)+len(b) > maxArena {
		s.cap.over = true
		return
	}
	s.arena = append(s.arena, b...)
}

func (s *Scanner) capByte(c byte) {
	if !s.cap.on || s.cap.over {
		return
	}
	if len(s.arena)-s.cap.start >= MaxCapture || len(s.arena) >= maxArena {
		s.cap.over = true
		return
	}
	s.arena = append(s.arena, c)
}

// nodeHere returns the table node of the value starting at the current
// depth, or -1 when no path leads there.
func (s *Scanner) nodeHere() int {
	if s.depth == 0 {
		return 0
	}
	lvl := s.depth - 1
	parent := s.nodes[lvl]
	if s.isArray(lvl) {
		return s.t.nodes[parent].elem
	}
	if s.keyLen < 0 {
		return -1
	}
	return s.t.child(parent, s.key[:s.keyLen])
}

func (s *Scanner) startValue(c byte) {
	container := c == '{' || c == '['
	n := -1
	if !s.cap.on {
		n = s.nodeHere()
		if n >= 0 {
			if nd := &s.t.nodes[n]; nd.field >= 0 && (nd.kind == Whole || !container) {
				s.startCapture(nd.field, !container)
			}
		}
	}
	s.capByte(c)
	switch {
	case container:
		lvl := s.depth
		s.depth++
		if s.cap.on || !s.t.walks(n) || lvl >= maxDepth {
			// Captured whole, or nothing the table names can be inside.
			s.skipTo, s.state = lvl, jSkip
			return
		}
		s.nodes[lvl], s.elems[lvl] = n, 0
		if c == '[' {
			s.arrays |= 1 << lvl
			s.state = jValueOrEnd
		} else {
			s.arrays &^= 1 << lvl
			s.state = jKeyOrEnd
		}
	case c == '"':
		s.inKey = false
		s.state = jString
	case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
		s.state = jScalar
	default:
		s.state = jBad
	}
}

func (s *Scanner) startCapture(field int, prim bool) {
	if len(s.caps) >= maxCaptures {
		s.cut = true
		return
	}
	elem := -1
	for lvl := s.depth - 1; lvl >= 0; lvl-- {
		if s.isArray(lvl) {
			elem = s.elems[lvl]
			break
		}
	}
	s.cap = captureInProgress{on: true, field: field, elem: elem, depth: s.depth, prim: prim, start: len(s.arena)}
}

func (s *Scanner) close(c byte) {
	lvl := s.depth - 1
	if s.isArray(lvl) != (c == ']') {
		s.state = jBad
		return
	}
	s.capByte(c)
	s.depth--
	if s.cap.on && !s.cap.prim && s.depth == s.cap.depth {
		s.endCapture()
	}
	s.afterValue()
}

func (s *Scanner) afterValue() {
	if s.depth == 0 {
		s.state, s.done = jDone, true
		return
	}
	s.state = jAfter
}

func (s *Scanner) endPrim() {
	if s.cap.on && s.cap.prim {
		s.endCapture()
	}
}

func (s *Scanner) endCapture() {
	c := s.cap
	s.cap = captureInProgress{}
	if c.over {
		s.cut = true
		s.arena = s.arena[:c.start]
		return
	}
	s.caps = append(s.caps, capture{field: c.field, elem: c.elem, start: c.start, end: len(s.arena)})
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isScalarByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		c == '-' || c == '+' || c == '.'
}

// IndexQuoteOrEscape returns the index of the first '"' or '\\' in b, or
// -1.
func IndexQuoteOrEscape(b []byte) int {
	// Most strings in a response are short keys and values: look at the
	// first bytes directly before calling into the vectorized search.
	for i, c := range b[:min(len(b), 16)] {
		if c == '"' || c == '\\' {
			return i
		}
	}
	if len(b) <= 16 {
		return -1
	}
	if i := IndexEither(b[16:], '"', '\\'); i >= 0 {
		return 16 + i
	}
	return -1
}

// IndexEither returns the index of the first x or y in b, or -1. It searches
// in windows so that a y far beyond many x (or the other way round) does not
// make repeated calls quadratic.
func IndexEither(b []byte, x, y byte) int {
	const window = 512
	for off := 0; off < len(b); off += window {
		w := b[off:min(off+window, len(b))]
		i := bytes.IndexByte(w, x)
		if i < 0 {
			i = len(w)
		}
		if j := bytes.IndexByte(w[:i], y); j >= 0 {
			return off + j
		}
		if i < len(w) {
			return off + i
		}
	}
	return -1
}
