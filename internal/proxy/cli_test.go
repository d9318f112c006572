package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/internal/proxy"
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

// lines collects what Run prints, line by line.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{}
}

func newLines() *lines { return &lines{more: make(chan struct{}, 100)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	select {
	case l.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait returns the first match of re in what was written, waiting for it
// up to a deadline.
func (l *lines) wait(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if m := re.FindStringSubmatch(l.String()); m != nil {
			return m
		}
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("no %s in %q", re, l.String())
		}
	}
}

// StartLine matches the line the proxy prints when it listens.
var StartLine = regexp.MustCompile(`tollgate proxy: listening on (http://127\.0\.0\.1:\d+); export ANTHROPIC_BASE_URL=(\S+) OPENAI_BASE_URL=(\S+) `)

// Run serves until its context ends, then lets the calls in flight finish
// and returns nil.
func TestRunServesUntilCancelledThenDrains(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000,
		StreamEventDelay: 2 * time.Millisecond})
	t.Cleanup(api.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := newLines(), newLines()
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, []string{"--listen", "127.0.0.1:0", "--anthropic-upstream", api.URL, "--openai-upstream", api.URL}, stdout, stderr)
	}()
	m := stdout.wait(t, StartLine)
	base := m[1]
	assert.Equal(t, base, m[2])
	assert.Equal(t, base+"/v1", m[3])
	assert.Equal(t, 1, strings.Count(stdout.String(), "\n"), "one line")
	assert.NotContains(t, stderr.String(), "WARNING", "loopback: no warning")

	// A stream in flight when the proxy is told to stop still finishes.
	resp, err := http.DefaultClient.Do(anthropicRequest(t, base, messages("claude-sonnet-5", true)))
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	_, err = br.ReadString('\n')
	require.NoError(t, err)
	cancel()
	stderr.wait(t, regexp.MustCompile(`shutting down; 1 calls in flight`))
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Contains(t, string(rest), "message_stop", "the stream ran to its end")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its calls finished")
	}
	_, err = http.Get(base + "/healthz")
	assert.Error(t, err, "no longer accepting")
}

// Past --shutdown-timeout, calls still in flight are cut and Run returns.
func TestRunCutsCallsAfterShutdownTimeout(t *testing.T) {
	api := tollgatetest.NewServer(tollgatetest.Config{StreamEventDelay: time.Second, OutputTokens: 1000})
	t.Cleanup(api.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := newLines(), newLines()
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, []string{"--listen", "127.0.0.1:0", "--shutdown-timeout", "50ms",
			"--anthropic-upstream", api.URL, "--openai-upstream", api.URL}, stdout, stderr)
	}()
	base := stdout.wait(t, StartLine)[1]
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
