// Package reqscan reads what a request to an LLM API will cost before it
// is sent — its model, max_tokens, stream flag, prompt size and images —
// from a copy of its body, walked once, in either provider's dialect.
package reqscan

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/tollgate-go/tollgate/internal/jsonscan"
)

// Info is what Read learns of a request.
type Info struct {
	// Model is the request's "model"; empty when absent.
	Model string
	// MaxTokens is max_completion_tokens, max_output_tokens or max_tokens
	// (first present in that order); 0 when absent.
	MaxTokens int64
	// Stream is the request's "stream" flag. Without a readable body it is
	// true when the Accept header asks for text/event-stream.
	Stream bool
	// PromptBytes is the number of bytes of prompt text: the decoded string
	// contents of system, messages (text blocks, tool results, tool_use
	// inputs as JSON, tool call arguments), tools (name, description,
	// input_schema / parameters as JSON), and OpenAI input / instructions /
	// prompt; not JSON syntax, not base64 image or document data. When the
	// body cannot be read (no GetBody) it is the Content-Length; when it is
	// larger than MaxRead it is the body's size.
	PromptBytes int64
	// Images counts image and document blocks, which cost tokens by their
	// pixel size, not by their base64 length.
	Images int
	// Blocks is the prompt block by block in the order a prompt cache reads
	// it (tools, system, messages), when the request sets cache_control
	// breakpoints (1 to MaxBreakpoints of them); nil otherwise.
	Blocks []Block
}

// MaxRead caps how much of a request body Read copies and walks; past it
// the prompt size is the body's size.
const MaxRead = 32 << 20

// maxDepth bounds the nesting walked; deeper values are skipped.
const maxDepth = 32

