// Package usage reads what a provider reports in a response body — token
// usage, ids, finish reasons, errors — from the bytes as they pass to the
// caller, without buffering the body: a JSON body goes through a streaming
// scanner, an event stream through an SSE parser whose events are scanned
// one by one. Every buffer has a hard cap, whatever the body holds.
package usage

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/tollgate-go/tollgate/internal/jsonscan"
	"github.com/tollgate-go/tollgate/internal/sse"
)

// Usage is what a response body reported, normalized across providers so
// that the fields mean the same thing for both.
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
	StreamError *Error
	// Complete says the body reached its natural end: a whole JSON document,
	// message_stop, data: [DONE], response.completed or response.incomplete.
	Complete bool
	// Partial says part of the body exceeded a parser cap (an SSE event over
	// 1 MiB, a value over 64 KiB, too many choices) and was skipped, so the
	// counts may be incomplete.
	Partial bool
	// OutputBytes is how many bytes of an event stream its output events
	// (content deltas) took, framing included: with OutputTokens, what the
	// stream carries per output token. Zero for a body that is no stream.
	OutputBytes int64
}

// TotalInputTokens returns all input tokens, cached or not.
func (u Usage) TotalInputTokens() int64 {
	return u.InputTokens + u.CacheReadInputTokens + u.CacheCreationInputTokens
}

// Error is a provider's error object.
type Error struct {
	Type    string // e.g. "rate_limit_error", "overloaded_error"; OpenAI "tokens", "server_error"
	Message string
	// Code is Anthropic's error.details.error_code or OpenAI's error.code.
	Code string
}

// A Sink is told what a Reader learns, never while a lock is held.
type Sink interface {
	// FirstByte is called once, when the first bytes reach the caller.
	FirstByte()
	// Output is called at most once, when an event stream shows the first
	// output (a content delta): the stream is under way, not refused.
	Output()
	// Produced is called when an event stream's output events have taken
	// more bytes (Usage.OutputBytes), with their total so far: at most once
	// per Read, after Output.
	Produced(outputBytes int64)
	// Done is called exactly once, with the usage seen: at EOF (err nil),
	// on a read error (err is that error), or on Close (err nil), whichever
	// comes first.
	Done(u Usage, err error)
}

// NewReader wraps a response body so that what it reports is parsed from
// the bytes as the caller reads them. Every Read passes the bytes straight
// through; the parser only looks at them. contentType picks the parser:
// text/event-stream is parsed as SSE, application/json and any +json type
// (or no type and a body starting with '{') as JSON, anything else is
// passed through unparsed. Close is idempotent and closes body; a Close
// concurrent with a Read is safe.
func NewReader(body io.ReadCloser, contentType string, sink Sink) io.ReadCloser {
	r := &reader{body: body, sink: sink}
	switch mt := mediaType(contentType); {
	case mt == "text/event-stream":
		r.parser = newSSEParser()
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		r.parser = &jsonParser{}
	case mt == "":
		r.parser = &sniffParser{}
	}
	return r
}

// IsEventStream reports whether a content type is text/event-stream.
func IsEventStream(contentType string) bool { return mediaType(contentType) == "text/event-stream" }

func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

type parser interface {
	feed(p []byte)
	usage() Usage
	output() bool       // whether output has been seen
	outputBytes() int64 // the bytes output events took so far
}

