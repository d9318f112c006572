// Command jaeger sends tollgate's OpenTelemetry spans to Jaeger (or any
// OTLP/HTTP backend): three Anthropic SDK calls — JSON, streamed, and one the
// server answers 529 first so that tollgate retries it — against
// tollgatetest, a rate-limited fake API started in this process on
// 127.0.0.1. No API key is needed and no request leaves the machine.
//
// Start a local Jaeger (every port on 127.0.0.1), run, look, stop:
//
//	eval "$(scripts/jaeger.sh start)"   # exports OTEL_EXPORTER_OTLP_ENDPOINT and TOLLGATE_JAEGER_QUERY
//	go run ./examples/jaeger
//	scripts/jaeger.sh stop
//
// The OTLP exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and its other
// OTEL_EXPORTER_OTLP_* variables) itself. Without it the example still runs
// and prints a line per span to stdout, but exports nothing.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

const service = "tollgate-example"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "examples/jaeger:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	start := time.Now()
	endpoint := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" {
		endpoint = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}

	opts := []sdktrace.TracerProviderOption{
		// Resource keys are plain strings: tollgate's spans use the GenAI
		// semconv version, which need not match the SDK's resource schema.
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))),
		sdktrace.WithSpanProcessor(printer{}), // a line per span on stdout, to see them here too
	}
	if endpoint == "" {
		fmt.Println("OTEL_EXPORTER_OTLP_ENDPOINT is not set: the spans are printed here, not exported.")
		fmt.Println(`To see them in Jaeger: eval "$(scripts/jaeger.sh start)" && go run ./examples/jaeger`)
	} else {
		exporter, err := otlptracehttp.New(ctx) // reads OTEL_EXPORTER_OTLP_ENDPOINT
		if err != nil {
			return fmt.Errorf("OTLP exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exporter))
		fmt.Printf("exporting spans to %s as service %q\n", endpoint, service)
	}
	tp := sdktrace.NewTracerProvider(opts...)
	defer func() {
		// ForceFlush exports the batch still buffered and returns the export
		// error (no Jaeger listening, say), which Shutdown alone would only
		// log; Shutdown then stops the exporter.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if serr := errors.Join(tp.ForceFlush(sctx), tp.Shutdown(sctx)); serr != nil {
			err = errors.Join(err, fmt.Errorf("flushing spans to %s: %w", endpoint, serr))
		}
		if err == nil && endpoint != "" {
			printWhereToLook(start)
		}
	}()

	srv := tollgatetest.NewServer(tollgatetest.Config{
		RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000,
		OutputTokens: 20,
	})
	defer srv.Close()

	rt := tollgate.New(nil, tollgate.WithTracerProvider(tp))
	defer rt.CloseIdleConnections()
	client := anthropic.NewClient(
		option.WithBaseURL(srv.URL),
		option.WithAPIKey("fake-key"), // never recorded in a span
		option.WithHTTPClient(&http.Client{Transport: rt}),
		option.WithMaxRetries(0),      // tollgate owns the retry loop
		option.WithTracerProvider(tp), // the SDK's own span, anthropic.messages.create, in the same trace
	)
	params := anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Write a haiku about rate limits."))},
	}

	tracer := tp.Tracer("examples/jaeger")
	for _, name := range []string{"json", "stream", "retried"} {
		if name == "retried" {
			srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "5"})
		}
		// A root span per call, so that each call is one trace.
		cctx, root := tracer.Start(ctx, "example "+name)
		if name == "stream" {
			stream := client.Messages.NewStreaming(cctx, params)
			for stream.Next() {
			}
			err = errors.Join(stream.Err(), stream.Close())
		} else {
			_, err = client.Messages.New(cctx, params)
		}
		root.End()
		if err != nil {
			return fmt.Errorf("%s call: %w", name, err)
		}
	}
	st := srv.Stats()
	fmt.Printf("3 calls, %d requests to the fake API (statuses %v)\n", st.Requests, st.Status)
	return nil
}

// printWhereToLook says where the traces can be found.
func printWhereToLook(start time.Time) {
	query := os.Getenv("TOLLGATE_JAEGER_QUERY")
	if query == "" {
		fmt.Printf("look for service %q in your tracing backend\n", service)
		return
	}
	q := url.Values{
		"query.service_name":   {service},
		"query.start_time_min": {start.Add(-time.Minute).UTC().Format(time.RFC3339)},
		"query.start_time_max": {time.Now().Add(time.Minute).UTC().Format(time.RFC3339)},
		"query.num_traces":     {"20"}, // Jaeger's in-memory store answers 500 without it
	}
	fmt.Printf("traces in Jaeger (they may take a second to be indexed):\n  UI:  %s/search?service=%s\n  API: %s/api/v3/traces?%s\n",
		query, service, query, q.Encode())
}

// printer is a SpanProcessor that prints a line per ended span: its name,
// trace, duration and the attributes that show tollgate's work.
type printer struct{}

var shown = map[string]bool{
	"gen_ai.usage.input_tokens": true, "gen_ai.usage.output_tokens": true, "gen_ai.response.finish_reasons": true,
	"tollgate.attempts": true, "tollgate.attempt": true, "tollgate.wait.backoff": true,
	"http.response.status_code": true, "http.request.resend_count": true,
}

func (printer) OnEnd(s sdktrace.ReadOnlySpan) {
	var attrs []string
	for _, kv := range s.Attributes() {
		if shown[string(kv.Key)] {
			attrs = append(attrs, fmt.Sprintf("%s=%s", kv.Key, kv.Value.Emit()))
		}
	}
	sort.Strings(attrs)
	for _, ev := range s.Events() {
		attrs = append(attrs, "event:"+ev.Name)
	}
	fmt.Printf("  span %-26s trace %s…  %6s  %s\n", s.Name(), s.SpanContext().TraceID().String()[:8],
		s.EndTime().Sub(s.StartTime()).Round(time.Millisecond), strings.Join(attrs, " "))
}

func (printer) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (printer) Shutdown(context.Context) error                  { return nil }
func (printer) ForceFlush(context.Context) error                { return nil }
