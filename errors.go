package tollgate

import (
	"errors"
	"fmt"
	"time"
)

// ErrOpen is matched (with errors.Is) by every error the breaker returns
// instead of sending a request.
var ErrOpen = errors.New("tollgate: circuit open")

// OpenError is returned for a request the breaker refused to send: in
// fail-fast mode (WithFailFast), after the spend cap was reached, and when
// waiting would outlast WithMaxPause or the request's deadline. It says when
// the breaker expects to let requests through again and why it opened.
// errors.Is(err, ErrOpen) reports true for it.
type OpenError struct {
	Key    Key       // the (provider, model family) whose breaker is open
	Until  time.Time // when the pause ends; zero when unknown
	Reason string    // why the breaker opened, e.g. "retry-after", "overloaded"
	// Err is the server's error that opened the breaker, when one did: the
	// *APIError of a spend-limit 429. Nil otherwise.
	Err error
}

func (e *OpenError) Error() string {
	reason := e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	if e.Until.IsZero() {
		return fmt.Sprintf("tollgate: circuit open for %s (%s)", e.Key, reason)
	}
	return fmt.Sprintf("tollgate: circuit open for %s until %s (%s)",
		e.Key, e.Until.UTC().Format(time.RFC3339Nano), reason)
}

// Unwrap returns Err, so that errors.As finds the server's *APIError.
func (e *OpenError) Unwrap() error { return e.Err }

// Is reports whether target is ErrOpen.
func (e *OpenError) Is(target error) bool { return target == ErrOpen }

// APIError is a provider's error object, as found in an error response body
// (`{"type":"error","error":{...}}` for Anthropic, `{"error":{...}}` for
// OpenAI) or in a mid-stream `event: error`.
type APIError struct {
	// Type is the provider's error type, e.g. "rate_limit_error",
	// "overloaded_error" (Anthropic) or "tokens", "server_error" (OpenAI).
	Type string
	// Message is the provider's human-readable message.
	Message string
	// Code is a machine-readable detail: Anthropic's error.details.error_code
	// (e.g. "enforced_spend_limit_reached") or OpenAI's error.code
	// (e.g. "rate_limit_exceeded"). Empty when absent.
	Code string
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s (%s): %s", e.Type, e.Code, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Type, e.Message)
}

// ErrQueueWait is matched (with errors.Is) by every *QueueWaitError.
var ErrQueueWait = errors.New("tollgate: queue wait cap reached")

// QueueWaitError is returned for an attempt that waited for tollgate's own
// pacing — its place in the Budget layer's queue, the refill its cost needs,
// a refill pause — as long as WithMaxQueueWait allows, or that the store or
// a pause showed would have to wait longer: it is not sent. It says how long
// the attempt waited and what for. errors.Is(err, ErrQueueWait) reports true
// for it. Without WithMaxQueueWait no attempt gets one.
type QueueWaitError struct {
	Key      Key      // the (provider, model family) whose queue it waited in
	Priority Priority // the call's priority class
	Tenant   string   // the call's tenant (shortened when long, see ContextWithTenant)
	// Waited is how long the attempt waited for pacing before it gave up;
	// Cap is WithMaxQueueWait's. Waited is below Cap when the attempt gave
	// up early, the rest of its wait being known to pass the cap.
	Waited, Cap time.Duration
	// Reason is what it was waiting for, e.g. "behind 12 attempts in the
	// queue", "input-tokens refill", "tokens refill" (a refill pause).
	Reason string
}

// Error says which call gave up, how long it waited, for what, and the cap.
func (e *QueueWaitError) Error() string {
	return fmt.Sprintf("tollgate: %s call gave up after waiting %s for %s (queue-wait cap %s): %s",
		e.Priority, e.Waited.Round(time.Millisecond), e.Key, e.Cap, e.Reason)
}

// Is reports whether target is ErrQueueWait.
func (e *QueueWaitError) Is(target error) bool { return target == ErrQueueWait }
