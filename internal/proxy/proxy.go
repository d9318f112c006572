// Package proxy is `tollgate proxy`: an HTTP server that puts one tollgate
// Transport per provider in front of any client that takes a base URL
// (ANTHROPIC_BASE_URL, OPENAI_BASE_URL), with Prometheus metrics and the live
// status page of package dashboard.
//
// # Routes
//
//	/v1/messages, /v1/messages/…, /v1/complete      Anthropic, through its Transport
//	/v1/chat/completions, /v1/responses[/…],
//	/v1/embeddings, /v1/completions                 OpenAI, through its Transport
//	/v1/models[/…], /v1/files[/…]                   by the headers (below), through that provider's Transport
//	anything else under /v1/                        by the headers, forwarded unpaced (no tollgate)
//	GET /metrics                                    Prometheus text (the OTel Prometheus exporter)
//	GET /status, /status.json                       the dashboard: the page and its data
//	GET /healthz                                    "ok"
//
// Where the path does not tell, the headers do: a request with an
// anthropic-version or x-api-key header goes to Anthropic (the Anthropic
// SDKs send anthropic-version on every request, with an API key or an
// OAuth token), any other to OpenAI.
//
// # What passes through
//
// Requests and responses pass as they are, credentials included (x-api-key
// and Authorization are forwarded untouched and never logged; tollgate keys
// each budget by a hash of them), except that a request body is read whole
// first (up to MaxBody: tollgate needs it to estimate the call and to replay
// it for a retry; larger ones get 413), Accept-Encoding is dropped so that
// tollgate reads usage from an uncompressed body (the loopback hop needs no
// compression), and no X-Forwarded-For is added. Responses, streams
// included, are flushed to the client as each chunk arrives; a client that
// goes away cancels its upstream request, which gives back its reservation.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/dashboard"
)

// DefaultMaxBody is the largest request body forwarded (Anthropic's own
// limit for the Messages API).
const DefaultMaxBody = 32 << 20

// bodyReadTimeout bounds the reading of one request body, so that a client
// that sends its body slowly cannot hold a connection open without end
// (the server has no ReadTimeout: it would cut long streams).
const bodyReadTimeout = 60 * time.Second

// Config configures a Proxy.
type Config struct {
	// AnthropicUpstream and OpenAIUpstream are the APIs' base URLs, e.g.
	// https://api.anthropic.com; a path in them is put before the request's.
	AnthropicUpstream, OpenAIUpstream *url.URL
	// MaxBody is the largest request body, in bytes; 0 means DefaultMaxBody.
	MaxBody int64
	// Options are given to both Transports (limits, store, tracer, …), after
	// the proxy's own WithMeterProvider.
	Options []tollgate.Option
	// Base is the transport under both tollgate Transports and the unpaced
	// routes; nil means a clone of http.DefaultTransport with more idle
	// connections per host. The Proxy closes its idle connections on Close.
	Base http.RoundTripper
	// Logger gets upstream failures (never a header); nil means
	// slog.Default().
	Logger *slog.Logger
	// Dashboard are options of the status page.
	Dashboard []dashboard.Option
}

// Proxy is the proxy's http.Handler.
type Proxy struct {
	cfg       Config
	anthropic *tollgate.Transport
	openai    *tollgate.Transport
	base      http.RoundTripper
	dash      *dashboard.Dashboard
	shutdown  func(context.Context) error // the meter provider's
	mux       *http.ServeMux
	log       *slog.Logger

	// One reverse proxy per upstream and way: paced (through the Transport)
	// or not.
	paced, unpaced [numProviders]*httputil.ReverseProxy
}

type providerIndex int

const (
	anthropicAPI providerIndex = iota
	openAIAPI
	numProviders
)

func (p providerIndex) String() string {
	if p == anthropicAPI {
		return "anthropic"
	}
	return "openai"
}

// New returns a Proxy for cfg; Close releases what it holds.
func New(cfg Config) (*Proxy, error) {
	if cfg.AnthropicUpstream == nil || cfg.OpenAIUpstream == nil {
		return nil, errors.New("proxy: both upstreams are needed")
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	p := &Proxy{cfg: cfg, base: cfg.Base, log: cfg.Logger}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// A fleet of agents keeps many calls open at once: without this,
		// all but two connections per host are closed after each call.
		t.MaxIdleConnsPerHost = 256
		p.base = t
	}
	mp, metrics, err := dashboard.Metrics()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.shutdown = mp.Shutdown
	opts := append([]tollgate.Option{tollgate.WithMeterProvider(mp)}, cfg.Options...)
	p.anthropic = tollgate.New(p.base, opts...)
	p.openai = tollgate.New(p.base, opts...)
	p.dash = dashboard.New(p.anthropic, append([]dashboard.Option{dashboard.WithSource(p.openai),
		dashboard.WithTitle("tollgate proxy")}, cfg.Dashboard...)...)

	upstreams := [numProviders]*url.URL{anthropicAPI: cfg.AnthropicUpstream, openAIAPI: cfg.OpenAIUpstream}
	transports := [numProviders]http.RoundTripper{anthropicAPI: p.anthropic, openAIAPI: p.openai}
	for i := range numProviders {
		p.paced[i] = p.reverseProxy(i, upstreams[i], transports[i])
		p.unpaced[i] = p.reverseProxy(i, upstreams[i], p.base)
	}

	p.mux = http.NewServeMux()
	p.mux.Handle("GET /metrics", metrics)
	p.mux.Handle("GET /status", p.dash)
	p.mux.Handle("GET /status.json", p.dash)
	p.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	p.mux.HandleFunc("/v1/", p.forward)
	p.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, providerOf(r), http.StatusNotFound, "not_found_error",
			"tollgate proxy: no route for "+r.Method+" "+r.URL.Path+" (the APIs are under /v1/; see /status)")
	})
	return p, nil
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.mux.ServeHTTP(w, r) }