type reader struct {
	body io.ReadCloser
	sink Sink

	mu       sync.Mutex
	parser   parser // nil: pass-through
	started  bool   // FirstByte was called
	outputAt bool   // Output was called
	produced int64  // the output bytes Produced was last told
	fired    bool   // Done was called

	closeOnce sync.Once
	closeErr  error
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	r.mu.Lock()
	if r.fired {
		r.mu.Unlock()
		return n, err
	}
	first := n > 0 && !r.started
	r.started = r.started || n > 0
	if n > 0 && r.parser != nil {
		r.parser.feed(p[:n])
	}
	output := !r.outputAt && r.parser != nil && r.parser.output()
	r.outputAt = r.outputAt || output
	produced := int64(0)
	if r.parser != nil && r.parser.outputBytes() > r.produced {
		r.produced = r.parser.outputBytes()
		produced = r.produced
	}
	var u Usage
	done := err != nil
	if done {
		u = r.fire()
	}
	r.mu.Unlock()
	if first && r.sink != nil {
		r.sink.FirstByte()
	}
	if output && r.sink != nil {
		r.sink.Output()
	}
	if produced > 0 && r.sink != nil {
		r.sink.Produced(produced)
	}
	if done && r.sink != nil {
		if err == io.EOF {
			r.sink.Done(u, nil)
		} else {
			r.sink.Done(u, err)
		}
	}
	return n, err
}

// fire marks Done as called and returns the usage; r.mu must be held.
func (r *reader) fire() Usage {
	r.fired = true
	var u Usage
	if r.parser != nil {
		u = r.parser.usage()
		r.parser = nil
	}
	return u
}

func (r *reader) Close() error {
	r.mu.Lock()
	fire := !r.fired
	var u Usage
	if fire {
		u = r.fire()
	}
	r.mu.Unlock()
	if fire && r.sink != nil {
		r.sink.Done(u, nil)
	}
	r.closeOnce.Do(func() { r.closeErr = r.body.Close() })
	return r.closeErr
}

