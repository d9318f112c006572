package tollgatetest

import (
	"net/http"
	"strconv"
	"time"
)

// A Fault is a misbehaviour the server applies to one request instead of, or
// on top of, its normal handling. Fields combine; they are applied in this
// order:
//
//  1. Delay is waited first (the request stays in flight; a client that
//     gives up ends it).
//  2. DropConnection: the connection is closed with no response at all.
//  3. SpendLimit: a 429 spend-limit error.
//  4. Status >= 400: an error response with that status.
//  5. Otherwise the request is served normally (it goes through the rate
//     limiter like any other and may get a 429), with MidStreamError or
//     DropMidBody applied to the 200 response.
//
// Only the "success variants" of step 5 consume rate-limit budget; the
// others never touch the buckets. The retry headers (RetryAfter,
// RetryAfterMS, ShouldRetry) and Header are added to whatever response is
// sent, including a 200, and BodyDelay slows whatever body is sent. Every fault is counted in Stats.Faults under its Kind,
// whether or not it ends up visible (a MidStreamError on a request that got
// a 429 is still counted).
type Fault struct {
	// Status is the HTTP status of an error response, e.g. 529 (Anthropic
	// overloaded_error), 500 (api_error), 502, 503, 504 (timeout_error), 408,
	// 409 (conflict_error), 400 (invalid_request_error), 429. The body has
	// the provider's shape and an error type that matches the status (see
	// ErrorType). Values below 400 mean no error status.
	Status int

	// ErrorType overrides the error type in the body (Anthropic error.type,
	// OpenAI error.type); empty means the one that matches Status.
	ErrorType string

	// Message overrides the error message in the body; empty means a
	// realistic default.
	Message string

	// RetryAfter, if non-empty, is sent verbatim as the retry-after header:
	// "2", "0.5", an HTTP date, or any garbage a test wants.
	RetryAfter string

	// RetryAfterMS, if non-empty, is sent verbatim as retry-after-ms.
	RetryAfterMS string

	// ShouldRetry, if non-empty, is sent verbatim as x-should-retry
	// ("true" or "false").
	ShouldRetry string

	// SpendLimit answers 429 with no retry-after (unless RetryAfter is set)
	// and the provider's spend-cap body: Anthropic rate_limit_error with
	// error.details.error_code "enforced_spend_limit_reached"; OpenAI
	// insufficient_quota. Status is ignored.
	SpendLimit bool

	// MidStreamError, on a streaming request, sends the 200 response's first
	// events (message_start, content_block_start, ping and about half of the
	// text deltas; OpenAI: the role chunk and half of the content chunks),
	// then an error event and ends the stream. Anthropic:
	//   event: error
	//   data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}
	// OpenAI: data: {"error":{"message":"…","type":"server_error",…}} with no
	// [DONE]. ErrorType and Message override the error's type and message.
	// MidStreamDeltas changes how many text deltas go first. Non-streaming
	// requests are served normally.
	MidStreamError bool

	// MidStreamDeltas is how many text deltas (OpenAI: content chunks) a
	// stream with MidStreamError or DropMidBody sends before it fails:
	//   - 0 (the default): about half of them, at least one when there are
	//     any;
	//   - n > 0: the first n, or all of them when the reply has fewer (the
	//     error or the drop then comes where content_block_stop, or the
	//     finish_reason chunk, would have);
	//   - negative: none; the stream fails right after its opening events
	//     (message_start, content_block_start and ping; OpenAI: the role
	//     chunk), before any text.
	// It changes nothing without MidStreamError or DropMidBody, nor for a
	// non-streaming reply (DropMidBody still sends half of its JSON).
	MidStreamDeltas int

	// DropConnection closes the connection before any response byte is
	// written; the client sees a connection error (EOF / reset).
	DropConnection bool

	// DropMidBody sends the 200 headers and part of the body (half of a JSON
	// reply, which declared its full Content-Length; for a stream the same
	// events MidStreamError sends before its error) and then aborts the
	// connection (panic(http.ErrAbortHandler)); the client sees an
	// unexpected EOF while reading the body.
	DropMidBody bool

	// Delay is waited before anything else.
	Delay time.Duration

	// BodyDelay slows the body of the response sent, whatever it is: a
	// stream waits BodyDelay before each event after the first (on top of
	// Config.StreamEventDelay); a JSON body (a reply, an error, a 429) is
	// written in two halves, the first flushed with the headers and the rest
	// BodyDelay later (DropMidBody: its half, then BodyDelay, then the
	// abort). The request stays in flight meanwhile, and a client that goes
	// away ends the wait, as for Delay.
	BodyDelay time.Duration

	// Header holds extra response headers, set verbatim on whatever response
	// is sent, after the server's own (rate-limit headers, request id, the
	// retry headers above and the limiter's retry-after), so they override
	// them: e.g. {"Anthropic-Ratelimit-Requests-Remaining": {"-5"}} or a
	// reset of "yesterday", to see how a client copes with malformed
	// headers. Names are canonicalized; a name with no values removes the
	// server's header. The body's framing headers (Content-Type,
	// Content-Length, Cache-Control) stay the server's.
	Header http.Header
}

// Kind names the fault for Stats.Faults, by the first of these that applies:
// "drop_connection", "spend_limit", "status_<Status>" (e.g. "status_529"),
// "drop_mid_body", "mid_stream_error", "delay", "body_delay", and "none"
// for a fault that changes nothing but headers (RetryAfter, Header, …).
func (f Fault) Kind() string {
	switch {
	case f.DropConnection:
		return "drop_connection"
	case f.SpendLimit:
		return "spend_limit"
	case f.Status >= 400:
		return "status_" + strconv.Itoa(f.Status)
	case f.DropMidBody:
		return "drop_mid_body"
	case f.MidStreamError:
		return "mid_stream_error"
	case f.Delay > 0:
		return "delay"
	case f.BodyDelay > 0:
		return "body_delay"
	}
	return "none"
}
