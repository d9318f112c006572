package proxy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/otlp"
	"github.com/tollgate-go/tollgate/redisstore"
)

// Defaults of the command's flags.
const (
	DefaultListen            = "127.0.0.1:8787"
	DefaultAnthropicUpstream = "https://api.anthropic.com"
	DefaultOpenAIUpstream    = "https://api.openai.com"
	DefaultShutdownTimeout   = 30 * time.Second
	// Service is the service name of the proxy's spans.
	Service = "tollgate-proxy"
)

// Timeouts of the server. There is no read or write timeout on a whole
// request: a stream may rightly last minutes.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 120 * time.Second
	redisPingTimeout  = 3 * time.Second
)

// UsageError is a bad command line.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usagef(format string, a ...any) error { return &UsageError{fmt.Errorf(format, a...)} }

// ErrHelp is -h: the usage was printed.
var ErrHelp = flag.ErrHelp

// flags are the command's flags.
type flags struct {
	listen             string
	anthropic, openai  string
	redisURL, prefix   string
	limits             tollgate.Limits
	maxConcurrency     int
	maxAttempts        int
	maxWait            time.Duration
	maxBody            byteSize
	shutdownTimeout    time.Duration
	anthropicU, openaU *url.URL
}

const usageText = `usage: tollgate proxy [flags]

Runs an HTTP proxy that paces, retries and traces calls to the Anthropic and
OpenAI APIs for any client that takes a base URL: Python and TypeScript SDKs,
Claude Code, curl. Point them at it and keep passing your API key as usual:

  export ANTHROPIC_BASE_URL=http://127.0.0.1:8787
  export OPENAI_BASE_URL=http://127.0.0.1:8787/v1

Every account (API key) and model family gets its own budget, learned from the
API's rate-limit headers; with --redis, every proxy on the same Redis shares
them. Keys pass through untouched and are never logged or shown.

  /v1/...         the APIs (Anthropic: messages, count_tokens, batches, models,
                  files; OpenAI: chat/completions, responses, embeddings,
                  completions, models, files; anything else under /v1/ is
                  forwarded unpaced, to Anthropic when the request has an
                  anthropic-version or x-api-key header, else to OpenAI)
  /status         live status page (/status.json: its data)
  /metrics        Prometheus metrics
  /healthz        "ok"

Spans are exported with OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
SIGTERM or Ctrl-C stops accepting, lets calls in flight finish (up to
--shutdown-timeout) and exits 0.

flags:
`

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{maxBody: DefaultMaxBody}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.listen, "listen", DefaultListen, "host:port to listen on; anything but a loopback address lets whoever can reach it spend the keys passing through")
	fs.StringVar(&f.anthropic, "anthropic-upstream", DefaultAnthropicUpstream, "base URL of the Anthropic API")
	fs.StringVar(&f.openai, "openai-upstream", DefaultOpenAIUpstream, "base URL of the OpenAI API")
	fs.StringVar(&f.redisURL, "redis", "", "Redis URL (redis://[:password@]host:port[/db], rediss:// for TLS, or host:port) to share every budget and pause with the other proxies on it; empty: budgets in this process")
	fs.StringVar(&f.prefix, "redis-prefix", "tollgate", "prefix of the proxy's keys in Redis; proxies share budgets only under the same prefix")
	fs.IntVar(&f.limits.RequestsPerMinute, "rpm", 0, "requests per minute of every account and model family until the API's headers say (0: learn them from the headers)")
	fs.IntVar(&f.limits.InputTokensPerMinute, "itpm", 0, "input tokens per minute, as --rpm")
	fs.IntVar(&f.limits.OutputTokensPerMinute, "otpm", 0, "output tokens per minute, as --rpm")
	fs.IntVar(&f.limits.TokensPerMinute, "tpm", 0, "input+output tokens per minute (OpenAI's limit), as --rpm")
	fs.IntVar(&f.maxConcurrency, "max-concurrency", 0, "most calls in flight per account and model family (0: no cap)")
	fs.IntVar(&f.maxAttempts, "max-attempts", tollgate.DefaultMaxAttempts, "most times one call is sent, the first included")
	fs.DurationVar(&f.maxWait, "max-wait", tollgate.DefaultMaxWait, "longest wait the server may ask for (retry-after) before its 429 is passed to the client")
	fs.Var(&f.maxBody, "max-body", "largest request body (bytes, or with KiB, MiB, GiB); larger ones get 413")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "on SIGTERM, how long calls in flight may take to finish before they are cut")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, ErrHelp
		}
		return nil, &UsageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if f.anthropicU, err = upstreamURL("--anthropic-upstream", f.anthropic); err != nil {
		return nil, err
	}
	if f.openaU, err = upstreamURL("--openai-upstream", f.openai); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(f.listen); err != nil {
		return nil, usagef("--listen must be host:port, not %q", f.listen)
	}
	switch l := f.limits; {
	case l.RequestsPerMinute < 0 || l.InputTokensPerMinute < 0 || l.OutputTokensPerMinute < 0 || l.TokensPerMinute < 0:
		return nil, usagef("limits cannot be negative (0: learn them from the headers)")
	case f.maxConcurrency < 0:
		return nil, usagef("--max-concurrency cannot be negative")
	case f.maxAttempts < 1:
		return nil, usagef("--max-attempts must be at least 1, not %d", f.maxAttempts)
	case f.maxWait <= 0:
		return nil, usagef("--max-wait must be positive, not %s", f.maxWait)
	case f.shutdownTimeout < 0:
		return nil, usagef("--shutdown-timeout cannot be negative")
	case f.redisURL == "" && f.prefix != "tollgate":
		return nil, usagef("--redis-prefix needs --redis")
	}
	return f, nil
}

