package usage

import (
	"slices"

	"github.com/tollgate-go/tollgate/internal/jsonscan"
)

// The values read from a response body, by what they mean.
const (
	fType           = iota // an event's type (SSE data without an event name)
	fID                    // the response's id
	fModel                 // the model that answered
	fStopReason            // Anthropic's stop_reason
	fStatus                // the Responses API's status
	fError                 // an error object
	fCode                  // the Responses API's error event: code
	fMessage               // the Responses API's error event: message
	fChoiceIndex           // a chat choice's index
	fChoiceFinish          // a chat choice's finish_reason
	fChoiceContent         // a chunk's text (output)
	fChoiceToolCall        // a chunk's tool call (output)
	// The fields of a usage object, wherever it is (usage, message.usage,
	// response.usage), under the provider's own names.
	fInput         // input_tokens: Anthropic's uncached input; the Responses API's whole input
	fOutput        // output_tokens
	fCacheRead     // cache_read_input_tokens
	fCacheCreation // cache_creation_input_tokens
	fPrompt        // prompt_tokens (OpenAI chat), cached included
	fCompletion    // completion_tokens
	fCached        // prompt_tokens_details.cached_tokens, input_tokens_details.cached_tokens
)

// usagePaths are the usage object's fields, relative to it.
var usagePaths = []jsonscan.Path{
	{Path: "input_tokens", Field: fInput},
	{Path: "output_tokens", Field: fOutput},
	{Path: "cache_read_input_tokens", Field: fCacheRead},
	{Path: "cache_creation_input_tokens", Field: fCacheCreation},
	{Path: "prompt_tokens", Field: fPrompt},
	{Path: "completion_tokens", Field: fCompletion},
	{Path: "prompt_tokens_details.cached_tokens", Field: fCached},
	{Path: "input_tokens_details.cached_tokens", Field: fCached},
}

// under returns ps with prefix before each path.
func under(prefix string, ps []jsonscan.Path) []jsonscan.Path {
	out := make([]jsonscan.Path, len(ps))
	for i, p := range ps {
		out[i] = p
		out[i].Path = prefix + "." + p.Path
	}
	return out
}

// paths is the one table of where the providers put what tollgate reads:
// one JSON value per row, whatever the body (a whole response, or the data
// of one SSE event). Rows of all providers live together: the shapes tell
// them apart, so a body is read the same way whatever its route claimed.
var paths = jsonscan.Compile(slices.Concat(under("usage", usagePaths), under("message.usage", usagePaths),
	under("response.usage", usagePaths), []jsonscan.Path{
		// Anthropic Messages: a message, a message_start event (message.*), a
		// message_delta event (delta.stop_reason, usage), an error body or
		// event (error).
		{Path: "type", Field: fType},
		{Path: "id", Field: fID},
		{Path: "model", Field: fModel},
		{Path: "stop_reason", Field: fStopReason},
		{Path: "error", Field: fError, Kind: jsonscan.Whole},
		{Path: "message.id", Field: fID},
		{Path: "message.model", Field: fModel},
		{Path: "message.stop_reason", Field: fStopReason},
		{Path: "delta.stop_reason", Field: fStopReason},

		// OpenAI chat completions: a completion, or a chunk of a stream.
		{Path: "choices[].index", Field: fChoiceIndex},
		{Path: "choices[].finish_reason", Field: fChoiceFinish},
		{Path: "choices[].delta.content", Field: fChoiceContent},
		{Path: "choices[].delta.tool_calls[].index", Field: fChoiceToolCall},

		// OpenAI Responses API: a response, its stream's response.* events, and
		// its error event ({"type":"error","code":…,"message":…}; "message" is
		// captured where it is a string).
		{Path: "status", Field: fStatus},
		{Path: "code", Field: fCode},
		{Path: "message", Field: fMessage},
		{Path: "response.id", Field: fID},
		{Path: "response.model", Field: fModel},
		{Path: "response.status", Field: fStatus},
		{Path: "response.error", Field: fError, Kind: jsonscan.Whole},
	}))

// The SSE events whose data is read; the data of others (content deltas,
// pings, unknown events) is not kept.
func readEvent(name []byte) bool {
	switch string(name) {
	case "", "message", // no name (OpenAI chat chunks): the data's "type" decides
		"message_start", "message_delta", "message_stop", "error",
		"response.created", "response.in_progress", "response.completed",
		"response.incomplete", "response.failed":
		return true
	}
	return false
}

// outputEvent reports whether an SSE event of that name carries output: a
// stream that sent one is under way, not refused.
func outputEvent(name []byte) bool {
	switch string(name) {
	case "content_block_delta", // Anthropic
		"response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
		"response.reasoning_summary_text.delta", "response.reasoning_text.delta": // Responses API
		return true
	}
	return false
}
