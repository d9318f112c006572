package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"net/http"
	"sync/atomic"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func main() {
	var rt atomic.Pointer[tollgate.Transport]
	cl := fleet.Client{Name: "tollgate", New: func(env fleet.Env) (*fleet.Target, error) {
		t := tollgate.New(env.Transport)
		rt.Store(t)
		return &fleet.Target{Client: anthropic.NewClient(option.WithBaseURL(env.BaseURL), option.WithAPIKey(env.APIKey),
			option.WithHTTPClient(&http.Client{Transport: t}), option.WithMaxRetries(0))}, nil
	}}
	cfg := fleet.Config{Agents: 16, Duration: 60 * time.Second, Workload: fleet.WorkloadAgents, MaxTokens: 8192, Seed: 1,
		Limits: fleet.Tier1,
		Server: tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30000, OutputTokensPerMinute: 8000,
			OutputAccounting: tollgatetest.CountAsProduced, RoundRemaining: tollgatetest.RoundNearest,
			Latency: 500 * time.Millisecond, TimePerOutputToken: 10 * time.Millisecond}}
	go func() {
		for range time.Tick(2 * time.Second) {
			if t := rt.Load(); t != nil {
				for _, k := range t.Snapshot().Keys {
					b := k.Budget
					fmt.Fprintf(os.Stderr, "brk=%s/%s typ=%.0f/%.0f out=%s est=%.0f bpt=%.2f prefixes=%d inflight=%d waiting=%d lvl rq=%.1f in=%.0f out=%.0f\n",
						k.Breaker.State, k.Breaker.Reason, k.Breaker.TypicalInputTokens, k.Breaker.TypicalOutputTokens,
						b.Output, b.ProducedEstimate, b.BytesPerToken, b.CachedPrefixes, b.InFlight, b.Waiting,
						b.Dimensions[tollgate.Requests].Level, b.Dimensions[tollgate.InputTokens].Level, b.Dimensions[tollgate.OutputTokens].Level)
				}
			}
		}
	}()
	res, err := fleet.Run(context.Background(), cfg, cl)
	if err != nil {
		panic(err)
	}
	for _, r := range res {
		fmt.Printf("%s share=%.3f %s ok=%d failed=%d 429=%d\n", r.Client, r.Binding.Share, r.Binding.Dimension, r.OK, r.Failed, r.RateLimited)
	}
}
