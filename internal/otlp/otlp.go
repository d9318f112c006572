// Package otlp sets up the span export of tollgate's commands: OTLP over
// HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, nothing otherwise.
package otlp

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
)

// Enabled reports whether the environment asks for span export.
func Enabled() bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup exports spans, under the service name service, with OTLP over HTTP
// when OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ sibling) is set: the
// exporter reads that variable and its OTEL_EXPORTER_OTLP_* siblings itself.
// Otherwise it returns a no-op provider. The returned shutdown flushes what
// is buffered and is never nil.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, tp trace.TracerProvider, err error) {
	noShutdown := func(context.Context) error { return nil }
	if !Enabled() {
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
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))),
	)
	shutdown = func(ctx context.Context) error {
		defer transport.CloseIdleConnections()
		return sdk.Shutdown(ctx)
	}
	return shutdown, sdk, nil
}

// Notice says where the spans go, when someone asked for them.
func Notice(w io.Writer, service string) {
	if ep := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); ep != "" {
		fmt.Fprintf(w, "exporting tollgate's spans to %s (service %q)\n", ep, service)
	}
}
