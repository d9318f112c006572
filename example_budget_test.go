package tollgate_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/tollgate-go/tollgate"
)

// Budget learns the account's limits from the first response and paces
// every later attempt to them; the State's Snapshot shows what it knows.
func ExampleBudget() {
	// A server on Anthropic's Tier 1 limits.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, l := range [][3]string{{"requests", "50", "49"}, {"input-tokens", "30000", "29000"}, {"output-tokens", "8000", "8000"}} {
			w.Header().Set("anthropic-ratelimit-"+l[0]+"-limit", l[1])
			w.Header().Set("anthropic-ratelimit-"+l[0]+"-remaining", l[2])
		}
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"id":"msg_1","type":"message","model":"claude-sonnet-5","stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}`)
	}))
	defer srv.Close()

	s := tollgate.NewState(
		tollgate.WithMaxConcurrency(8),
		tollgate.WithUtilizationAlert(0.8, func(a tollgate.UtilizationAlert) {
			fmt.Printf("%s %s at %.0f%%\n", a.Key, a.Dimension, 100*a.Utilization)
		}),
	)
	client := &http.Client{Transport: tollgate.Chain(nil, tollgate.Budget(s), tollgate.Observe(s))}
	for range 3 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}`))
		resp, err := client.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close() // the attempt is settled to its usage here
	}

	b := s.Snapshot().Keys[0].Budget
	fmt.Println("tier:", b.Tier)
	fmt.Println("limits:", b.Limits.RequestsPerMinute, b.Limits.InputTokensPerMinute, b.Limits.OutputTokensPerMinute,
		"from", b.Dimensions[tollgate.Requests].Source)
	fmt.Println("in flight:", b.InFlight, "waiting:", b.Waiting)
	fmt.Println("output used in the last minute:", b.Dimensions[tollgate.OutputTokens].Used)
	// Output:
	// tier: Tier 1
	// limits: 50 30000 8000 from headers
	// in flight: 0 waiting: 0
	// output used in the last minute: 9
}
