package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tollgate-go/tollgate"
)

// setupTracing is the demo's telemetry hook.
//
// HOOK (to be wired with the telemetry layer): when
// OTEL_EXPORTER_OTLP_ENDPOINT is set, build an OTLP exporter and an SDK
// TracerProvider here and return it with its Shutdown; tracingOptions
// already hands the provider to tollgate (WithTracerProvider). Until then it
// returns a no-op provider, and tracingNotice says spans are not exported.
// The returned shutdown is never nil.
func setupTracing(ctx context.Context) (shutdown func(context.Context) error, tp trace.TracerProvider, err error) {
	_ = ctx
	return func(context.Context) error { return nil }, noop.NewTracerProvider(), nil
}

// tracingOptions are the tollgate options that send its spans to tp.
func tracingOptions(tp trace.TracerProvider) []tollgate.Option {
	return []tollgate.Option{tollgate.WithTracerProvider(tp)}
}

// tracingNotice says what becomes of spans, when someone asked for them.
func tracingNotice(w io.Writer) {
	if ep := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); ep != "" {
		fmt.Fprintf(w, "note: OTEL_EXPORTER_OTLP_ENDPOINT=%s is set, but span export is not wired into this build yet\n", ep)
	}
}
