// Package peers builds the clients the fleet compares: the official
// Anthropic SDK alone, the SDK behind a hand-made queue, go-retryablehttp,
// failsafe-go, and tollgate. Each is set up the way its documentation
// recommends for a rate-limited API, as a careful user would.
//
// Every client sends its HTTP attempts through the fleet's transport
// (fleet.Env.Transport) instead of a pool of its own: that is where the fleet
// counts attempts and stops the run; it changes nothing the clients decide.
package peers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/failsafehttp"
	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"github.com/hashicorp/go-retryablehttp"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"

	"github.com/tollgate-go/tollgate/internal/fleet"
)

// The clients' names.
const (
	NameSDK            = "sdk"
	NameQueue4         = "queue4"
	NameRetryableHTTP  = "retryablehttp"
	NameFailsafe       = "failsafe"
	NameTollgate       = "tollgate"
	NameTollgateLimits = "tollgate+limits"
)

// Names lists every client ByName knows, in the order the tables show them.
func Names() []string {
	return []string{NameSDK, NameQueue4, NameRetryableHTTP, NameFailsafe, NameTollgate, NameTollgateLimits}
}

// ByName returns the client of that name.
func ByName(name string) (fleet.Client, error) {
	switch name {
	case NameSDK:
		return SDK(), nil
	case NameQueue4:
		return Queue(4), nil
	case NameRetryableHTTP:
		return RetryableHTTP(DefaultRetryableHTTPRetries), nil
	case NameFailsafe:
		return Failsafe(), nil
	case NameTollgate:
		return Tollgate(false), nil
	case NameTollgateLimits:
		return Tollgate(true), nil
	}
	return fleet.Client{}, fmt.Errorf("unknown client %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Parse turns a comma-separated list of names into clients, in that order,
// each once.
func Parse(list string) ([]fleet.Client, error) {
	var out []fleet.Client
	var seen []string
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if slices.Contains(seen, name) {
			return nil, fmt.Errorf("client %q named twice", name)
		}
		c, err := ByName(name)
		if err != nil {
			return nil, err
		}
		seen = append(seen, name)
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no clients named")
	}
	return out, nil
}

// sdk returns the official client for env with the given HTTP client and
// options after the defaults.
func sdk(env fleet.Env, hc *http.Client, opts ...option.RequestOption) anthropic.Client {
	return anthropic.NewClient(append([]option.RequestOption{
		option.WithBaseURL(env.BaseURL),
		option.WithAPIKey(env.APIKey),
		option.WithHTTPClient(hc),
	}, opts...)...)
}

// openaiSDK returns openai-go's client for env with the given HTTP client,
// with its own retries unless noRetries, for a fleet that calls the OpenAI
// API (fleet.APIOpenAI).
func openaiSDK(env fleet.Env, hc *http.Client, noRetries bool) *openai.Client {
	opts := []openaioption.RequestOption{
		openaioption.WithBaseURL(strings.TrimSuffix(env.BaseURL, "/") + "/v1"),
		openaioption.WithAPIKey(env.APIKey),
		openaioption.WithHTTPClient(hc),
	}
	if noRetries {
		opts = append(opts, openaioption.WithMaxRetries(0))
	}
	c := openai.NewClient(opts...)
	return &c
}

// SDK is the official SDK alone: its default two retries, honouring
// retry-after; its default HTTP client (a plain transport).
func SDK() fleet.Client {
	return fleet.Client{Name: NameSDK, New: func(env fleet.Env) (*fleet.Target, error) {
		hc := &http.Client{Transport: env.Transport}
		return &fleet.Target{Client: sdk(env, hc), OpenAI: openaiSDK(env, hc, false)}, nil
	}}
}

// Queue is the common hand-made fix: at most n calls at a time (a
// semaphore around each call), with the SDK's own retries.
func Queue(n int) fleet.Client {
	return fleet.Client{Name: fmt.Sprintf("queue%d", n), New: func(env fleet.Env) (*fleet.Target, error) {
		sem := make(chan struct{}, n)
		hc := &http.Client{Transport: env.Transport}
		return &fleet.Target{
			Client: sdk(env, hc),
			OpenAI: openaiSDK(env, hc, false),
			Wrap: func(ctx context.Context, do func(context.Context) error) error {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return ctx.Err()
				}
				defer func() { <-sem }()
				return do(ctx)
			},
		}, nil
	}}
}

