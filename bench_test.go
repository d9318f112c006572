package tollgate

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The chain's overhead against the bare transport, on loopback. Run both
// sides in one go so the ratio is measured on the same machine state:
//
//	go test -run '^$' -bench 'Overhead' -benchmem -count 5 . | tee /tmp/b && benchstat /tmp/b

const benchJSON = `{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",` +
	`"content":[{"type":"text","text":"Hello there, how can I help?"}],"stop_reason":"end_turn","stop_sequence":null,` +
	`"usage":{"input_tokens":25,"output_tokens":9,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}`

var benchSSE = func() string {
	var b strings.Builder
	b.WriteString("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n")
	b.WriteString("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n")
	for i := range 40 {
		fmt.Fprintf(&b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word%d \"}}\n\n", i)
	}
	b.WriteString("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n")
	b.WriteString("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n")
	b.WriteString("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	return b.String()
}()

func benchServer(b *testing.B) *httptest.Server {
	reset := time.Now().Add(time.Second).UTC().Format(time.RFC3339)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		h := w.Header()
		for _, d := range []string{"requests", "input-tokens", "output-tokens", "tokens"} {
			h.Set("anthropic-ratelimit-"+d+"-limit", "100000000")
			h.Set("anthropic-ratelimit-"+d+"-remaining", "99999000")
			h.Set("anthropic-ratelimit-"+d+"-reset", reset)
		}
		h.Set("request-id", "req_bench")
		if strings.Contains(r.URL.RawQuery, "stream") {
			h.Set("content-type", "text/event-stream")
			io.WriteString(w, benchSSE)
			return
		}
		h.Set("content-type", "application/json")
		io.WriteString(w, benchJSON)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func BenchmarkOverhead(b *testing.B) {
	srv := benchServer(b)
	const body = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hello in a friendly way, please."}]}`
	for _, kind := range []string{"json", "sse"} {
		for _, side := range []string{"bare", "tollgate"} {
			b.Run(kind+"/"+side, func(b *testing.B) {
				base := &http.Transport{MaxIdleConnsPerHost: 4}
				b.Cleanup(base.CloseIdleConnections)
				var rt http.RoundTripper = base
				if side == "tollgate" {
					rt = New(base)
				}
				client := &http.Client{Transport: rt}
				url := srv.URL + "/v1/messages"
				if kind == "sse" {
					url += "?stream"
				}
				b.ReportAllocs()
				for b.Loop() {
					req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
					req.Header.Set("anthropic-version", "2023-06-01")
					req.Header.Set("content-type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	}
}
