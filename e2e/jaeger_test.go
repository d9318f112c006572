package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The environment that points the test at a Jaeger; scripts/jaeger.sh
// start prints both.
const (
	queryEnv = "TOLLGATE_JAEGER_QUERY"       // e.g. http://127.0.0.1:16696
	otlpEnv  = "OTEL_EXPORTER_OTLP_ENDPOINT" // e.g. http://127.0.0.1:14318 (OTLP over HTTP)
)

// jaeger returns the Jaeger's OTLP endpoint and query URL. Without one the
// test is skipped, or fails when TOLLGATE_REQUIRE_SERVICES=1 (as
// scripts/test sets it).
func jaeger(t *testing.T) (otlp, query string) {
	t.Helper()
	t.Cleanup(queryClient.CloseIdleConnections)
	otlp, query = os.Getenv(otlpEnv), os.Getenv(queryEnv)
	why := ""
	switch {
	case otlp == "" || query == "":
		why = fmt.Sprintf("%s and %s are not set", queryEnv, otlpEnv)
	default:
		if err := get(context.Background(), query+"/api/v3/services", nil); err != nil {
			why = fmt.Sprintf("no Jaeger answers at %s=%s: %v", queryEnv, query, err)
		}
	}
	if why != "" {
		msg := why + `; start one with: eval "$(scripts/jaeger.sh start)"`
		if os.Getenv("TOLLGATE_REQUIRE_SERVICES") == "1" {
			t.Fatal("Jaeger is required (TOLLGATE_REQUIRE_SERVICES=1): " + msg)
		}
		t.Skip("Jaeger not available: " + msg)
	}
	return otlp, query
}

func TestJaegerTraces(t *testing.T) {
	otlp, query := jaeger(t)
	ctx := context.Background()
	service := "tollgate-e2e-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	since := time.Now().Add(-time.Minute)

	exportTransport := &http.Transport{}
	t.Cleanup(exportTransport.CloseIdleConnections) // after the provider's shutdown
	exporter, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(otlp+"/v1/traces"),
		otlptracehttp.WithHTTPClient(&http.Client{Transport: exportTransport}))
	require.NoError(t, err)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	srv := tollgatetest.NewServer(tollgatetest.Config{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 1_000_000})
	t.Cleanup(srv.Close)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt := tollgate.New(base, tollgate.WithTracerProvider(tp), tollgate.WithBackoff(time.Millisecond, 5*time.Millisecond))
	client := anthropic.NewClient(
		option.WithBaseURL(srv.URL),
		option.WithAPIKey("sk-ant-e2e-secret"),
		option.WithHTTPClient(&http.Client{Transport: rt}),
		option.WithMaxRetries(0), // tollgate owns the retry loop
		option.WithTracerProvider(tp),
	)
	params := anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeSonnet5,
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Write a haiku about rate limits."))},
	}

	// Each call runs under a root span of the test's, so its trace is known.
	type call struct {
		name     string
		stream   bool
		attempts int
		trace    trace.TraceID
		stats    tollgatetest.Stats // what the fake server counted for it
	}
	calls := []*call{{name: "json", attempts: 1}, {name: "stream", stream: true, attempts: 1}, {name: "retried", attempts: 2}}
	for _, c := range calls {
		before := srv.Stats()
		if c.name == "retried" {
			srv.Inject(1, tollgatetest.Fault{Status: 529, RetryAfterMS: "5"})
		}
		cctx, root := tp.Tracer("e2e").Start(ctx, "e2e "+c.name)
		c.trace = root.SpanContext().TraceID()
		if c.stream {
			stream := client.Messages.NewStreaming(cctx, params)
			for stream.Next() {
			}
			require.NoError(t, stream.Err())
			require.NoError(t, stream.Close())
		} else {
			_, err := client.Messages.New(cctx, params)
			require.NoError(t, err)
		}
		root.End()
		c.stats = srv.Stats().Since(before)
		require.Equal(t, c.attempts, c.stats.Requests, c.name)
	}
	require.NoError(t, tp.ForceFlush(ctx))

	// Jaeger indexes spans asynchronously: poll until every call's trace has
	// all its spans (root, SDK, call, attempts), or a deadline passes.
	var traces map[string][]span
	deadline := time.Now().Add(10 * time.Second)
	for {
		traces, err = findTraces(ctx, query, service, since, time.Now().Add(time.Minute))
		complete := err == nil
		for _, c := range calls {
			complete = complete && len(traces[c.trace.String()]) == 3+c.attempts
		}
		if complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger at %s did not return the traces of service %s within 10s (last error: %v); got %d traces", query, service, err, len(traces))
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			spans := traces[c.trace.String()]
			root := only(t, spans, "e2e "+c.name)
			sdk := only(t, spans, "anthropic.messages.create")
			ours := only(t, spans, "chat claude-sonnet-5")
			attempts := named(spans, "POST")

			// root → the SDK's span → tollgate's call span → one span per attempt
			assert.Equal(t, root.SpanID, sdk.ParentSpanID)
			assert.Equal(t, sdk.SpanID, ours.ParentSpanID, "tollgate's span nests in the SDK's")
			require.Len(t, attempts, c.attempts)
			for i, a := range attempts {
				assert.Equal(t, ours.SpanID, a.ParentSpanID, "attempt %d", i+1)
				assert.True(t, a.isClient(), "attempt %d kind", i+1)
			}
			assert.True(t, ours.isClient())

			assert.Equal(t, "chat", ours.str("gen_ai.operation.name"))
			assert.Equal(t, "anthropic", ours.str("gen_ai.provider.name"))
			assert.Equal(t, c.stream, ours.attr("gen_ai.request.stream") == true)
			require.Positive(t, c.stats.InputTokens)
			require.Positive(t, c.stats.OutputTokens)
			assert.Equal(t, int64(c.stats.InputTokens), ours.int("gen_ai.usage.input_tokens"), "input tokens as the server counted them")
			assert.Equal(t, int64(c.stats.OutputTokens), ours.int("gen_ai.usage.output_tokens"), "output tokens as the server counted them")
			assert.Equal(t, int64(c.attempts), ours.int("tollgate.attempts"))
			assert.Equal(t, int64(1000), ours.int("tollgate.ratelimit.requests.limit"))
			assert.NotEmpty(t, ours.str("gen_ai.response.id"))
			if c.stream {
				assert.NotNil(t, ours.attr("gen_ai.response.time_to_first_chunk"))
			}
			if c.attempts == 2 {
				first, second := byAttempt(attempts, 1), byAttempt(attempts, 2)
				assert.Equal(t, int64(529), first.int("http.response.status_code"))
				assert.Equal(t, int64(200), second.int("http.response.status_code"))
				assert.Equal(t, int64(1), second.int("http.request.resend_count"))
				assert.Contains(t, ours.eventNames(), "tollgate.retry")
			}
			for _, s := range spans {
				for _, kv := range s.Attributes {
					assert.NotContains(t, fmt.Sprint(kv.Value), "sk-ant-e2e-secret", "%s: %s", s.Name, kv.Key)
				}
			}
		})
	}
}