// DefaultRetryableHTTPRetries is the RetryMax the retryablehttp client gets.
const DefaultRetryableHTTPRetries = 4

// RetryableHTTP is go-retryablehttp's standard client as the SDK's HTTP
// client, with the SDK's retries off: its default policy (retry connection
// errors, 429 and 5xx but 501) and backoff (retry-after on 429 and 503,
// else 1 s·2ⁿ up to 30 s), retryMax retries. Its logger is off, to keep the
// output readable; that changes no decision.
func RetryableHTTP(retryMax int) fleet.Client {
	return fleet.Client{Name: NameRetryableHTTP, New: func(env fleet.Env) (*fleet.Target, error) {
		rc := retryablehttp.NewClient()
		rc.HTTPClient = &http.Client{Transport: env.Transport}
		rc.RetryMax = retryMax
		rc.Logger = nil
		hc := rc.StandardClient()
		return &fleet.Target{
			Client: sdk(env, hc, option.WithMaxRetries(0)),
			OpenAI: openaiSDK(env, hc, true),
			Classify: func(err error) string {
				if strings.Contains(err.Error(), "giving up after") {
					return "retries_exhausted"
				}
				return ""
			},
		}, nil
	}}
}

// Failsafe retry settings: more retries than the SDK's two, exponential
// backoff from 1 s to 30 s when the server gives no retry-after, ±250 ms of
// jitter so that agents told the same retry-after do not all come back in
// the same instant.
const (
	FailsafeRetries  = 6
	FailsafeDelay    = time.Second
	FailsafeMaxDelay = 30 * time.Second
	FailsafeJitter   = 250 * time.Millisecond
)

// Failsafe is failsafe-go set up as a careful user would for an API with a
// requests-per-minute limit: failsafehttp's retry policy (connection errors,
// 429 and 5xx but 501; the server's retry-after honoured on 429 and 503)
// with more retries and backoff, around a smooth rate limiter set to the
// account's requests per minute, so each attempt waits for a permit (up to
// a minute) instead of being sent into a 429. The last failed response is
// returned when the retries run out, and the body of each response that
// will be retried is drained and closed so its connection is reused.
func Failsafe() fleet.Client {
	return fleet.Client{Name: NameFailsafe, New: func(env fleet.Env) (*fleet.Target, error) {
		retry := failsafehttp.NewRetryPolicyBuilder().
			WithMaxRetries(FailsafeRetries).
			WithBackoff(FailsafeDelay, FailsafeMaxDelay).
			WithJitter(FailsafeJitter).
			ReturnLastFailure().
			OnRetryScheduled(func(e failsafe.ExecutionScheduledEvent[*http.Response]) {
				if resp := e.LastResult(); resp != nil && resp.Body != nil {
					_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
					_ = resp.Body.Close()
				}
			}).
			Build()
		policies := []failsafe.Policy[*http.Response]{retry}
		if rpm := env.Limits.RequestsPerMinute; rpm > 0 {
			policies = append(policies, ratelimiter.NewSmoothBuilder[*http.Response](uint(rpm), time.Minute).
				WithMaxWaitTime(time.Minute).
				Build())
		}
		rt := failsafehttp.NewRoundTripper(env.Transport, policies...)
		hc := &http.Client{Transport: rt}
		return &fleet.Target{
			Client: sdk(env, hc, option.WithMaxRetries(0)),
			OpenAI: openaiSDK(env, hc, true),
			Classify: func(err error) string {
				if errors.Is(err, ratelimiter.ErrExceeded) {
					return "rate_limiter_timeout"
				}
				return ""
			},
		}, nil
	}}
}
