package tollgate

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// This file reads what a call costs: an estimate from the request before it
// is sent (readRequestInfo) and the usage the provider reported, parsed from
// the response body while the caller reads it (newUsageReader). Neither
// buffers a whole body: the request is walked once from a bounded copy, the
// response is fed through a byte-at-a-time JSON scanner or an SSE parser
// whose every buffer has a hard cap.

// DefaultBytesPerToken is the starting guess for how many bytes of prompt
// text make one token. English prose and code average about 4 bytes per
// token with the BPE tokenizers both providers use (other languages need
// fewer bytes per token, so this errs low); the budget learns the real ratio
// of each model family from the usage the responses report.
const DefaultBytesPerToken = 4.0

// imageTokens is the input-token estimate for one image or document block.
// Anthropic bills an image at about width·height/750 tokens and scales
// images down to about 1.15 megapixels, so a large image costs about 1,600
// tokens; OpenAI's high-detail images land in the same range. The real
// cost depends on the pixel size, which tollgate does not decode, so every
// image is counted at that ceiling (a PDF page costs more; the budget
// corrects itself from the reported usage).
const imageTokens = 1600

// maxRequestRead caps how much of a request body readRequestInfo copies and
// walks; past it the estimate comes from the body's size alone.
const maxRequestRead = 32 << 20

// Caps of the response parsers. Every buffer they keep is bounded by one of
// these, whatever the body holds.
const (
	maxSSELine   = 1 << 20  // one SSE line, and the data of one event
	maxSSEName   = 256      // an SSE event name
	maxCapture   = 64 << 10 // one captured JSON value (usage, error, id, …)
	maxChoices   = 64       // choices whose finish_reason is kept
	maxReqDepth  = 32       // nesting walked by readRequestInfo; deeper values are skipped
	jsonPathKeys = 3        // levels whose key or index the scanner keeps for path matching
	jsonKeyMax   = 16       // longest key the scanner matches (longer keys match nothing)
)

// RequestInfo is what tollgate reads from a request before sending it.
type RequestInfo struct {
	// Provider is the API dialect: ProviderAnthropic when the request has an
	// anthropic-version header or its path ends in /messages or
	// /messages/count_tokens; ProviderOpenAI for /chat/completions,
	// /completions, /responses and /embeddings; otherwise guessed from the
	// host ("anthropic" in it means Anthropic, anything else OpenAI).
	Provider Provider
	// Operation is "chat" for /messages, /chat/completions and /responses,
	// "count_tokens" for /messages/count_tokens, "embeddings" for
	// /embeddings, and "" for anything else.
	Operation string
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
	// larger than 32 MiB it is the body's size.
	PromptBytes int64
	// Images counts image and document blocks, which cost tokens by their
	// pixel size, not by their base64 length.
	Images int
	// EstimatedInputTokens is ceil(PromptBytes/DefaultBytesPerToken) +
	// Images*1600 (see imageTokens).
	EstimatedInputTokens int64
}

// readRequestInfo reads what a request will cost without consuming it: the
// body is read from a fresh copy made by req.GetBody (and closed), never from
// req.Body. Without GetBody only the URL and headers are used and the input
// estimate comes from the Content-Length. A body that is not valid JSON
// yields no body fields (the provider will reject it without charging).
func readRequestInfo(req *http.Request) RequestInfo {
	var info RequestInfo
	if req == nil {
		return info
	}
	info.Provider, info.Operation = classifyRequest(req)
	if req.Body == nil || req.Body == http.NoBody {
		return info
	}
	if req.GetBody == nil {
		info.fromSize(req)
		return info
	}
	rc, err := req.GetBody()
	if err != nil || rc == nil {
		info.fromSize(req)
		return info
	}
	defer rc.Close()

	buf := reqBufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 4<<20 {
			buf.Reset()
			reqBufPool.Put(buf)
		}
	}()
	if cl := req.ContentLength; cl > 0 && cl <= maxRequestRead {
		buf.Grow(int(cl) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(rc, maxRequestRead+1)); err != nil {
		info.fromSize(req)
		return info
	}
	body := buf.Bytes()
	over := len(body) > maxRequestRead
	if over {
		body = body[:maxRequestRead]
	}

	p := reqParser{b: body}
	p.top()
	if p.bad && !(over && p.eof) {
		return info // malformed: only what the URL and headers tell
	}
	info.Model = p.model
	info.Stream = p.stream
	info.Images = p.images
	info.PromptBytes = p.prompt
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
			size = maxRequestRead + 1 + rest
		}
		info.PromptBytes = size
	}
	info.estimate()
	return info
}

var reqBufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// fromSize fills what can be told without reading the body.
func (info *RequestInfo) fromSize(req *http.Request) {
	if req.ContentLength > 0 {
		info.PromptBytes = req.ContentLength
	}
	info.Stream = strings.Contains(strings.ToLower(req.Header.Get("Accept")), "text/event-stream")
	info.estimate()
}

func (info *RequestInfo) estimate() {
	info.EstimatedInputTokens = int64(math.Ceil(float64(info.PromptBytes)/DefaultBytesPerToken)) +
		int64(info.Images)*imageTokens
}