func upstreamURL(flagName, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("%s must be an http(s) base URL such as https://api.example.com, not %q", flagName, s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// redisClient returns a client for --redis: a URL, or host:port.
func redisClient(s string) (*redis.Client, error) {
	if !strings.Contains(s, "://") {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, usagef("--redis must be a redis:// URL or host:port, not %q", s)
		}
		return redis.NewClient(&redis.Options{Addr: s}), nil
	}
	opts, err := redis.ParseURL(s)
	if err != nil {
		// The error may quote the URL, password and all: say only what kind.
		return nil, usagef("--redis is not a valid Redis URL (redis://[:password@]host:port[/db])")
	}
	return redis.NewClient(opts), nil
}

// Run is the command `tollgate proxy`: it serves until ctx is done, then
// shuts down gracefully and returns nil. A bad command line returns a
// *UsageError, -h ErrHelp.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))

	var opts []tollgate.Option
	if f.limits != (tollgate.Limits{}) {
		opts = append(opts, tollgate.WithLimits(f.limits))
	}
	opts = append(opts, tollgate.WithMaxConcurrency(f.maxConcurrency), tollgate.WithMaxAttempts(f.maxAttempts),
		tollgate.WithMaxWait(f.maxWait), tollgate.WithLogger(logger))
	redisNote := ""
	if f.redisURL != "" {
		rdb, err := redisClient(f.redisURL)
		if err != nil {
			return err
		}
		defer rdb.Close()
		pctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
		err = rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			return fmt.Errorf("no Redis answers at %s: %w", rdb.Options().Addr, err)
		}
		opts = append(opts, tollgate.WithStore(redisstore.New(rdb, redisstore.WithPrefix(f.prefix))))
		redisNote = fmt.Sprintf("; budgets shared through Redis at %s (prefix %q)", rdb.Options().Addr, f.prefix)
	}

	shutdownTracing, tp, err := otlp.Setup(ctx, Service)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(sctx); err != nil {
			logger.Warn("tollgate proxy: tracing shutdown", "error", err.Error())
		}
	}()
	opts = append(opts, tollgate.WithTracerProvider(tp))

	p, err := New(Config{
		AnthropicUpstream: f.anthropicU,
		OpenAIUpstream:    f.openaU,
		MaxBody:           int64(f.maxBody),
		Options:           opts,
		Logger:            logger,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := p.Close(); err != nil {
			logger.Warn("tollgate proxy: closing", "error", err.Error())
		}
	}()

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.listen, err)
	}
	var inFlight atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			inFlight.Add(1)
			defer inFlight.Add(-1)
			p.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          log.New(slogWriter{logger}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	addr := ln.Addr().(*net.TCPAddr)
	base := "http://" + net.JoinHostPort(hostOf(f.listen, addr), strconv.Itoa(addr.Port))
	if w := exposedWarning(addr); w != "" {
		fmt.Fprintln(stderr, w)
	}
	otlp.Notice(stderr, Service)
	fmt.Fprintf(stdout, "tollgate proxy: listening on %s; export ANTHROPIC_BASE_URL=%s OPENAI_BASE_URL=%s/v1 (status: %s/status)%s\n",
		base, base, base, base, redisNote)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	// Stop accepting; let the calls in flight finish, within the timeout.
	fmt.Fprintf(stderr, "tollgate proxy: shutting down; %d calls in flight get up to %s to finish\n", inFlight.Load(), f.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(stderr, "tollgate proxy: %d calls still in flight after %s: cut\n", inFlight.Load(), f.shutdownTimeout)
		_ = srv.Close()
	}
	<-served
	return nil
}

// exposedWarning is the warning for a listener that is not on a loopback
// address, empty for one that is.
func exposedWarning(addr *net.TCPAddr) string {
	if addr.IP.IsLoopback() {
		return ""
	}
	return fmt.Sprintf("WARNING: listening on %s, not a loopback address: anyone who can reach it spends the API keys that pass through it.", addr)
}

// hostOf is the host to print for the listen address: as given, unless it
// was empty (all interfaces), when the address the listener got is shown.
func hostOf(listen string, addr *net.TCPAddr) string {
	host, _, _ := net.SplitHostPort(listen)
	if host == "" {
		return addr.IP.String()
	}
	return host
}

// slogWriter turns the http.Server's error log lines into warnings.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(b)))
	return len(b), nil
}

// byteSize is a flag of a size in bytes: 1048576, 32MiB, 512KiB, 1GiB.
type byteSize int64

func (b *byteSize) String() string {
	switch v := int64(*b); {
	case v > 0 && v%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", v>>30)
	case v > 0 && v%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", v>>20)
	case v > 0 && v%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", v>>10)
	}
	return strconv.FormatInt(int64(*b), 10)
}

func (b *byteSize) Set(s string) error {
	num, unit := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(num, u.suffix) {
			num, unit = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.size
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/unit {
		return fmt.Errorf("want a positive size in bytes, or with KiB, MiB or GiB, such as 32MiB")
	}
	*b = byteSize(n * unit)
	return nil
}
