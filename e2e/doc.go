// Package e2e holds tollgate's end-to-end tests against real services and
// clients: Jaeger (the spans of an SDK call), Redis (two tollgate proxies
// pacing one budget), the official TypeScript SDKs under node/ driving
// tollgate proxy (npm ci --prefix e2e/node), and Debian's headless Chromium
// loading the proxy's status page. Each test skips, naming what is missing
// and how to get it, when its service or client is absent, and fails
// instead when TOLLGATE_REQUIRE_SERVICES=1, as scripts/test sets it after
// installing and starting them all. The README's "Tracing in Jaeger"
// and "tollgate proxy" sections show what they cover.
package e2e
