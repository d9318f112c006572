//go:build tools

// Package jaeger pins the Jaeger v2 all-in-one binary used by the e2e tests.
// Jaeger depends on an older OpenTelemetry than tollgate does, so it lives in
// its own module and is never part of tollgate's build.
//
// Build it (scripts/jaeger.sh does this once and caches the result):
//
//	cd tools/jaeger && go build -o ../../.bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger
//
// Run it on loopback only with in-memory storage:
//
//	.bin/jaeger --config tools/jaeger/config-loopback.yaml
package jaeger

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
