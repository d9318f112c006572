package main

import (
	"context"
	"io"

	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/otlp"
)

// demoService is the service name the demo's spans carry in Jaeger.
const demoService = "tollgate-demo"

// setupTracing exports the demo's spans with OTLP over HTTP when
// OTEL_EXPORTER_OTLP_ENDPOINT is set (see otlp.Setup); otherwise it returns a
// no-op provider. The returned shutdown is never nil.
func setupTracing(ctx context.Context) (shutdown func(context.Context) error, tp trace.TracerProvider, err error) {
	return otlp.Setup(ctx, demoService)
}

// tracingOptions are the tollgate options that send its spans to tp.
func tracingOptions(tp trace.TracerProvider) []tollgate.Option {
	return []tollgate.Option{tollgate.WithTracerProvider(tp)}
}

// tracingNotice says where the spans go, when someone asked for them.
func tracingNotice(w io.Writer) { otlp.Notice(w, demoService) }
