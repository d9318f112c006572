package peers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

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
		hc := &http.Client{Transport: rt}
		return &fleet.Target{
			Client:   sdk(env, hc, option.WithMaxRetries(0)),
			OpenAI:   openaiSDK(env, hc, true),
			Status:   func() string { return Status(rt.Snapshot()) },
			Classify: classifyTollgate,
			Close:    func() { flush(rt) },
		}, nil
	}}
}

// flushTimeout bounds how long a run's end waits for what a Transport owes
// its store.
const flushTimeout = 5 * time.Second

// flush sends rt's store what rt owes it, as a process does before it
// closes a shared store's client.
func flush(rt *tollgate.Transport) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	_ = rt.Flush(ctx)
}

func classifyTollgate(err error) string {
	switch {
	case errors.Is(err, tollgate.ErrOpen):
		return "breaker_open"
	case errors.Is(err, tollgate.ErrQueueWait):
		return "queue_wait"
	}
	return ""
}

// Class is where the calls of a fleet group go in tollgate's queue.
type Class struct {
	Priority tollgate.Priority
	Tenant   string
}

// TollgateClasses is Tollgate (not told the limits) named name, whose
// calls carry, by the group of the agent that makes them (fleet.GroupOf),
// the priority and tenant of classes (tollgate.ContextWithPriority and
// ContextWithTenant), as an application sets them on the context it passes
// to the SDK. Calls of groups classes does not name carry neither. only,
// when set, is the client's Only. opts are added to the Transport's options.
func TollgateClasses(name string, classes map[string]Class, only []string, opts ...tollgate.Option) fleet.Client {
	c := Tollgate(false, opts...)
	build := c.New
	c.Name, c.Only = name, only
	c.New = func(env fleet.Env) (*fleet.Target, error) {
		t, err := build(env)
		if err != nil {
			return nil, err
		}
		t.Wrap = func(ctx context.Context, do func(context.Context) error) error {
			if cl, ok := classes[fleet.GroupOf(ctx)]; ok {
				ctx = tollgate.ContextWithPriority(ctx, cl.Priority)
				if cl.Tenant != "" {
					ctx = tollgate.ContextWithTenant(ctx, cl.Tenant)
				}
			}
			return do(ctx)
		}
		return t, nil
	}
	return c
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
