package tollgatetest

import (
	"encoding/json"
	"strings"
	"unicode"
)

// CountTokens returns the number of tokens in text under the package's
// tokenizer: every maximal run of letters and digits (unicode.IsLetter,
// unicode.IsDigit) is one token, every other rune that is not white space
// (unicode.IsSpace) is one token of its own, and white space costs nothing.
//
// So "Hello, world!" is 4 tokens, "input_schema" is 3, "" and "  \n" are 0.
// The rule is deterministic and easy to compute by hand; it does not try to
// match any provider's real tokenizer.
func CountTokens(text string) int {
	n := 0
	inWord := false
	for _, r := range text {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			if !inWord {
				n++
				inWord = true
			}
		case unicode.IsSpace(r):
			inWord = false
		default:
			n++
			inWord = false
		}
	}
	return n
}

// countJSON counts the tokens of a JSON value's text.
func countJSON(raw json.RawMessage) int { return CountTokens(string(raw)) }

// countValue counts the tokens of an arbitrary decoded JSON value as its JSON
// text.
func countValue(v any) int {
	if v == nil {
		return 0
	}
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return CountTokens(string(b))
}

// anthropicContentTokens counts an Anthropic content value: a string, or an
// array of blocks.
func anthropicContentTokens(v any) int {
	switch c := v.(type) {
	case string:
		return CountTokens(c)
	case []any:
		n := 0
		for _, blk := range c {
			n += anthropicBlockTokens(blk)
		}
		return n
	}
	return 0
}

func anthropicBlockTokens(v any) int {
	m, ok := v.(map[string]any)
	if !ok {
		return 0
	}
	typ, _ := m["type"].(string)
	switch typ {
	case "tool_use", "server_tool_use":
		name, _ := m["name"].(string)
		return CountTokens(name) + countValue(m["input"])
	case "tool_result":
		return anthropicContentTokens(m["content"])
	case "thinking":
		s, _ := m["thinking"].(string)
		return CountTokens(s)
	}
	if s, ok := m["text"].(string); ok {
		return CountTokens(s)
	}
	return 0
}

// eachToken calls f with every token of text, in order, as CountTokens
// counts them: maximal runs of letters and digits, and every other rune
// that is not white space.
func eachToken(text string, f func(string)) {
	start := -1 // start of the current word
	for i, r := range text {
		word := unicode.IsLetter(r) || unicode.IsDigit(r)
		if start >= 0 && !word {
			f(text[start:i])
			start = -1
		}
		switch {
		case word:
			if start < 0 {
				start = i
			}
		case unicode.IsSpace(r):
		default:
			f(string(r))
		}
	}
	if start >= 0 {
		f(text[start:])
	}
}

// walkOpenAIPrompt calls tok with every token of a chat completion prompt
// and boundary between its parts: each tool's function name, description
// and parameters; then each message (boundary: its role): its content (a
// string, or the text of its text parts), the name and arguments of its
// tool calls.
func walkOpenAIPrompt(req *openAIRequest, tok func(string), boundary func(string)) {
	for _, t := range req.Tools {
		boundary("tool")
		eachToken(t.Function.Name, tok)
		eachToken(t.Function.Description, tok)
		eachToken(string(t.Function.Parameters), tok)
	}
	for _, m := range req.Messages {
		boundary(m.Role)
		var c any
		if len(m.Content) > 0 && json.Unmarshal(m.Content, &c) == nil {
			switch c := c.(type) {
			case string:
				eachToken(c, tok)
			case []any:
				for _, p := range c {
					if pm, ok := p.(map[string]any); ok {
						if s, ok := pm["text"].(string); ok {
							eachToken(s, tok)
						}
					}
				}
			}
		}
		for _, tc := range m.ToolCalls {
			eachToken(tc.Function.Name, tok)
			eachToken(tc.Function.Arguments, tok)
		}
	}
}

// vocabulary is what generated replies are made of: letter-only words, one
// token each.
var vocabulary = strings.Fields(`lorem ipsum dolor sit amet consectetur adipiscing elit sed do
eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud
exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat`)

// GeneratedText returns the text of an n-token reply: the first n words of a
// fixed lorem-ipsum word list (cycled), separated by single spaces.
// CountTokens(GeneratedText(n)) == n for every n >= 0, and streamed replies
// are split on word boundaries so their deltas concatenate to exactly this.
func GeneratedText(n int) string { return textRange(0, n) }

// textRange is the part of GeneratedText(end) that the words [start, end)
// contribute, including the space before each word but the first.
func textRange(start, end int) string {
	var sb strings.Builder
	for i := start; i < end; i++ {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(vocabulary[i%len(vocabulary)])
	}
	return sb.String()
}