// sniffParser decides between JSON and pass-through from the first byte
// when the response has no content type.
type sniffParser struct {
	decided bool
	json    *jsonParser
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
			s.json = &jsonParser{}
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

func (s *sniffParser) output() bool       { return false }
func (s *sniffParser) outputBytes() int64 { return 0 }

// jsonParser reads a non-streaming response.
type jsonParser struct {
	sc      *jsonscan.Scanner
	st      state
	applied bool
}

// feed scans b. After the top-level value closes the scanner only checks
// that nothing but white space follows, so that Complete means "one whole
// JSON document" however the body was cut into Reads.
func (p *jsonParser) feed(b []byte) {
	if p.sc == nil {
		p.sc = getScanner()
	}
	p.sc.Feed(b)
}

func (p *jsonParser) usage() Usage {
	if !p.applied && p.sc != nil {
		p.applied = true
		p.sc.End()
		p.st.applyBody(p.sc)
		putScanner(p.sc)
		p.sc = nil
	}
	return p.st.usage()
}

// scanners are reused: a Scanner's buffers outlive the body it read.
var scanners = sync.Pool{New: func() any { return jsonscan.New(paths) }}

func getScanner() *jsonscan.Scanner {
	sc := scanners.Get().(*jsonscan.Scanner)
	sc.Reset()
	return sc
}

func putScanner(sc *jsonscan.Scanner) { scanners.Put(sc) }

func (p *jsonParser) output() bool       { return false }
func (p *jsonParser) outputBytes() int64 { return 0 }

// sseParser reads a text/event-stream response: the events of Anthropic's
// Messages API, OpenAI's chat completions and the Responses API.
type sseParser struct {
	frames *sse.Parser
	sc     *jsonscan.Scanner // reused for the data of each event
	st     state
	out    bool  // an event carried output
	outLen int64 // the bytes of the stream the events that carried output took
}

func newSSEParser() *sseParser {
	p := &sseParser{sc: getScanner()}
	p.frames = sse.New(p)
	return p
}

func (p *sseParser) feed(b []byte) { p.frames.Feed(b) }

// usage is called once, when the body ends.
func (p *sseParser) usage() Usage {
	if p.sc != nil {
		putScanner(p.sc)
		p.sc = nil
	}
	p.st.partial = p.st.partial || p.frames.Dropped
	u := p.st.usage()
	u.OutputBytes = p.outLen
	return u
}

func (p *sseParser) output() bool       { return p.out }
func (p *sseParser) outputBytes() int64 { return p.outLen }

// Wants implements sse.Handler.
func (p *sseParser) Wants(name []byte) bool { return readEvent(name) }

// Event implements sse.Handler: it applies one event.
func (p *sseParser) Event(name, data []byte) {
	if p.apply(name, data) || outputEvent(name) {
		p.out = true
		p.outLen += int64(p.frames.Size())
	}
}

// apply reads one event, and reports whether its data showed it carried
// output.
func (p *sseParser) apply(name, data []byte) (output bool) {
	if data == nil {
		return false
	}
	if string(data) == "[DONE]" || string(name) == "message_stop" {
		p.st.complete = true
		return false
	}
	sc := p.sc
	sc.Reset()
	sc.Feed(data)
	sc.End()
	if !sc.Complete() {
		// Malformed JSON: skip the event, but an error event is still an error.
		if string(name) == "error" {
			p.st.err = &Error{Type: "error", Message: truncate(string(data), 512)}
		}
		return false
	}
	typ := string(name)
	if typ == "" || typ == "message" {
		typ = p.st.eventType(sc)
		output = outputEvent([]byte(typ))
	}
	return p.st.applyEvent(typ, sc) || output
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// maxChoices bounds the choices whose finish reason is kept.
const maxChoices = 64

// state gathers what a body reported, across the events of a stream.
type state struct {
	acc      counts
	id       string
	model    string
	single   string // stop_reason or status
	choices  []choice
	err      *Error
	complete bool
	partial  bool

	// Of the value being applied: the raw error object, code and message.
	errRaw, code, message []byte
}

type choice struct {
	elem, index int
	hasIndex    bool
	reason      string
}

// eventType returns the "type" the scanner captured, as a string.
func (st *state) eventType(sc *jsonscan.Scanner) string {
	for _, c := range sc.Captures() {
		if c.Field == fType {
			return stringOf(c.Raw)
		}
	}
	return ""
}

// A fieldSet is the fields one kind of document is read for, a bit per
// field.
type fieldSet uint32

func fields(fs ...int) fieldSet {
	var set fieldSet
	for _, f := range fs {
		set |= 1 << f
	}
	return set
}

// bodyReads are the fields a whole JSON body is read for.
var bodyReads = fields(fID, fModel, fStopReason, fStatus, fError, fChoiceIndex, fChoiceFinish) | usageReads

// usageReads are the fields of a usage object.
var usageReads = fields(fInput, fOutput, fCacheRead, fCacheCreation, fPrompt, fCompletion, fCached)

// eventReads says which fields an SSE event is read for, by its type; ""
// is an OpenAI chat chunk (an event with no type).
var eventReads = map[string]fieldSet{
	"message_stop":         0,
	"message_start":        fields(fID, fModel, fStopReason) | usageReads,
	"message_delta":        fields(fID, fModel, fStopReason) | usageReads,
	"error":                fields(fError, fCode, fMessage),
	"response.created":     fields(fID, fModel) | usageReads,
	"response.in_progress": fields(fID, fModel) | usageReads,
	"response.completed":   fields(fID, fModel, fStatus) | usageReads,
	"response.incomplete":  fields(fID, fModel, fStatus) | usageReads,
	"response.failed":      fields(fID, fModel, fStatus, fError, fCode, fMessage) | usageReads,
	"":                     fields(fID, fModel, fError, fChoiceIndex, fChoiceFinish, fChoiceContent, fChoiceToolCall) | usageReads,
}

// apply takes the values of set that one scanned document holds. It
// reports whether the document carried output (a chat chunk's content or
// tool call).
func (st *state) apply(set fieldSet, sc *jsonscan.Scanner) (output bool) {
	st.partial = st.partial || sc.Partial()
	st.errRaw, st.code, st.message = nil, nil, nil
	var stop, status string
	var chunk []choice // this document's choices, by element
	for _, c := range sc.Captures() {
		if set&(1<<c.Field) == 0 {
			continue
		}
		switch c.Field {
		case fID:
			takeString(&st.id, c.Raw)
		case fModel:
			takeString(&st.model, c.Raw)
		case fStopReason:
			stop = stringOf(c.Raw)
		case fStatus:
			status = stringOf(c.Raw)
		case fInput, fOutput, fCacheRead, fCacheCreation, fPrompt, fCompletion, fCached:
			st.acc.take(c.Field, c.Raw)
		case fError:
			st.errRaw = c.Raw
		case fCode:
			st.code = c.Raw
		case fMessage:
			st.message = c.Raw
		case fChoiceIndex, fChoiceFinish:
			i := slices.IndexFunc(chunk, func(ch choice) bool { return ch.elem == c.Elem })
			if i < 0 {
				chunk = append(chunk, choice{elem: c.Elem, index: c.Elem})
				i = len(chunk) - 1
			}
			if c.Field == fChoiceIndex {
				if v, ok := jsonscan.ParseInt(c.Raw); ok {
					chunk[i].index, chunk[i].hasIndex = int(min(v, math.MaxInt32)), true
				}
			} else {
				chunk[i].reason = stringOf(c.Raw)
			}
		case fChoiceContent:
			output = output || len(stringOf(c.Raw)) > 0
		case fChoiceToolCall:
			output = true
		}
	}
	// A stop reason says more than a status (a body has one or the other).
	for _, v := range []string{status, stop} {
		if v != "" && v != st.single {
			st.single = v
		}
	}
	for _, ch := range chunk {
		if ch.reason != "" {
			st.takeChoice(ch)
		}
	}
	return output
}

// applyBody applies a whole JSON body.
func (st *state) applyBody(sc *jsonscan.Scanner) {
	st.apply(bodyReads, sc)
	if e, ok := st.errorObject(); ok {
		st.err = &e
	}
	st.complete = sc.Complete()
}

// applyEvent applies one SSE event whose data scanned as a whole JSON
// value, and reports whether it carried output. Events of other types
// (content_block_*, ping, unknown ones) carry nothing to read.
func (st *state) applyEvent(typ string, sc *jsonscan.Scanner) bool {
	set, ok := eventReads[typ]
	if !ok {
		return false
	}
	output := st.apply(set, sc)
	switch typ {
	case "message_stop":
		st.complete = true
	case "error":
		st.takeError()
		if st.err == nil {
			st.err = &Error{Type: "error"}
		}
	case "response.completed", "response.incomplete":
		st.complete = true
	case "response.failed":
		st.takeError()
		if st.err == nil {
			st.err = &Error{Type: "response.failed"}
		}
	case "":
		// An OpenAI chat completion chunk, or an error chunk.
		if e, ok := st.errorObject(); ok {
			st.err = &e
		}
	}
	return output
}

// errorObject parses the error object of the value just applied.
func (st *state) errorObject() (Error, bool) { return parseErrorObject(st.errRaw) }

func (st *state) takeError() {
	if e, ok := st.errorObject(); ok {
		st.err = &e
		return
	}
	// The Responses API's error event: {"type":"error","code":…,"message":…}.
	e := Error{Code: tolerantString(st.code), Message: tolerantString(st.message)}
	if e.Code != "" || e.Message != "" {
		e.Type = e.Code
		st.err = &e
	}
}

func (st *state) takeChoice(c choice) {
	idx := c.index
	i := slices.IndexFunc(st.choices, func(r choice) bool { return r.index == idx })
	switch {
	case i >= 0:
		st.choices[i].reason = c.reason
	case len(st.choices) < maxChoices:
		st.choices = append(st.choices, choice{index: idx, reason: c.reason})
	default:
		st.partial = true
	}
}

// takeString sets *dst to a captured non-empty string, allocating only when
// the value changed.
func takeString(dst *string, raw []byte) {
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

// stringOf returns the value of a captured JSON string, or "".
func stringOf(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func (st *state) usage() Usage {
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
		slices.SortStableFunc(cs, func(a, b choice) int { return a.index - b.index })
		u.FinishReasons = make([]string, len(cs))
		for i, c := range cs {
			u.FinishReasons[i] = c.reason
		}
	} else if st.single != "" {
		u.FinishReasons = []string{st.single}
	}
	return u
}
