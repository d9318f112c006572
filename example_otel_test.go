package tollgate_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/tollgate-go/tollgate"
)

// A usage recorder that writes one JSON line per call: a rate-limit log.
func ExampleWithUsageRecorder() {
	srv := usageServer()
	defer srv.Close()

	enc := json.NewEncoder(os.Stdout) // an *os.File, a log shipper, …
	rt := tollgate.New(nil,
		tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
			_ = enc.Encode(rec) // called once per call, when its body is read or closed
		}),
		tollgate.WithClock(fixedClock{}), // keeps this example's output stable; leave it out
	)
	client := &http.Client{Transport: rt}
	for _, body := range []string{
		`{"model":"claude-sonnet-5","max_tokens":256,"messages":[{"role":"user","content":"Hi"}]}`,
		`{"model":"claude-sonnet-5","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`,
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages", strings.NewReader(body))
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("x-api-key", "sk-ant-never-recorded")
		resp, err := client.Do(req)
		if err != nil {
			panic(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	// Output:
	// {"time":"2026-01-02T03:04:05Z","duration_s":0,"request_id":"req_011CSHU","provider":"anthropic","operation":"chat","model":"claude-sonnet-5","response_model":"claude-sonnet-5-20260415","stream":false,"input_tokens":12,"output_tokens":40,"cache_read_input_tokens":2048,"cache_creation_input_tokens":0,"status":200,"attempts":1,"budget_wait_s":0,"pause_wait_s":0,"backoff_wait_s":0,"priority":"normal"}
	// {"time":"2026-01-02T03:04:05Z","duration_s":0,"request_id":"req_011CSHU","provider":"anthropic","operation":"chat","model":"claude-sonnet-5","response_model":"claude-sonnet-5-20260415","stream":true,"input_tokens":12,"output_tokens":40,"cache_read_input_tokens":2048,"cache_creation_input_tokens":0,"status":200,"attempts":1,"budget_wait_s":0,"pause_wait_s":0,"backoff_wait_s":0,"priority":"normal"}
}

// usageServer answers every Messages request with the same usage, as JSON or
// as a stream.
func usageServer() *httptest.Server {
	const usage = `"usage":{"input_tokens":12,"cache_read_input_tokens":2048,"cache_creation_input_tokens":0,"output_tokens":40}`
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("request-id", "req_011CSHU")
		w.Header().Set("anthropic-ratelimit-requests-limit", "50")
		w.Header().Set("anthropic-ratelimit-requests-remaining", "49")
		if !strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("content-type", "application/json")
			_, _ = io.WriteString(w, `{"id":"msg_01","type":"message","model":"claude-sonnet-5-20260415","stop_reason":"end_turn",`+usage+`}`)
			return
		}
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "event: message_start\n"+
			`data: {"type":"message_start","message":{"id":"msg_02","model":"claude-sonnet-5-20260415",`+strings.Replace(usage, `"output_tokens":40`, `"output_tokens":1`, 1)+"}}\n\n"+
			"event: message_delta\n"+
			`data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":40}}`+"\n\n"+
			"event: message_stop\n"+`data: {"type":"message_stop"}`+"\n\n")
	}))
}

// fixedClock is a tollgate.Clock that always reads the same time.
type fixedClock struct{}

func (fixedClock) Now() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

func (fixedClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	ch := make(chan time.Time, 1)
	ch <- fixedClock{}.Now().Add(d)
	return ch, func() bool { return false }
}