// findTraces asks Jaeger's API v3 for the traces of service started in
// [min, max], grouped by trace id.
func findTraces(ctx context.Context, query, service string, min, max time.Time) (map[string][]span, error) {
	q := url.Values{
		"query.service_name":   {service},
		"query.start_time_min": {min.UTC().Format(time.RFC3339Nano)},
		"query.start_time_max": {max.UTC().Format(time.RFC3339Nano)},
		"query.num_traces":     {"20"},
	}
	var body struct {
		Result struct {
			ResourceSpans []struct {
				ScopeSpans []struct {
					Spans []span `json:"spans"`
				} `json:"scopeSpans"`
			} `json:"resourceSpans"`
		} `json:"result"`
	}
	if err := get(ctx, query+"/api/v3/traces?"+q.Encode(), &body); err != nil {
		return nil, err
	}
	traces := map[string][]span{}
	for _, rs := range body.Result.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				traces[s.TraceID] = append(traces[s.TraceID], s)
			}
		}
	}
	return traces, nil
}

// queryClient asks Jaeger; its idle connections are closed after each test
// (goleak checks that nothing is left running).
var queryClient = &http.Client{Transport: &http.Transport{}}

func get(ctx context.Context, u string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := queryClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if into == nil {
		return nil
	}
	return json.Unmarshal(b, into)
}

// span is a span as Jaeger's API v3 returns it (OTLP JSON).
type span struct {
	TraceID      string     `json:"traceId"`
	SpanID       string     `json:"spanId"`
	ParentSpanID string     `json:"parentSpanId"`
	Name         string     `json:"name"`
	Kind         any        `json:"kind"` // 3 or "SPAN_KIND_CLIENT"
	Attributes   []keyValue `json:"attributes"`
	Events       []struct {
		Name string `json:"name"`
	} `json:"events"`
}

type keyValue struct {
	Key   string         `json:"key"`
	Value map[string]any `json:"value"` // {"stringValue": …}, {"intValue": "12"}, …
}

func (s span) isClient() bool { return s.Kind == float64(3) || s.Kind == "SPAN_KIND_CLIENT" }

// attr returns the attribute's value: a string, an int64, a float64, a bool
// or nil.
func (s span) attr(key string) any {
	for _, kv := range s.Attributes {
		if kv.Key != key {
			continue
		}
		for typ, v := range kv.Value {
			switch typ {
			case "intValue": // int64s are strings in OTLP JSON
				n, _ := strconv.ParseInt(fmt.Sprint(v), 10, 64)
				return n
			default:
				return v
			}
		}
	}
	return nil
}

func (s span) str(key string) string { v, _ := s.attr(key).(string); return v }
func (s span) int(key string) int64  { v, _ := s.attr(key).(int64); return v }

func (s span) eventNames() []string {
	var names []string
	for _, e := range s.Events {
		names = append(names, e.Name)
	}
	return names
}

func named(spans []span, name string) []span {
	var out []span
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func only(t *testing.T, spans []span, name string) span {
	t.Helper()
	found := named(spans, name)
	require.Len(t, found, 1, "spans named %q", name)
	return found[0]
}

func byAttempt(attempts []span, n int64) span {
	for _, a := range attempts {
		if a.int("tollgate.attempt") == n {
			return a
		}
	}
	return span{}
}