// Read reads what a request will cost without consuming it: the body is
// read from a fresh copy made by req.GetBody (and closed), never from
// req.Body. Without GetBody only the headers are used and the prompt size
// is the Content-Length. A body that is not valid JSON yields no body
// fields and counts whole as prompt: the provider should reject it without
// charging, but an estimate must not count on that.
func Read(req *http.Request) Info {
	var info Info
	if req == nil || req.Body == nil || req.Body == http.NoBody {
		return info
	}
	if req.GetBody == nil {
		return fromSize(req)
	}
	rc, err := req.GetBody()
	if err != nil || rc == nil {
		return fromSize(req)
	}
	defer rc.Close()

	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 4<<20 {
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	if cl := req.ContentLength; cl > 0 && cl <= MaxRead {
		buf.Grow(int(cl) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(rc, MaxRead+1)); err != nil {
		return fromSize(req)
	}
	body := buf.Bytes()
	over := len(body) > MaxRead
	if over {
		body = body[:MaxRead]
	}

	p := parser{b: body}
	p.top()
	if p.bad && !(over && p.eof) {
		// Malformed: the provider should refuse it, but an estimate errs
		// on the side of charging more, so the whole body counts as
		// prompt.
		info.PromptBytes = int64(len(body))
		return info
	}
	info.Model = p.model
	info.Stream = p.stream
	info.Images = p.images
	info.PromptBytes = p.prompt
	if !over {
		info.Blocks = p.cache.ordered()
	}
	for _, mt := range p.maxTokens {
		if mt > 0 {
			info.MaxTokens = mt
			break
		}
	}
	if over {
		// Past the cap: the body's size is the only measure of it left.
		size := req.ContentLength
		if size <= 0 {
			rest, _ := io.Copy(io.Discard, rc)
			size = MaxRead + 1 + rest
		}
		info.PromptBytes = size
	}
	return info
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// fromSize is what can be told without reading the body.
func fromSize(req *http.Request) Info {
	var info Info
	if req.ContentLength > 0 {
		info.PromptBytes = req.ContentLength
	}
	info.Stream = strings.Contains(strings.ToLower(req.Header.Get("Accept")), "text/event-stream")
	return info
}

// parser walks a request body in one pass over the bytes, counting prompt
// text and picking out the few scalars tollgate needs. It allocates only the
// model name. Nesting deeper than maxDepth is skipped iteratively, so no
// body can exhaust the stack.
type parser struct {
	b   []byte
	i   int
	bad bool // not valid JSON (as far as walked)
	eof bool // ran out of input

	model     string
	maxTokens [3]int64 // max_completion_tokens, max_output_tokens, max_tokens
	stream    bool
	prompt    int64
	images    int
	cache     cacheWalk
}

func (p *parser) fail() {
	if p.i >= len(p.b) {
		p.eof = true
	}
	p.bad = true
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) peek() byte {
	p.ws()
	if p.i >= len(p.b) {
		return 0
	}
	return p.b[p.i]
}

// next advances to the next member of the object or array whose opening
// bracket has been consumed; it returns false at the closer (consumed) or on
// an error.
func (p *parser) next(first *bool, closer byte) bool {
	c := p.peek()
	if c == closer {
		p.i++
		return false
	}
	if !*first {
		if c != ',' {
			p.fail()
			return false
		}
		p.i++
		p.ws()
	}
	*first = false
	if p.i >= len(p.b) {
		p.fail()
		return false
	}
	return true
}

// key reads an object key and the colon after it.
func (p *parser) key() ([]byte, bool) {
	if p.peek() != '"' {
		p.fail()
		return nil, false
	}
	k, _, ok := p.str()
	if !ok {
		return nil, false
	}
	if p.peek() != ':' {
		p.fail()
		return nil, false
	}
	p.i++
	return k, true
}

// str reads the string at p.i and returns its raw contents (escapes intact)
// and its decoded length in bytes.
func (p *parser) str() (raw []byte, n int64, ok bool) {
	b := p.b
	start := p.i + 1
	i, seg := start, start
	for {
		j := jsonscan.IndexQuoteOrEscape(b[i:])
		if j < 0 {
			p.i = len(b)
			p.fail()
			return nil, 0, false
		}
		i += j
		n += int64(i - seg)
		if b[i] == '"' {
			p.i = i + 1
			return b[start:i], n, true
		}
		if i+1 >= len(b) {
			p.i = len(b)
			p.fail()
			return nil, 0, false
		}
		if b[i+1] != 'u' {
			n++
			i += 2
		} else {
			if i+6 > len(b) {
				p.i = len(b)
				p.fail()
				return nil, 0, false
			}
			r, ok := hex4(b[i+2 : i+6])
			if !ok {
				p.i = i
				p.fail()
				return nil, 0, false
			}
			if r >= 0xD800 && r < 0xE000 {
				n += 2 // half of a surrogate pair, which encodes as 4 bytes
			} else {
				n += int64(utf8.RuneLen(r))
			}
			i += 6
		}
		seg = i
	}
}

func hex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// scalar reads a number or literal.
func (p *parser) scalar() []byte {
	start := p.i
	for p.i < len(p.b) && isScalarByte(p.b[p.i]) {
		p.i++
	}
	if p.i == start || p.i == len(p.b) {
		// A top-level body is an object, so a scalar always has a delimiter
		// after it; one that runs to the end was cut off.
		p.fail()
		return nil
	}
	return p.b[start:p.i]
}

// skip skips one value of any depth without recursion.
func (p *parser) skip() {
	depth := 0
	for !p.bad {
		switch c := p.peek(); c {
		case 0:
			p.fail()
			return
		case '{', '[':
			depth++
			p.i++
		case '}', ']':
			if depth == 0 {
				p.fail()
				return
			}
			depth--
			p.i++
		case '"':
			p.str()
		case ',', ':':
			if depth == 0 {
				p.fail()
				return
			}
			p.i++
			continue
		default:
			p.scalar()
		}
		if depth == 0 {
			return
		}
	}
}

func (p *parser) top() {
	if p.peek() != '{' {
		p.fail()
		return
	}
	p.i++
	for first := true; !p.bad && p.next(&first, '}'); {
		k, ok := p.key()
		if !ok {
			return
		}
		switch string(k) {
		case "model":
			if p.peek() == '"' {
				start := p.i
				raw, _, ok := p.str()
				if ok {
					p.model = jsonStringOf(p.b[start:p.i], raw)
				}
			} else {
				p.skip()
			}
		case "max_completion_tokens":
			p.maxTokens[0] = p.int()
		case "max_output_tokens":
			p.maxTokens[1] = p.int()
		case "max_tokens":
			p.maxTokens[2] = p.int()
		case "stream":
			if p.peek() == '"' || p.peek() == '{' || p.peek() == '[' {
				p.skip()
			} else {
				p.stream = string(p.scalar()) == "true"
			}
		case "tools":
			p.section(sectionTools)
		case "system":
			p.section(sectionSystem)
		case "messages":
			p.section(sectionMessages)
		case "input", "instructions", "prompt":
			p.content(0)
		default:
			p.skip()
		}
	}
	if !p.bad {
		p.ws()
		if p.i != len(p.b) {
			p.bad = true // trailing garbage
		}
	}
}

func (p *parser) int() int64 {
	switch p.peek() {
	case '"', '{', '[':
		p.skip()
		return 0
	}
	v, _ := jsonscan.ParseInt(p.scalar())
	return v
}

// content counts the prompt text of a value: a string, an array of strings
// or blocks, or a block.
func (p *parser) content(depth int) {
	switch p.peek() {
	case '"':
		if _, n, ok := p.str(); ok {
			p.prompt += n
		}
	case '[':
		if depth >= maxDepth {
			p.skip()
			return
		}
		p.i++
		for first := true; !p.bad && p.next(&first, ']'); {
			p.content(depth + 1)
		}
	case '{':
		p.block(depth + 1)
	default:
		p.skip()
	}
}

// block counts the prompt text of one message, content block, tool or tool
// call, whatever the dialect: the text-bearing keys are counted, JSON-valued
// inputs and schemas are counted as JSON, image sources and other keys are
// skipped, and image or document blocks are counted as images.
func (p *parser) block(depth int) {
	if depth > maxDepth {
		p.skip()
		return
	}
	p.i++ // '{'
	var typ []byte
	for first := true; !p.bad && p.next(&first, '}'); {
		k, ok := p.key()
		if !ok {
			return
		}
		typ = p.member(k, typ, depth)
	}
	p.countImage(typ)
}

// member counts the value of one member k of a block and returns the
// block's type, which a "type" member sets.
func (p *parser) member(k, typ []byte, depth int) []byte {
	switch string(k) {
	case "type":
		if p.peek() == '"' {
			typ, _, _ = p.str()
		} else {
			p.skip()
		}
	case "text", "thinking", "name", "description", "arguments", "output", "refusal",
		"content", "summary", "function", "tool_calls":
		p.content(depth)
	case "input", "input_schema", "parameters":
		p.ws()
		start := p.i
		p.skip()
		p.prompt += int64(p.i - start)
	default:
		p.skip()
	}
	return typ
}

// countImage counts a block of an image or document type.
func (p *parser) countImage(typ []byte) {
	switch string(typ) {
	case "image", "document", "image_url", "input_image", "input_file", "file":
		p.images++
	}
}

// jsonStringOf returns the value of a JSON string given its quoted form and
// its raw contents.
func jsonStringOf(quoted, raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	var s string
	_ = json.Unmarshal(quoted, &s)
	return s
}

func isScalarByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		c == '-' || c == '+' || c == '.'
}
