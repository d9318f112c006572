package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/proxy"
	"github.com/tollgate-go/tollgate/internal/syncbuf"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestRunUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nope"}, "flag provided but not defined: -nope"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--listen", "8787"}, "--listen must be host:port"},
		{[]string{"--anthropic-upstream", "ftp://x"}, "--anthropic-upstream must be an http(s) base URL"},
		{[]string{"--openai-upstream", "api.openai.com"}, "--openai-upstream must be an http(s) base URL"},
		{[]string{"--anthropic-upstream", "https://x/?key=1"}, "--anthropic-upstream must be"},
		{[]string{"--rpm", "-1"}, "limits cannot be negative"},
		{[]string{"--max-attempts", "0"}, "--max-attempts must be at least 1"},
		{[]string{"--max-wait", "0s"}, "--max-wait must be positive"},
		{[]string{"--max-body", "0"}, `invalid value "0" for flag -max-body`},
		{[]string{"--max-concurrency", "-2"}, "--max-concurrency cannot be negative"},
		{[]string{"--shutdown-timeout", "-1s"}, "--shutdown-timeout cannot be negative"},
		{[]string{"--redis-prefix", "x"}, "--redis-prefix needs --redis"},
		{[]string{"--redis", "nohostport"}, "--redis must be a redis:// URL or host:port"},
		{[]string{"--redis", "redis://:hunter2-SECRET@127.0.0.1:6379/notadb"}, "--redis is not a valid Redis URL"},
	} {
		var stdout, stderr bytes.Buffer
		err := proxy.Run(context.Background(), tc.args, &stdout, &stderr)
		var ue *proxy.UsageError
		require.True(t, errors.As(err, &ue), "%v: %v", tc.args, err)
		assert.Contains(t, err.Error()+stderr.String(), tc.want, "%v", tc.args)
		assert.NotContains(t, err.Error()+stderr.String(), "SECRET", "a Redis password is never repeated")
		assert.Empty(t, stdout.String(), "%v", tc.args)
	}
	var stderr bytes.Buffer
	assert.ErrorIs(t, proxy.Run(context.Background(), []string{"-h"}, io.Discard, &stderr), proxy.ErrHelp)
	assert.Contains(t, stderr.String(), "usage: tollgate proxy")
	assert.Contains(t, stderr.String(), "-max-body")
	assert.Contains(t, stderr.String(), "(default 32MiB)")
}

// waitLine returns the first match of re in what b has had written,
// waiting for it up to a deadline.
func waitLine(t *testing.T, b *syncbuf.Buffer, re *regexp.Regexp) []string {
	t.Helper()
	m := b.Wait(re, 5*time.Second)
	if m == nil {
		t.Fatalf("no %s in %q", re, b.String())
	}
	return m
}

// StartLine matches the line the proxy prints when it listens.
var StartLine = regexp.MustCompile(`tollgate proxy: listening on (http://127\.0\.0\.1:\d+); export ANTHROPIC_BASE_URL=(\S+) OPENAI_BASE_URL=(\S+) `)

// Run serves until its context ends, then stops accepting, lets the calls
// in flight finish and returns nil. The upstream holds its stream open until
// the proxy has said it is shutting down, so the call is in flight then.
func TestRunServesUntilCancelledThenDrains(t *testing.T) {
	up := newGatedStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, []string{"--listen", "127.0.0.1:0", "--anthropic-upstream", up.URL, "--openai-upstream", up.URL}, stdout, stderr)
	}()
	m := waitLine(t, stdout, StartLine)
	base := m[1]
	assert.Equal(t, base, m[2])
	assert.Equal(t, base+"/v1", m[3])
	assert.Equal(t, 1, strings.Count(stdout.String(), "\n"), "one line")
	assert.NotContains(t, stderr.String(), "WARNING", "loopback: no warning")

	resp, err := http.DefaultClient.Do(anthropicRequest(t, base, messages("claude-sonnet-5", true)))
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	_, err = br.ReadString('\n')
	require.NoError(t, err)
	cancel()
	waitLine(t, stderr, regexp.MustCompile(`shutting down; 1 calls in flight`))
	refused(t, base)
	select {
	case err := <-done:
		t.Fatalf("Run returned with a call in flight: %v", err)
	default:
	}
	close(up.release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Contains(t, string(rest), "message_stop", "the stream ran to its end")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its calls finished")
	}
}

// gatedStream is an upstream whose Messages stream sends message_start,
// then waits for release (or the request's end) before the rest.
type gatedStream struct {
	*httptest.Server
	release chan struct{}
}

func newGatedStream(t *testing.T) *gatedStream {
	g := &gatedStream{release: make(chan struct{})}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("content-type", "text/event-stream")
		_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","+
			"\"role\":\"assistant\",\"model\":\"claude-sonnet-5\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-g.release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n"+
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}))
	t.Cleanup(g.Close)
	return g
}

// refused waits until base takes no new connection, up to a deadline.
func refused(t *testing.T, base string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get(base + "/healthz")
		if err != nil {
			return
		}
		_ = resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after shutting down")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Past --shutdown-timeout, calls still in flight are cut and Run returns.
func TestRunCutsCallsAfterShutdownTimeout(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{StreamEventDelay: time.Second, OutputTokens: 1000})
	t.Cleanup(api.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, []string{"--listen", "127.0.0.1:0", "--shutdown-timeout", "50ms",
			"--anthropic-upstream", api.URL, "--openai-upstream", api.URL}, stdout, stderr)
	}()
	base := waitLine(t, stdout, StartLine)[1]
	resp, err := http.DefaultClient.Do(anthropicRequest(t, base, messages("claude-sonnet-5", true)))
	require.NoError(t, err)
	defer resp.Body.Close()
	_, err = bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its shutdown timeout")
	}
	assert.Contains(t, stderr.String(), "calls still in flight after 50ms: cut")
	_, err = io.ReadAll(resp.Body)
	assert.Error(t, err, "the stream was cut")
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, Run exports its spans with OTLP
// over HTTP, service tollgate-proxy, flushed when it shuts down; no key is in
// them.
func TestRunExportsSpansWithoutKeys(t *testing.T) {
	var mu sync.Mutex
	var exported bytes.Buffer
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" {
			mu.Lock()
			exported.Write(b)
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	t.Cleanup(collector.Close)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	api := tollgatetest.NewServer(tollgatetest.Config{APIKey: anthropicKey})
	t.Cleanup(api.Close)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, []string{"--listen", "127.0.0.1:0", "--anthropic-upstream", api.URL, "--openai-upstream", api.URL}, stdout, stderr)
	}()
	base := waitLine(t, stdout, StartLine)[1]
	assert.Contains(t, stderr.String(), `exporting tollgate's spans to `+collector.URL+` (service "tollgate-proxy")`)
	resp, body := do(t, anthropicRequest(t, base, messages("claude-sonnet-5", false)))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Contains(t, exported.String(), "tollgate-proxy", "the service name")
	assert.Contains(t, exported.String(), "chat claude-sonnet-5", "the call's span")
	assert.NotContains(t, exported.String(), anthropicKey)
	assert.NotContains(t, exported.String()+stdout.String()+stderr.String(), "SECRET")
}
