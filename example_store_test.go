package tollgate_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tollgate-go/tollgate"
)

// Two Transports given one store pace as one client: what one spends, the
// other cannot. Package redisstore does the same across processes.
func ExampleWithStore() {
	var served atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"id":"msg_1","type":"message","usage":{"input_tokens":5,"output_tokens":1}}`)
	}))
	defer srv.Close()

	base := &http.Transport{}
	defer base.CloseIdleConnections()
	store := tollgate.NewMemoryStore(nil)
	limits := tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 2})
	agents := []*http.Client{
		{Transport: tollgate.New(base, tollgate.WithStore(store), limits)},
		{Transport: tollgate.New(base, tollgate.WithStore(store), limits)},
	}
	call := func(c *http.Client, timeout time.Duration) error {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-5","max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}`))
		c.Timeout = timeout
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	fmt.Println(call(agents[0], 0), call(agents[0], 0)) // the minute's two requests
	// The other Transport would wait about 30 s for the refill; this call
	// cannot wait that long.
	err := call(agents[1], 50*time.Millisecond)
	fmt.Println("second transport:", err != nil, "served:", served.Load())
	// Output:
	// <nil> <nil>
	// second transport: true served: 2
}