// classifyRequest returns the provider and operation a request's URL and
// headers tell.
func classifyRequest(req *http.Request) (Provider, string) {
	var path, host string
	if req.URL != nil {
		path = strings.TrimRight(req.URL.Path, "/")
		host = req.URL.Host
	}
	if host == "" {
		host = req.Host
	}
	provider, op := Provider(""), ""
	switch {
	case strings.HasSuffix(path, "/messages/count_tokens"):
		provider, op = ProviderAnthropic, "count_tokens"
	case strings.HasSuffix(path, "/messages") && !strings.Contains(path, "/threads/"):
		// (OpenAI's Assistants API also has …/threads/{id}/messages.)
		provider, op = ProviderAnthropic, "chat"
	case strings.HasSuffix(path, "/chat/completions"), strings.HasSuffix(path, "/responses"):
		provider, op = ProviderOpenAI, "chat"
	case strings.HasSuffix(path, "/embeddings"):
		provider, op = ProviderOpenAI, "embeddings"
	case strings.HasSuffix(path, "/completions"):
		provider = ProviderOpenAI
	}
	if req.Header.Get("anthropic-version") != "" {
		provider = ProviderAnthropic
	}
	if provider == "" {
		provider = ProviderOpenAI
		if strings.Contains(strings.ToLower(host), "anthropic") {
			provider = ProviderAnthropic
		}
	}
	return provider, op
}

// reqParser walks a request body in one pass over the bytes, counting prompt
// text and picking out the few scalars tollgate needs. It allocates only the
// model name. Nesting deeper than maxReqDepth is skipped iteratively, so no
// body can exhaust the stack.
type reqParser struct {
	b   []byte
	i   int
	bad bool // not valid JSON (as far as walked)
	eof bool // ran out of input

	model     string
	maxTokens [3]int64 // max_completion_tokens, max_output_tokens, max_tokens
	stream    bool
	prompt    int64
	images    int
}

func (p *reqParser) fail() {
	if p.i >= len(p.b) {
		p.eof = true
	}
	p.bad = true
}

func (p *reqParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *reqParser) peek() byte {
	p.ws()
	if p.i >= len(p.b) {
		return 0
	}
	return p.b[p.i]
}

