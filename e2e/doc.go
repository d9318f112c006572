// Package e2e holds tollgate's end-to-end tests against real services
// (Jaeger; later Redis). Each test skips, naming the environment variable and
// the script that starts its service, when the service is absent, and fails
// instead when TOLLGATE_REQUIRE_SERVICES=1, as scripts/test sets it. See
// README-jaeger.md.
package e2e
