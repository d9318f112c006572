package usage

import (
	"bytes"
	"encoding/json"

	"github.com/tollgate-go/tollgate/internal/jsonscan"
)

// counts keeps the latest value of every usage field seen, under the
// provider's own name; fill normalizes them. Taking the latest value (not a
// sum) is right for Anthropic streams, whose message_delta output_tokens is
// cumulative and may repeat the input and cache counts.
type counts struct {
	input, output, cacheRead, cacheCreation optInt // Anthropic; Responses API input/output
	prompt, completion                      optInt // OpenAI chat completions
	cached                                  optInt // *_tokens_details.cached_tokens
}

type optInt struct {
	v  int64
	ok bool
}

// take keeps the value of one usage field, when it is a number.
func (a *counts) take(f int, raw []byte) {
	v, ok := jsonscan.ParseInt(raw)
	if !ok {
		return // one malformed field does not lose the others
	}
	switch f {
	case fInput:
		a.input = optInt{v, true}
	case fOutput:
		a.output = optInt{v, true}
	case fCacheRead:
		a.cacheRead = optInt{v, true}
	case fCacheCreation:
		a.cacheCreation = optInt{v, true}
	case fPrompt:
		a.prompt = optInt{v, true}
	case fCompletion:
		a.completion = optInt{v, true}
	case fCached:
		a.cached = optInt{v, true}
	}
}

// fill normalizes the fields: OpenAI's prompt_tokens and the Responses API's
// input_tokens include the cached tokens, Anthropic's input_tokens does not.
// The field names present decide, not the provider.
func (a *counts) fill(u *Usage) {
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

// ParseError parses a provider error document:
// {"type":"error","error":{"type","message","details":{"error_code"}}} for
// Anthropic, {"error":{"message","type","code"}} for OpenAI. ok is false when
// b is not one.
func ParseError(b []byte) (Error, bool) {
	var doc struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return Error{}, false
	}
	return parseErrorObject(doc.Error)
}

// parseErrorObject parses the object under "error". Code is error.code or
// else Anthropic's error.details.error_code; a missing type (the Responses
// API sends only code and message) is taken from the code.
func parseErrorObject(raw []byte) (Error, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return Error{}, false
	}
	var e struct {
		Type    tolString `json:"type"`
		Message tolString `json:"message"`
		Code    tolString `json:"code"`
		Details details   `json:"details"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return Error{}, false
	}
	out := Error{Type: string(e.Type), Message: string(e.Message), Code: string(e.Code)}
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
