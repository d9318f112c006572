package peers

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
)

// Tollgate is tollgate's Transport as the SDK's HTTP client, with the SDK's
// retries off (tollgate owns the retry loop), as its documentation says.
// With told it is also told the account's limits (WithLimits), so it
// need not learn them from the first responses. opts are added to the
// Transport's options.
func Tollgate(told bool, opts ...tollgate.Option) fleet.Client {
	name := NameTollgate
	if told {
		name = NameTollgateLimits
	}
	return fleet.Client{Name: name, New: func(env fleet.Env) (*fleet.Target, error) {
		all := slices.Clone(opts)
		if told {
			all = append(all, withLimits(env.Limits))
		}
		rt := tollgate.New(env.Transport, all...)
		return &fleet.Target{
			Client: sdk(env, &http.Client{Transport: rt}, option.WithMaxRetries(0)),
			Status: func() string { return Status(rt.Snapshot()) },
			Classify: func(err error) string {
				if errors.Is(err, tollgate.ErrOpen) {
					return "breaker_open"
				}
				return ""
			},
		}, nil
	}}
}

// Status sums up a snapshot for a progress line: per pool (Key), the
// breaker's state and how many attempts wait for the budget, e.g.
// "breaker closed, 12 waiting" (the key is named when there are several),
// or "no response yet" before any call (the first calls then show "cold
// start" until a response tells the limits).
func Status(s tollgate.Snapshot) string {
	if len(s.Keys) == 0 {
		return "no response yet"
	}
	var parts []string
	for _, ks := range s.Keys {
		var p []string
		if st := ks.Breaker.State; st != "" {
			p = append(p, "breaker "+string(st))
		}
		switch {
		case ks.Budget.ColdStart:
			p = append(p, "cold start")
		default:
			p = append(p, fmt.Sprintf("%d waiting", ks.Budget.Waiting))
		}
		line := strings.Join(p, ", ")
		if len(s.Keys) > 1 {
			line = ks.Key.String() + ": " + line
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}
