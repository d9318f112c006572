package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tollgate-go/tollgate"
)

// demoService is the service name the demo's spans carry in Jaeger.
const demoService = "tollgate-demo"

// setupTracing exports the demo's spans with OTLP over HTTP when
// OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter reads that variable and
// its OTEL_EXPORTER_OTLP_* siblings itself); otherwise it returns a no-op
// provider. The returned shutdown flushes what is buffered and is never nil.
func setupTracing(ctx context.Context) (shutdown func(context.Context) error, tp trace.TracerProvider, err error) {
	noShutdown := func(context.Context) error { return nil }
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return noShutdown, noop.NewTracerProvider(), nil
	}
	// The exporter's own transport, so that shutting down can close its
	// connections too: the exporter's Shutdown leaves them idle.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	exporter, err := otlptracehttp.New(ctx, otlptracehttp.WithHTTPClient(&http.Client{Transport: transport}))
	if err != nil {
		return noShutdown, nil, fmt.Errorf("tracing: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		// Resource keys are plain strings: the GenAI semconv version the
		// spans use and the newest resource semconv have different schemas.
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", demoService))),
	)
	shutdown = func(ctx context.Context) error {
		defer transport.CloseIdleConnections()
		return sdk.Shutdown(ctx)
	}
	return shutdown, sdk, nil
}

// tracingOptions are the tollgate options that send its spans to tp.
func tracingOptions(tp trace.TracerProvider) []tollgate.Option {
	return []tollgate.Option{tollgate.WithTracerProvider(tp)}
}

// tracingNotice says where the spans go, when someone asked for them.
func tracingNotice(w io.Writer) {
	if ep := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); ep != "" {
		fmt.Fprintf(w, "exporting tollgate's spans to %s (service %q)\n", ep, demoService)
	}
}
