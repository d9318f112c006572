package tollgate_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go/failsafehttp"
	"github.com/hashicorp/go-retryablehttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tollgate-go/tollgate"
)

// The chain's overhead on loopback against an instant server, next to the
// bare transport and to the stacks a user would otherwise assemble, each
// recording its spans and metrics through the same SDK providers. Run all
// sides in one go so the ratios are measured on the same machine state:
//
//	go test -run '^$' -bench 'Overhead' -benchmem -count 6 . | tee /tmp/b && benchstat -col /side /tmp/b

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
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		for _, d := range []string{"requests", "input-tokens", "output-tokens", "tokens"} {
			h.Set("anthropic-ratelimit-"+d+"-limit", "100000000")
			h.Set("anthropic-ratelimit-"+d+"-remaining", "99999000")
			h.Set("anthropic-ratelimit-"+d+"-reset", reset)
		}
		h.Set("request-id", "req_bench")
		if strings.Contains(r.URL.RawQuery, "stream") {
			h.Set("content-type", "text/event-stream")
			_, _ = io.WriteString(w, benchSSE)
			return
		}
		h.Set("content-type", "application/json")
		_, _ = io.WriteString(w, benchJSON)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// recordingProviders returns SDK providers that record every span and
// metric and keep nothing: what is measured is the instrumentation's cost,
// not an exporter's.
func recordingProviders(b *testing.B) (*sdktrace.TracerProvider, *sdkmetric.MeterProvider) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(discard{}))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	return tp, mp
}

// discard is a span processor that drops every span it is handed.
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) Shutdown(context.Context) error                  { return nil }
func (discard) ForceFlush(context.Context) error                { return nil }

// overheadSides are the transports compared, each around base.
var overheadSides = []struct {
	name string
	wrap func(base http.RoundTripper, tp *sdktrace.TracerProvider, mp *sdkmetric.MeterProvider) http.RoundTripper
}{
	{"bare", func(base http.RoundTripper, _ *sdktrace.TracerProvider, _ *sdkmetric.MeterProvider) http.RoundTripper {
		return base
	}},
	{"retryablehttp+otelhttp", func(base http.RoundTripper, tp *sdktrace.TracerProvider, mp *sdkmetric.MeterProvider) http.RoundTripper {
		rc := retryablehttp.NewClient()
		rc.Logger = nil
		rc.RetryMax = 4
		rc.HTTPClient = &http.Client{Transport: base}
		return otelhttp.NewTransport(&retryablehttp.RoundTripper{Client: rc},
			otelhttp.WithTracerProvider(tp), otelhttp.WithMeterProvider(mp))
	}},
	{"failsafe+otelhttp", func(base http.RoundTripper, tp *sdktrace.TracerProvider, mp *sdkmetric.MeterProvider) http.RoundTripper {
		retry := failsafehttp.NewRetryPolicyBuilder().WithMaxRetries(4).WithBackoff(500*time.Millisecond, 8*time.Second).Build()
		return otelhttp.NewTransport(failsafehttp.NewRoundTripper(base, retry),
			otelhttp.WithTracerProvider(tp), otelhttp.WithMeterProvider(mp))
	}},
	{"tollgate", func(base http.RoundTripper, tp *sdktrace.TracerProvider, mp *sdkmetric.MeterProvider) http.RoundTripper {
		return tollgate.New(base, tollgate.WithTracerProvider(tp), tollgate.WithMeterProvider(mp))
	}},
}

func BenchmarkOverhead(b *testing.B) {
	srv := benchServer(b)
	const body = `{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hello in a friendly way, please."}]}`
	for _, kind := range []string{"json", "sse"} {
		for _, side := range overheadSides {
			b.Run("kind="+kind+"/side="+side.name, func(b *testing.B) {
				base := &http.Transport{MaxIdleConnsPerHost: 4}
				b.Cleanup(base.CloseIdleConnections)
				tp, mp := recordingProviders(b)
				client := &http.Client{Transport: side.wrap(base, tp, mp)}
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
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			})
		}
	}
}
