package main

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The proxy as its own process: it prints where it listens, passes a stream
// through, and on SIGTERM lets that stream finish and exits 0. What it
// writes never holds a key.
func TestProxyProcessSIGTERM(t *testing.T) {
	const key = "sk-ant-cmd-test-SECRET-991"
	api := tollgatetest.NewServer(tollgatetest.Config{APIKey: key, RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000,
		OutputTokensPerMinute: 1_000_000, StreamEventDelay: 2 * time.Millisecond})
	t.Cleanup(api.Close)
	dead := tollgatetest.NewServer(tollgatetest.Config{})
	deadURL := dead.URL
	dead.Close() // an OpenAI upstream that refuses connections: its failure is logged

	cmd := exec.Command(os.Args[0], "proxy", "--listen", "127.0.0.1:0", "--anthropic-upstream", api.URL, "--openai-upstream", deadURL,
		"--max-attempts", "1")
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "OTEL_EXPORTER_OTLP_ENDPOINT=")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	out := bufio.NewReader(stdout)
	lines := make(chan string, 4)
	go func() {
		for {
			l, err := out.ReadString('\n')
			if err != nil {
				close(lines)
				exited <- cmd.Wait()
				return
			}
			lines <- l
		}
	}()
	var first string
	select {
	case first = <-lines:
	case <-time.After(10 * time.Second):
		t.Fatalf("the proxy printed nothing; stderr: %s", stderr.String())
	}
	m := regexp.MustCompile(`^tollgate proxy: listening on (http://127\.0\.0\.1:\d+); export ANTHROPIC_BASE_URL=(\S+) OPENAI_BASE_URL=(\S+) `).FindStringSubmatch(first)
	require.NotNil(t, m, first)
	base := m[1]
	require.Equal(t, base+"/v1", m[3])

	// A failed upstream call is logged, without the key.
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-5","messages":[{"role":"user","content":"Hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)

	req, _ = http.NewRequest(http.MethodPost, base+"/v1/messages", strings.NewReader(
		`{"model":"claude-sonnet-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}`))
	req.Header.Set("x-api-key", key)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body := bufio.NewReader(resp.Body)
	_, err = body.ReadString('\n')
	require.NoError(t, err)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	rest, err := io.ReadAll(body)
	require.NoError(t, err)
	assert.Contains(t, string(rest), "message_stop", "the stream in flight ran to its end")
	select {
	case err := <-exited:
		require.NoError(t, err, "exit status 0; stderr: %s", stderr.String())
		exited <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not exit after SIGTERM")
	}
	assert.Contains(t, stderr.String(), "upstream request failed")
	assert.Contains(t, stderr.String(), "shutting down")
	assert.NotContains(t, first+stderr.String(), key)
	assert.NotContains(t, stderr.String(), "SECRET")
}
