package tollgatetest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	ooption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is a whole second, so reset times are easy to predict.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func newServer(t *testing.T, cfg tollgatetest.Config) *tollgatetest.Server {
	t.Helper()
	srv := tollgatetest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// httpClient returns a client whose idle connections are closed when the
// test ends (so goleak sees no transport goroutines).
func httpClient(t *testing.T) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func anthropicClient(t *testing.T, srv *tollgatetest.Server, opts ...aoption.RequestOption) anthropic.Client {
	base := []aoption.RequestOption{
		aoption.WithBaseURL(srv.URL), aoption.WithAPIKey("test"), aoption.WithMaxRetries(0),
		aoption.WithHTTPClient(httpClient(t)), aoption.WithoutOpenTelemetry(),
	}
	return anthropic.NewClient(append(base, opts...)...)
}

func openAIClient(t *testing.T, srv *tollgatetest.Server, opts ...ooption.RequestOption) openai.Client {
	base := []ooption.RequestOption{
		ooption.WithBaseURL(srv.URL + "/v1"), ooption.WithAPIKey("test"), ooption.WithMaxRetries(0),
		ooption.WithHTTPClient(httpClient(t)),
	}
	return openai.NewClient(append(base, opts...)...)
}

func userParams(prompt string, maxTokens int64) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-5",
		MaxTokens: maxTokens,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
	}
}

// rawClient posts raw bodies.
type rawClient struct {
	t   *testing.T
	c   *http.Client
	url string
}

func raw(t *testing.T, srv *tollgatetest.Server) *rawClient {
	return &rawClient{t: t, c: httpClient(t), url: srv.URL}
}

// post sends body to path with header pairs (name, value, ...) and returns
// the response with its body read.
func (rc *rawClient) post(path, body string, hdr ...string) (*http.Response, string) {
	rc.t.Helper()
	req, err := http.NewRequest(http.MethodPost, rc.url+path, strings.NewReader(body))
	require.NoError(rc.t, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := rc.c.Do(req)
	require.NoError(rc.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(rc.t, err)
	return resp, string(b)
}

// msg is a minimal Messages body with the given prompt and max_tokens.
func msg(prompt string, maxTokens int) string {
	return `{"model":"claude-sonnet-5","max_tokens":` + itoa(maxTokens) +
		`,"messages":[{"role":"user","content":` + quote(prompt) + `}]}`
}

func chat(prompt string, extra string) string {
	return `{"model":"gpt-4o","messages":[{"role":"user","content":` + quote(prompt) + `}]` + extra + `}`
}

func itoa(n int) string { return strconv.Itoa(n) }

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// words returns a prompt of exactly n tokens.
func words(n int) string { return strings.TrimSpace(strings.Repeat("word ", n)) }

func aoptionRetries(n int) aoption.RequestOption { return aoption.WithMaxRetries(n) }

func aoptionKey(k string) aoption.RequestOption { return aoption.WithAPIKey(k) }

func aoptionBase(u string) aoption.RequestOption { return aoption.WithBaseURL(u) }

func aoptionHTTP(c *http.Client) aoption.RequestOption { return aoption.WithHTTPClient(c) }