// next advances to the next member of the object or array whose opening
// bracket has been consumed; it returns false at the closer (consumed) or on
// an error.
func (p *reqParser) next(first *bool, closer byte) bool {
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
func (p *reqParser) key() ([]byte, bool) {
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
func (p *reqParser) str() (raw []byte, n int64, ok bool) {
	b := p.b
	start := p.i + 1
	i, seg := start, start
	for {
		j := indexQuoteOrEscape(b[i:])
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
func (p *reqParser) scalar() []byte {
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
func (p *reqParser) skip() {
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

func (p *reqParser) top() {
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
		case "system", "messages", "input", "instructions", "tools", "prompt":
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

func (p *reqParser) int() int64 {
	switch p.peek() {
	case '"', '{', '[':
		p.skip()
		return 0
	}
	v, _ := parseJSONInt(p.scalar())
	return v
}

// content counts the prompt text of a value: a string, an array of strings
// or blocks, or a block.
func (p *reqParser) content(depth int) {
	switch p.peek() {
	case '"':
		if _, n, ok := p.str(); ok {
			p.prompt += n
		}
	case '[':
		if depth >= maxReqDepth {
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
func (p *reqParser) block(depth int) {
	if depth > maxReqDepth {
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
	}
	switch string(typ) {
	case "image", "document", "image_url", "input_image", "input_file", "file":
		p.images++
	}
}

// Usage is the token usage a response reported, normalized across providers
// so that TotalInputTokens means the same thing for both.
type Usage struct {
	// InputTokens are the input tokens neither read from nor written to the
	// prompt cache (OpenAI: prompt_tokens or input_tokens minus cached_tokens).
	InputTokens int64
	// OutputTokens are completion_tokens / output_tokens; for an Anthropic
	// stream the latest cumulative count.
	OutputTokens int64
	// CacheReadInputTokens are Anthropic's cache_read_input_tokens or
	// OpenAI's prompt_tokens_details.cached_tokens /
	// input_tokens_details.cached_tokens.
	CacheReadInputTokens int64
	// CacheCreationInputTokens are Anthropic's cache_creation_input_tokens.
	CacheCreationInputTokens int64
	// Reported says a usage field was seen; without it the counts are zero
	// because nothing was reported, not because nothing was used.
	Reported bool
	// ResponseID and ResponseModel are the response's id and model.
	ResponseID    string
	ResponseModel string
	// FinishReasons are Anthropic's stop_reason, OpenAI's
	// choices[].finish_reason in choice index order, or the Responses API's
	// status.
	FinishReasons []string
	// StreamError is an error reported in the body: an `event: error`, an
	// OpenAI error chunk or a response.failed seen in a stream after a 200,
	// or the error object of a JSON error body.
	StreamError *APIError
	// Complete says the body reached its natural end: a whole JSON document,
	// message_stop, data: [DONE], response.completed or response.incomplete.
	Complete bool
	// Partial says part of the body exceeded a parser cap (an SSE event over
	// 1 MiB, a usage object over 64 KiB, more than 64 choices) and was
	// skipped, so the counts may be incomplete.
	Partial bool
}

// TotalInputTokens returns all input tokens, cached or not:
// InputTokens + CacheReadInputTokens + CacheCreationInputTokens.
func (u Usage) TotalInputTokens() int64 {
	return u.InputTokens + u.CacheReadInputTokens + u.CacheCreationInputTokens
}

// newUsageReader wraps a response body so that usage is parsed from the bytes
// as the caller reads them. Every Read passes the bytes straight through (no
// buffering, no delay beyond parsing them); the parser only looks at them.
// contentType picks the parser: text/event-stream is parsed as SSE,
// application/json and any +json type (or no type and a body starting with
// '{') as JSON, anything else is passed through unparsed.
//
// done is called exactly once, with the usage seen so far: at EOF (err nil),
// on a read error (err is that error), or on Close (err nil), whichever
// comes first, and never while a lock is held. Close is idempotent and
// closes body; a Close concurrent with a Read is safe.
func newUsageReader(body io.ReadCloser, provider Provider, contentType string, done func(Usage, error)) io.ReadCloser {
	_ = provider // the shapes tell the dialects apart; see usageAcc
	r := &usageReader{body: body, done: done}
	switch mt := mediaType(contentType); {
	case mt == "text/event-stream":
		r.parser = newSSEParser()
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		r.parser = &jsonBodyParser{}
	case mt == "":
		r.parser = &sniffParser{}
	}
	return r
}

func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

type usageParser interface {
	feed(p []byte)
	usage() Usage
}

type usageReader struct {
	body io.ReadCloser

	mu     sync.Mutex
	parser usageParser // nil: pass-through
	done   func(Usage, error)
	fired  bool

	closeOnce sync.Once
	closeErr  error
}

func (r *usageReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	r.mu.Lock()
	if r.fired {
		r.mu.Unlock()
		return n, err
	}
	if n > 0 && r.parser != nil {
		r.parser.feed(p[:n])
	}
	if err == nil {
		r.mu.Unlock()
		return n, nil
	}
	u, done := r.fire()
	r.mu.Unlock()
	if done != nil {
		if err == io.EOF {
			done(u, nil)
		} else {
			done(u, err)
		}
	}
	return n, err
}

// fire marks done as called and returns the usage and the callback; r.mu
// must be held.
func (r *usageReader) fire() (Usage, func(Usage, error)) {
	r.fired = true
	var u Usage
	if r.parser != nil {
		u = r.parser.usage()
		r.parser = nil
	}
	done := r.done
	r.done = nil
	return u, done
}

func (r *usageReader) Close() error {
	r.mu.Lock()
	var u Usage
	var done func(Usage, error)
	if !r.fired {
		u, done = r.fire()
	}
	r.mu.Unlock()
	if done != nil {
		done(u, nil)
	}
	r.closeOnce.Do(func() { r.closeErr = r.body.Close() })
	return r.closeErr
}

// sniffParser decides between JSON and pass-through from the first byte
// when the response has no content type.
type sniffParser struct {
	decided bool
	json    *jsonBodyParser
}

func (s *sniffParser) feed(p []byte) {
	if !s.decided {
		i := 0
		for i < len(p) && isSpace(p[i]) {
			i++
		}
		if i == len(p) {
			return
		}
		s.decided = true
		if p[i] == '{' {
			s.json = &jsonBodyParser{}
		}
		p = p[i:]
	}
	if s.json != nil {
		s.json.feed(p)
	}
}

func (s *sniffParser) usage() Usage {
	if s.json == nil {
		return Usage{}
	}
	return s.json.usage()
}

// jsonBodyParser reads a non-streaming response.
type jsonBodyParser struct {
	sc      jsonScanner
	st      usageState
	applied bool
}

// feed scans b. After the top-level value closes the scanner only checks
// that nothing but whitespace follows, so that Complete means "one whole
// JSON document" however the body was cut into Reads.
func (p *jsonBodyParser) feed(b []byte) { p.sc.feed(b) }

func (p *jsonBodyParser) usage() Usage {
	if !p.applied {
		p.applied = true
		p.sc.end()
		p.st.applyBody(&p.sc)
	}
	return p.st.usage()
}

// sseParser reads a text/event-stream response: full SSE framing, then the
// events of Anthropic's Messages API, OpenAI's chat completions and the
// Responses API.
type sseParser struct {
	st usageState
	sc jsonScanner // reused for the data of each event

	line     []byte // the current line when it spans Reads
	lineOver bool   // the current line passed maxSSELine; head holds its start
	head     [8]byte
	headLen  int
	cr       bool // the last byte was '\r': a '\n' right after it ends nothing
	bom      int  // bytes of a leading byte order mark seen; -1 once past it

	name        []byte // event name
	nameOver    bool
	data        []byte
	dataSeen    bool
	dataSkipped bool // data lines were dropped because the event is ignored
	over        bool // the event's data passed maxSSELine
}

func newSSEParser() *sseParser { return &sseParser{} }

const utf8BOM = "\xEF\xBB\xBF"

func (s *sseParser) feed(p []byte) {
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

func (s *sseParser) feedLines(p []byte) {
	for len(p) > 0 {
		if s.cr {
			s.cr = false
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		j := indexEither(p, '\n', '\r')
		if j < 0 {
			s.appendLine(p)
			return
		}
		switch {
		case s.lineOver:
			s.overLine()
		case len(s.line) == 0 && j <= maxSSELine: // the whole line is in p
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

func (s *sseParser) appendLine(b []byte) {
	if s.lineOver {
		return
	}
	if len(s.line)+len(b) > maxSSELine {
		s.headLen = copy(s.head[:], s.line)
		s.headLen += copy(s.head[s.headLen:], b)
		s.lineOver = true
		s.line = nil // let a megabyte go
		return
	}
	s.line = appendDoubling(s.line, b)
	// A long comment, or data of an event that is ignored anyway, need not
	// be kept until its end: skip it now, as if it were over the cap.
	if len(s.line) > 64 && (s.line[0] == ':' || bytes.HasPrefix(s.line, []byte("data:")) && s.ignored()) {
		s.headLen = copy(s.head[:], s.line)
		s.lineOver = true
		s.line = s.line[:0]
	}
}

// overLine handles a line longer than maxSSELine, of which only the head is
// known.
func (s *sseParser) overLine() {
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

func (s *sseParser) processLine(line []byte) {
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
		s.nameOver = len(value) > maxSSEName
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
		case len(s.data)+1+len(value) > maxSSELine:
			s.over = true
			s.data = s.data[:0]
		default:
			if sep {
				s.data = append(s.data, '\n')
			}
			s.data = appendDoubling(s.data, value)
		}
	}
	// id, retry and unknown fields carry nothing tollgate needs.
}

// handledEvent reports whether an event name is one whose data is parsed.
func handledEvent(name []byte) bool {
	switch string(name) {
	case "", "message", // no name (OpenAI chat chunks): the data's "type" decides
		"message_start", "message_delta", "message_stop", "error",
		"response.created", "response.in_progress", "response.completed",
		"response.incomplete", "response.failed":
		return true
	}
	return false
}

// ignored reports whether the current event is one tollgate does not read
// (content deltas, pings, unknown events), so its data need not be kept.
func (s *sseParser) ignored() bool { return s.nameOver || !handledEvent(s.name) }

func (s *sseParser) dispatch() {
	defer s.resetEvent()
	if !s.dataSeen || s.ignored() {
		return
	}
	if s.over || s.dataSkipped {
		s.st.partial = true
		return
	}
	if len(s.data) == 0 {
		return // an event with an empty data buffer is not dispatched
	}
	if string(s.data) == "[DONE]" {
		s.st.complete = true
		return
	}
	typ := string(s.name)
	if typ == "message_stop" {
		s.st.complete = true
		return
	}
	sc := &s.sc
	sc.reset()
	sc.feed(s.data)
	sc.end()
	if !sc.complete {
		// Malformed JSON: skip the event, but an error event is still an error.
		if typ == "error" {
			s.st.err = &APIError{Type: "error", Message: truncate(string(s.data), 512)}
		}
		return
	}
	if typ == "" || typ == "message" {
		s.st.applyEvent(sc.rawString(fType), sc)
	} else {
		s.st.applyEvent(typ, sc)
	}
}

func (s *sseParser) resetEvent() {
	s.name = s.name[:0]
	if cap(s.data) > 64<<10 {
		s.data = nil
	}
	s.data = s.data[:0]
	s.nameOver, s.dataSeen, s.dataSkipped, s.over = false, false, false, false
}

func (s *sseParser) usage() Usage { return s.st.usage() }

// usageState gathers what a body reported, across the events of a stream.
type usageState struct {
	acc      usageAcc
	id       string
	model    string
	single   string // stop_reason or status
	choices  []choiceReason
	err      *APIError
	complete bool
	partial  bool
}

type choiceReason struct {
	index  int64
	reason string
}

func (st *usageState) applyBody(sc *jsonScanner) {
	st.takeIDModel(sc)
	st.takeUsage(sc)
	st.takeChoices(sc)
	st.takeString(&st.single, sc, fStatus)
	st.takeString(&st.single, sc, fStopReason)
	if e, ok := parseErrorObject(sc.raw(fError)); ok {
		st.err = errorPtr(e)
	}
	st.complete = sc.complete
	st.partial = st.partial || sc.partial
}

// applyEvent applies one SSE event whose data scanned as a whole JSON value.
func (st *usageState) applyEvent(typ string, sc *jsonScanner) {
	st.partial = st.partial || sc.partial
	switch typ {
	case "message_start", "message_delta":
		st.takeIDModel(sc)
		st.takeUsage(sc)
		st.takeString(&st.single, sc, fStopReason)
	case "message_stop":
		st.complete = true
	case "error":
		st.takeError(sc)
		if st.err == nil {
			st.err = &APIError{Type: "error"}
		}
	case "response.created", "response.in_progress":
		st.takeIDModel(sc)
		st.takeUsage(sc)
	case "response.completed", "response.incomplete":
		st.takeIDModel(sc)
		st.takeUsage(sc)
		st.takeString(&st.single, sc, fStatus)
		st.complete = true
	case "response.failed":
		st.takeIDModel(sc)
		st.takeUsage(sc)
		st.takeString(&st.single, sc, fStatus)
		st.takeError(sc)
		if st.err == nil {
			st.err = &APIError{Type: "response.failed"}
		}
	case "":
		// An OpenAI chat completion chunk (or an error chunk).
		if e, ok := parseErrorObject(sc.raw(fError)); ok {
			st.err = errorPtr(e)
		}
		st.takeIDModel(sc)
		st.takeChoices(sc)
		st.takeUsage(sc)
	}
	// Other types (content_block_*, ping, unknown) carry no usage.
}

func (st *usageState) takeIDModel(sc *jsonScanner) {
	st.takeString(&st.id, sc, fID)
	st.takeString(&st.model, sc, fModel)
}

// takeString sets *dst to the captured string field when it is a non-empty
// string, allocating only when the value changed.
func (st *usageState) takeString(dst *string, sc *jsonScanner, f field) {
	raw := sc.raw(f)
	if len(raw) < 3 || raw[0] != '"' {
		return
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		if v := raw[1 : len(raw)-1]; string(v) != *dst {
			*dst = string(v)
		}
		return
	}
	var v string
	if json.Unmarshal(raw, &v) == nil && v != "" {
		*dst = v
	}
}

func (st *usageState) takeUsage(sc *jsonScanner) {
	if raw := sc.raw(fUsage); len(raw) > 0 && raw[0] == '{' { // not null, as on most chat chunks
		st.acc.merge(raw)
	}
}

func (st *usageState) takeError(sc *jsonScanner) {
	if e, ok := parseErrorObject(sc.raw(fError)); ok {
		st.err = errorPtr(e)
		return
	}
	// The Responses API's error event: {"type":"error","code":…,"message":…}.
	e := APIError{Code: tolerantString(sc.raw(fCode)), Message: tolerantString(sc.raw(fMessage))}
	if e.Code != "" || e.Message != "" {
		e.Type = e.Code
		st.err = errorPtr(e)
	}
}

// errorPtr returns a pointer to a copy of e; taking &e of a variable
// declared in an if statement would put it on the heap on every call.
func errorPtr(e APIError) *APIError { return &e }

func (st *usageState) takeChoices(sc *jsonScanner) {
	for _, c := range sc.choices {
		if !c.hasReason {
			continue
		}
		idx := c.index
		if !c.hasIndex {
			idx = int64(c.pos)
		}
		i := slices.IndexFunc(st.choices, func(r choiceReason) bool { return r.index == idx })
		switch {
		case i >= 0:
			if st.choices[i].reason != c.reason {
				st.choices[i].reason = c.reason
			}
		case len(st.choices) < maxChoices:
			st.choices = append(st.choices, choiceReason{idx, c.reason})
		default:
			st.partial = true
		}
	}
}

func (st *usageState) usage() Usage {
	u := Usage{
		ResponseID:    st.id,
		ResponseModel: st.model,
		StreamError:   st.err,
		Complete:      st.complete,
		Partial:       st.partial,
	}
	st.acc.fill(&u)
	if len(st.choices) > 0 {
		cs := slices.Clone(st.choices)
		slices.SortStableFunc(cs, func(a, b choiceReason) int {
			switch {
			case a.index < b.index:
				return -1
			case a.index > b.index:
				return 1
			}
			return 0
		})
		u.FinishReasons = make([]string, len(cs))
		for i, c := range cs {
			u.FinishReasons[i] = c.reason
		}
	} else if st.single != "" {
		u.FinishReasons = []string{st.single}
	}
	return u
}

// usageAcc keeps the latest value of every usage field seen, under the
// provider's own name; fill normalizes them. Taking the latest value (not a
// sum) is right for Anthropic streams, whose message_delta output_tokens is
// cumulative and may repeat the input and cache counts.
type usageAcc struct {
	input, output, cacheRead, cacheCreation optInt // Anthropic; Responses API input/output
	prompt, completion                      optInt // OpenAI chat completions
	cached                                  optInt // *_tokens_details.cached_tokens
}

type optInt struct {
	v  int64
	ok bool
}

// UnmarshalJSON accepts a non-negative integer (or an integral float) and
// ignores anything else, so one malformed field does not lose the others.
func (o *optInt) UnmarshalJSON(b []byte) error {
	if v, ok := parseJSONInt(b); ok {
		*o = optInt{v, true}
	}
	return nil
}

type tokensDetails struct{ cached optInt }

func (d *tokensDetails) UnmarshalJSON(b []byte) error {
	var x struct {
		Cached optInt `json:"cached_tokens"`
	}
	if json.Unmarshal(b, &x) == nil {
		d.cached = x.Cached
	}
	return nil
}

func (a *usageAcc) merge(raw []byte) {
	var r struct {
		InputTokens              optInt        `json:"input_tokens"`
		OutputTokens             optInt        `json:"output_tokens"`
		CacheReadInputTokens     optInt        `json:"cache_read_input_tokens"`
		CacheCreationInputTokens optInt        `json:"cache_creation_input_tokens"`
		PromptTokens             optInt        `json:"prompt_tokens"`
		CompletionTokens         optInt        `json:"completion_tokens"`
		PromptTokensDetails      tokensDetails `json:"prompt_tokens_details"`
		InputTokensDetails       tokensDetails `json:"input_tokens_details"`
	}
	if json.Unmarshal(raw, &r) != nil {
		return
	}
	for _, f := range [...]struct{ dst, v *optInt }{
		{&a.input, &r.InputTokens},
		{&a.output, &r.OutputTokens},
		{&a.cacheRead, &r.CacheReadInputTokens},
		{&a.cacheCreation, &r.CacheCreationInputTokens},
		{&a.prompt, &r.PromptTokens},
		{&a.completion, &r.CompletionTokens},
		{&a.cached, &r.PromptTokensDetails.cached},
		{&a.cached, &r.InputTokensDetails.cached},
	} {
		if f.v.ok {
			*f.dst = *f.v
		}
	}
}

// fill normalizes the fields: OpenAI's prompt_tokens and the Responses API's
// input_tokens include the cached tokens, Anthropic's input_tokens does not.
// The field names present decide, not the provider.
func (a *usageAcc) fill(u *Usage) {
	u.Reported = a.input.ok || a.output.ok || a.cacheRead.ok || a.cacheCreation.ok ||
		a.prompt.ok || a.completion.ok || a.cached.ok
	u.OutputTokens = a.output.v
	if a.completion.ok {
		u.OutputTokens = a.completion.v
	}
	u.CacheCreationInputTokens = a.cacheCreation.v
	u.CacheReadInputTokens = a.cacheRead.v
	in := a.input.v
	if a.prompt.ok {
		in = a.prompt.v
	}
	if a.cached.ok {
		in -= a.cached.v
		if !a.cacheRead.ok {
			u.CacheReadInputTokens = a.cached.v
		}
	}
	u.InputTokens = max(in, 0)
}

// parseAPIError parses a provider error document:
// {"type":"error","error":{"type","message","details":{"error_code"}}} for
// Anthropic, {"error":{"message","type","code"}} for OpenAI. ok is false when
// b is not one.
func parseAPIError(b []byte) (APIError, bool) {
	var doc struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return APIError{}, false
	}
	return parseErrorObject(doc.Error)
}

// parseErrorObject parses the object under "error". Code is error.code or
// else Anthropic's error.details.error_code; a missing type (the Responses
// API sends only code and message) is taken from the code.
func parseErrorObject(raw []byte) (APIError, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return APIError{}, false
	}
	var e struct {
		Type    tolString `json:"type"`
		Message tolString `json:"message"`
		Code    tolString `json:"code"`
		Details details   `json:"details"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return APIError{}, false
	}
	out := APIError{Type: string(e.Type), Message: string(e.Message), Code: string(e.Code)}
	if out.Code == "" {
		out.Code = string(e.Details.code)
	}
	if out.Type == "" {
		out.Type = out.Code
	}
	return out, out.Type != "" || out.Message != ""
}

// tolString takes a JSON string or number as text and ignores anything else.
type tolString string

func (t *tolString) UnmarshalJSON(b []byte) error {
	*t = tolString(tolerantString(b))
	return nil
}

type details struct{ code tolString }

func (d *details) UnmarshalJSON(b []byte) error {
	var x struct {
		ErrorCode tolString `json:"error_code"`
	}
	if json.Unmarshal(b, &x) == nil {
		d.code = x.ErrorCode
	}
	return nil
}

func tolerantString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	switch c := b[0]; {
	case c == '"':
		var s string
		if json.Unmarshal(b, &s) == nil {
			return s
		}
	case c == '-' || c >= '0' && c <= '9':
		return string(b)
	}
	return ""
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

// parseJSONInt parses a non-negative JSON integer (an integral float such as
// 12.0 or 1e3 too); ok is false for anything else.
func parseJSONInt(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v int64
	for i, c := range b {
		if c < '0' || c > '9' || i >= 18 {
			return parseJSONFloatInt(b)
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

func parseJSONFloatInt(b []byte) (int64, bool) {
	if len(b) > 64 || (b[0] < '0' || b[0] > '9') {
		return 0, false
	}
	var f float64
	if json.Unmarshal(b, &f) != nil || f != math.Trunc(f) || f < 0 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
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

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isScalarByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		c == '-' || c == '+' || c == '.'
}

// indexEither returns the index of the first x or y in b, or -1. It searches
// in windows so that a y far beyond many x (or the other way round) does not
// make repeated calls quadratic.
func indexEither(b []byte, x, y byte) int {
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

func indexQuoteOrEscape(b []byte) int {
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
	if i := indexEither(b[16:], '"', '\\'); i >= 0 {
		return 16 + i
	}
	return -1
}

// The JSON scanner.
//
// jsonScanner reads JSON one byte at a time (strings in runs) and keeps only
// a fixed amount of state: the nesting depth, the container kind and key or
// index of the first jsonPathKeys levels, and the raw bytes of values found
// at the paths tollgate reads, each capped at maxCapture. A container that
// cannot hold such a path (message content, tool inputs, anything nested
// deeper than jsonPathKeys) or that is captured whole is skipped by counting
// brackets outside strings, so no document can grow the stack or the heap
// and most of a large body is passed over quickly. It is not a validator: it
// accepts some invalid documents (inside skipped containers anything
// bracket-balanced goes), but never misreads a valid one.

// field names a value the scanner captures.
type field uint8

const (
	fNone         field = iota
	fType               // type (an SSE event's data)
	fID                 // id, message.id, response.id
	fModel              // model, message.model, response.model
	fStopReason         // stop_reason, delta.stop_reason, message.stop_reason
	fStatus             // status, response.status
	fUsage              // usage, message.usage, response.usage
	fError              // error, response.error
	fCode               // code (the Responses API's error event)
	fMessage            // message when a string (the Responses API's error event)
	fChoiceIndex        // choices[*].index
	fChoiceFinish       // choices[*].finish_reason
	nFields
)

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

type jsonScanner struct {
	state  jstate
	depth  int
	arrays uint8 // bit i: the container at level i is an array
	skipTo int   // in jSkip: the depth at which the skipped container ends
	keys   [jsonPathKeys][jsonKeyMax]byte
	keyLen [jsonPathKeys]int // -1: no usable key
	index  [jsonPathKeys]int
	keyLvl int // level whose key is being read, or -1

	capField field
	capDepth int
	capPrim  bool // the capture is a string or scalar
	capOver  bool
	capBuf   []byte

	bufs     [nFields][]byte
	set      [nFields]bool
	choices  []choiceEntry
	complete bool
	partial  bool
}

type choiceEntry struct {
	pos       int
	index     int64
	hasIndex  bool
	reason    string
	hasReason bool
}

func (s *jsonScanner) reset() {
	s.state, s.depth, s.keyLvl, s.capField = jValue, 0, -1, fNone
	s.set = [nFields]bool{}
	s.choices = s.choices[:0]
	s.complete, s.partial = false, false
}

// raw returns the captured bytes of f, or nil.
func (s *jsonScanner) raw(f field) []byte {
	if !s.set[f] {
		return nil
	}
	return s.bufs[f]
}

// rawString returns f when it is a plain string (used for the event type).
func (s *jsonScanner) rawString(f field) string {
	raw := s.raw(f)
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	return jsonStringOf(raw, raw[1:len(raw)-1])
}

// end finishes a document at the end of the input: a top-level scalar ends
// there.
func (s *jsonScanner) end() {
	if s.state == jScalar && s.depth == 0 {
		s.endPrim()
		s.state, s.complete = jDone, true
	}
}

func (s *jsonScanner) feed(p []byte) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch s.state {
		case jBad:
			return
		case jDone:
			if !isSpace(c) {
				// Something after the value: not one JSON document.
				s.state, s.complete = jBad, false
				return
			}
		case jString, jSkipStr:
			j := indexQuoteOrEscape(p[i:])
			if j < 0 {
				s.strBytes(p[i:])
				return
			}
			s.strBytes(p[i : i+j])
			i += j
			c = p[i]
			s.capByte(c)
			if c == '\\' {
				s.state++
				continue
			}
			if s.state == jSkipStr {
				s.state = jSkip
				continue
			}
			if s.keyLvl != -2 { // a key
				s.keyLvl = -1
				s.state = jColon
				continue
			}
			s.keyLvl = -1
			s.endPrim()
			s.afterValue()
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
				s.keyLvl = -1
				if lvl := s.depth - 1; lvl < jsonPathKeys {
					s.keyLvl, s.keyLen[lvl] = lvl, 0
				}
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
				if s.arrays&(1<<lvl) == 0 {
					s.state = jKey
					continue
				}
				if lvl < jsonPathKeys {
					s.index[lvl]++
				}
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
				s.keyLvl = -1
				s.state = jSkipStr
			case '{', '[':
				s.depth++
			default: // '}', ']'
				if s.depth--; s.depth == s.skipTo {
					if s.capField != fNone && s.depth == s.capDepth {
						s.endCapture()
					}
					s.afterValue()
				}
			}
		}
	}
}

// strBytes takes a run of string contents (no closing quote).
func (s *jsonScanner) strBytes(b []byte) {
	if s.keyLvl >= 0 {
		lvl := s.keyLvl
		if n := s.keyLen[lvl]; n >= 0 && n+len(b) <= jsonKeyMax {
			s.keyLen[lvl] += copy(s.keys[lvl][n:], b)
		} else {
			s.keyLen[lvl] = -1
		}
	}
	s.capBytes(b)
}

func (s *jsonScanner) capBytes(b []byte) {
	if s.capField != fNone && !s.capOver && len(b) > 0 {
		if len(s.capBuf)+len(b) > maxCapture {
			s.capOver = true
		} else {
			s.capBuf = append(s.capBuf, b...)
		}
	}
}

// skipStops are the bytes that matter inside a skipped container.
var skipStops = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}

func (s *jsonScanner) capByte(c byte) {
	if s.capField != fNone && !s.capOver {
		if len(s.capBuf) >= maxCapture {
			s.capOver = true
		} else {
			s.capBuf = append(s.capBuf, c)
		}
	}
}

func (s *jsonScanner) startValue(c byte) {
	if s.capField == fNone {
		if f := s.classify(c); f != fNone {
			s.capField, s.capDepth, s.capOver = f, s.depth, false
			s.capPrim = c != '{' && c != '['
			s.capBuf = s.bufs[f][:0]
		}
	}
	s.capByte(c)
	switch {
	case c == '{' || c == '[':
		lvl := s.depth
		s.depth++
		if s.capField != fNone || !s.tracks(lvl) {
			// Captured whole, or nothing tollgate reads can be inside.
			s.skipTo, s.state = lvl, jSkip
			return
		}
		if c == '[' {
			s.arrays |= 1 << lvl
			s.state = jValueOrEnd
		} else {
			s.arrays &^= 1 << lvl
			s.state = jKeyOrEnd
		}
		if lvl < jsonPathKeys {
			s.keyLen[lvl], s.index[lvl] = -1, 0
		}
	case c == '"':
		s.keyLvl = -2 // a value, not a key
		s.state = jString
	case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
		s.state = jScalar
	default:
		s.state = jBad
	}
}

// tracks reports whether a container opening at level lvl can hold a path
// classify matches: the document, the message, response, delta and choices
// members, and the elements of choices.
func (s *jsonScanner) tracks(lvl int) bool {
	switch lvl {
	case 0:
		return true
	case 1:
		if s.arrays&1 == 0 {
			switch string(s.key(0)) {
			case "message", "response", "delta", "choices":
				return true
			}
		}
	case 2:
		return s.arrays&1 == 0 && s.arrays&2 != 0 && string(s.key(0)) == "choices"
	}
	return false
}

func (s *jsonScanner) close(c byte) {
	lvl := s.depth - 1
	if isArr := s.arrays&(1<<lvl) != 0; isArr != (c == ']') {
		s.state = jBad
		return
	}
	s.capByte(c)
	s.depth--
	if s.capField != fNone && !s.capPrim && s.depth == s.capDepth {
		s.endCapture()
	}
	s.afterValue()
}

func (s *jsonScanner) afterValue() {
	if s.depth == 0 {
		s.state, s.complete = jDone, true
		return
	}
	s.state = jAfter
}

func (s *jsonScanner) endPrim() {
	if s.capField != fNone && s.capPrim {
		s.endCapture()
	}
}

func (s *jsonScanner) endCapture() {
	f := s.capField
	s.capField = fNone
	s.bufs[f] = s.capBuf
	s.capBuf = nil
	if s.capOver {
		s.partial = true
		s.set[f] = false
		return
	}
	raw := s.bufs[f]
	switch f {
	case fChoiceIndex, fChoiceFinish:
		pos := s.index[1]
		n := len(s.choices)
		if n == 0 || s.choices[n-1].pos != pos {
			if n >= maxChoices {
				s.partial = true
				return
			}
			s.choices = append(s.choices, choiceEntry{pos: pos})
			n++
		}
		e := &s.choices[n-1]
		if f == fChoiceIndex {
			e.index, e.hasIndex = parseJSONInt(raw)
		} else if len(raw) >= 2 && raw[0] == '"' {
			e.reason = jsonStringOf(raw, raw[1:len(raw)-1])
			e.hasReason = e.reason != ""
		}
	default:
		s.set[f] = true
	}
}

func (s *jsonScanner) key(lvl int) []byte {
	n := s.keyLen[lvl]
	if n < 0 {
		return nil
	}
	return s.keys[lvl][:n]
}

// classify returns the field a value starting with c at the current path is
// captured as. Strings and scalars are captured only where tollgate wants a
// string or a number; usage and error are captured whole.
func (s *jsonScanner) classify(c byte) field {
	prim := c != '{' && c != '['
	isArr := func(lvl int) bool { return s.arrays&(1<<lvl) != 0 }
	switch s.depth {
	case 1:
		if isArr(0) {
			return fNone
		}
		switch string(s.key(0)) {
		case "usage":
			return fUsage
		case "error":
			return fError
		}
		if !prim {
			return fNone
		}
		switch string(s.key(0)) {
		case "type":
			return fType
		case "id":
			return fID
		case "model":
			return fModel
		case "stop_reason":
			return fStopReason
		case "status":
			return fStatus
		case "code":
			return fCode
		case "message":
			return fMessage
		}
	case 2:
		if isArr(0) || isArr(1) {
			return fNone
		}
		switch string(s.key(0)) {
		case "message", "response":
			switch string(s.key(1)) {
			case "usage":
				return fUsage
			case "error":
				return fError
			}
			if !prim {
				return fNone
			}
			switch string(s.key(1)) {
			case "id":
				return fID
			case "model":
				return fModel
			case "stop_reason":
				return fStopReason
			case "status":
				return fStatus
			}
		case "delta":
			if prim && string(s.key(1)) == "stop_reason" {
				return fStopReason
			}
		}
	case 3:
		if prim && !isArr(0) && isArr(1) && !isArr(2) && string(s.key(0)) == "choices" {
			switch string(s.key(2)) {
			case "index":
				return fChoiceIndex
			case "finish_reason":
				return fChoiceFinish
			}
		}
	}
	return fNone
}