// Transports returns the Anthropic and the OpenAI Transport.
func (p *Proxy) Transports() (anthropic, openai *tollgate.Transport) { return p.anthropic, p.openai }

// Close stops the dashboard's sampler, flushes the metrics and closes the
// idle upstream connections. Requests still in flight are not cut.
func (p *Proxy) Close() error {
	p.dash.Close()
	err := p.shutdown(context.Background())
	if ci, ok := p.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("proxy: metrics: %w", err)
	}
	return nil
}

// route is where a request under /v1/ goes.
type route struct {
	provider providerIndex
	paced    bool // through the provider's tollgate Transport
}

// routeOf decides a request's route by its path, then its headers.
func routeOf(r *http.Request) route {
	path := strings.TrimSuffix(r.URL.Path, "/")
	under := func(prefix string) bool { return path == prefix || strings.HasPrefix(path, prefix+"/") }
	switch {
	case under("/v1/messages"), path == "/v1/complete":
		return route{anthropicAPI, true}
	case path == "/v1/chat/completions", under("/v1/responses"), path == "/v1/embeddings", path == "/v1/completions":
		return route{openAIAPI, true}
	case under("/v1/models"), under("/v1/files"):
		return route{providerOf(r), true}
	}
	return route{providerOf(r), false}
}

// providerOf tells the provider of a request by its headers.
func providerOf(r *http.Request) providerIndex {
	if r.Header.Get("anthropic-version") != "" || r.Header.Get("x-api-key") != "" {
		return anthropicAPI
	}
	if strings.HasPrefix(r.URL.Path, "/v1/messages") {
		return anthropicAPI
	}
	return openAIAPI
}

// forward sends a request under /v1/ upstream.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	rt := routeOf(r)
	if r.ContentLength > p.cfg.MaxBody {
		p.tooLarge(w, rt.provider)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		// The whole body, for tollgate to estimate the call and replay it.
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.cfg.MaxBody))
		_ = rc.SetReadDeadline(time.Time{})
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			p.tooLarge(w, rt.provider)
			return
		case err != nil:
			writeError(w, rt.provider, http.StatusBadRequest, "invalid_request_error", "tollgate proxy: reading the request body: "+err.Error())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
	}
	if rt.paced {
		p.paced[rt.provider].ServeHTTP(w, r)
	} else {
		p.unpaced[rt.provider].ServeHTTP(w, r)
	}
}

func (p *Proxy) tooLarge(w http.ResponseWriter, provider providerIndex) {
	w.Header().Set("Connection", "close") // the rest of the body is not read
	writeError(w, provider, http.StatusRequestEntityTooLarge, "request_too_large",
		fmt.Sprintf("tollgate proxy: request body larger than %d bytes (--max-body)", p.cfg.MaxBody))
}

// reverseProxy returns the reverse proxy of one upstream through rt.
func (p *Proxy) reverseProxy(provider providerIndex, upstream *url.URL, rt http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream) // also sets the Host header to the upstream's
			// A server request's URI, which ReverseProxy's clone keeps:
			// tollgate's Retry layer sends through an http.Client, which
			// refuses requests that have one.
			pr.Out.RequestURI = ""
			// Go's transport then asks for gzip itself and decompresses, so
			// tollgate reads usage from plain bytes.
			pr.Out.Header.Del("Accept-Encoding")
		},
		Transport: rt,
		// ReverseProxy flushes every write of an SSE stream (and of a body
		// of unknown length) at once by itself; a JSON body of known length
		// goes out when it is complete. Flushing that too (-1) sends the
		// headers before the body, which the budget paces worse for: 11 to
		// 15 429s in 30 s of a tier-1 fleet, against none (see the report
		// of issue 14).
		FlushInterval: 0,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.upstreamError(w, r, provider, err)
		},
		ErrorLog: nil, // errors go through ErrorHandler
	}
}

// upstreamError answers a request that got no response from upstream.
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, provider providerIndex, err error) {
	var open *tollgate.OpenError
	switch {
	case r.Context().Err() != nil:
		// The client went away; nothing to answer. 499, as nginx logs it.
		w.WriteHeader(499)
		return
	case errors.As(err, &open):
		// tollgate refused to send: its breaker is open for longer than the
		// call could wait. Say when to come back, as the API would.
		var apiErr *tollgate.APIError
		if errors.As(err, &apiErr) { // the spend cap: retrying cannot help
			w.Header().Set("X-Should-Retry", "false")
			writeError(w, provider, http.StatusTooManyRequests, apiErr.Type, apiErr.Message)
			return
		}
		if !open.Until.IsZero() {
			secs := max(1, int(time.Until(open.Until).Seconds()+0.999))
			w.Header().Set("Retry-After", fmt.Sprint(secs))
		}
		status, kind := http.StatusTooManyRequests, "rate_limit_error"
		if open.Reason == "overloaded" {
			status, kind = 529, "overloaded_error"
		}
		writeError(w, provider, status, kind, "tollgate proxy: "+open.Error())
		return
	}
	status := http.StatusBadGateway
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		status = http.StatusGatewayTimeout
	}
	// The error names the upstream and what failed, never a header.
	p.log.Warn("tollgate proxy: upstream request failed", "provider", provider.String(),
		"method", r.Method, "path", r.URL.Path, "error", err.Error())
	writeError(w, provider, status, "api_error", "tollgate proxy: upstream request failed: "+err.Error())
}
