package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/dashboard"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// A service that embeds tollgate mounts the live dashboard and the
// Prometheus endpoint on its own mux.
func Example() {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000})
	defer api.Close()

	mp, metrics, err := dashboard.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mp.Shutdown(context.Background())
	rt := tollgate.New(nil, tollgate.WithMeterProvider(mp))
	dash := dashboard.New(rt)
	defer dash.Close()

	mux := http.NewServeMux()
	mux.Handle("/status", dash)      // the page
	mux.Handle("/status.json", dash) // its data (also /status?format=json)
	mux.Handle("/metrics", metrics)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// One call through the Transport, as an SDK would make it.
	req, _ := http.NewRequest(http.MethodPost, api.URL+"/v1/messages", strings.NewReader(
		`{"model":"claude-sonnet-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}`))
	req.Header.Set("x-api-key", "sk-ant-example")
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	resp, err = http.Get(srv.URL + "/status.json")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var st dashboard.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		fmt.Println(err)
		return
	}
	k := st.Keys[0]
	fmt.Printf("%s / %s: breaker %s, output %s\n", k.Provider, k.Family, k.Breaker.State, k.Output.Rule)
	for _, d := range k.Dimensions {
		fmt.Printf("  %-13s limit %6d (%s)\n", d.Name, d.Limit, d.LimitSource)
	}
	// Output:
	// anthropic / claude-sonnet-5: breaker closed, output count_as_produced
	//   requests      limit     50 (headers)
	//   tokens        limit   8000 (headers (not paced))
	//   input-tokens  limit  30000 (headers)
	//   output-tokens limit   8000 (headers)
}
