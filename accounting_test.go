package tollgate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fakeclock"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The tests of issue 12's accounting: how output is counted (here), what the
// prompt cache takes off an estimate (promptcache_test.go), which endpoints
// draw on which pool (endpoints_test.go), and what the telemetry says of it
// (here). They drive the whole chain of New against tollgatetest on one fake
// clock, and read what tollgate estimated from the call span's attributes
// and the Snapshot.

var accEpoch = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

var accSonnet = tollgate.Key{Provider: tollgate.ProviderAnthropic, Family: "claude-sonnet-4"}

// accTier1 is the tier the fleet ran at: 50 RPM, 30k input and 8k
// output tokens a minute.
func accTier1(cfg tollgatetest.Config) tollgatetest.Config {
	cfg.RequestsPerMinute, cfg.InputTokensPerMinute, cfg.OutputTokensPerMinute = 50, 30_000, 8_000
	return cfg
}

// accRoomy are limits no test call comes near, for tests about what an
// attempt is charged rather than when it goes.
func accRoomy(cfg tollgatetest.Config) tollgatetest.Config {
	cfg.RequestsPerMinute, cfg.InputTokensPerMinute, cfg.OutputTokensPerMinute = 4_000, 2_000_000, 400_000
	return cfg
}

// The span attributes of what the budget estimated and what the server
// counted.
const (
	accEstInput     = "tollgate.estimate.input_tokens"
	accEstCached    = "tollgate.estimate.cache_read.input_tokens"
	accEstOutput    = "tollgate.estimate.output_tokens"
	accCountedIn    = "tollgate.counted.input_tokens"
	accCountedOut   = "tollgate.counted.output_tokens"
	accOutputRule   = "tollgate.output.accounting"
	accUsageInput   = "gen_ai.usage.input_tokens" // every prompt token, cached or not
	accUsageRead    = "gen_ai.usage.cache_read.input_tokens"
	accUsageCreated = "gen_ai.usage.cache_creation.input_tokens"
	accUsageOutput  = "gen_ai.usage.output_tokens"
)

// accRig is New's whole chain on a fake clock in front of a tollgatetest
// server on the same clock. It records spans, metrics and usage records;
// its base keeps every request body as sent and can hold requests at a
// gate.
type accRig struct {
	t      *testing.T
	clk    *fakeclock.Clock
	srv    *tollgatetest.Server
	url    string // where requests go: the server's URL
	rt     *tollgate.Transport
	base   *accBase
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader

	mu      sync.Mutex
	records []tollgate.UsageRecord
}

// newAccRig starts a tollgatetest server for cfg (its clock set to the
// rig's) and a Transport in front of it.
func newAccRig(t *testing.T, cfg tollgatetest.Config, opts ...tollgate.Option) *accRig {
	t.Helper()
	return newAccRigThrough(t, cfg, nil, opts...)
}

// newAccRigThrough is newAccRig whose requests go through what wrap makes
// of the server and the HTTP transport to it (nil: the transport itself).
func newAccRigThrough(t *testing.T, cfg tollgatetest.Config, wrap func(*tollgatetest.Server, http.RoundTripper) http.RoundTripper, opts ...tollgate.Option) *accRig {
	t.Helper()
	clk := fakeclock.New(accEpoch)
	cfg.Now = clk.Now
	srv := tollgatetest.NewServer(cfg)
	t.Cleanup(srv.Close)
	httpBase := &http.Transport{}
	t.Cleanup(httpBase.CloseIdleConnections)
	var next http.RoundTripper = httpBase
	if wrap != nil {
		next = wrap(srv, httpBase)
	}
	rig := newAccRigOn(t, clk, next, opts...)
	rig.srv, rig.url = srv, srv.URL
	return rig
}

// newAccRigOn is a rig whose base sends through next; it has no server
// (its requests name an address nobody listens on, for next to answer).
func newAccRigOn(t *testing.T, clk *fakeclock.Clock, next http.RoundTripper, opts ...tollgate.Option) *accRig {
	t.Helper()
	rig := &accRig{t: t, clk: clk, url: "http://127.0.0.1:9", base: &accBase{next: next},
		spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(rig.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(rig.reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	rig.rt = tollgate.New(rig.base, append([]tollgate.Option{
		tollgate.WithClock(clk), tollgate.WithTracerProvider(tp), tollgate.WithMeterProvider(mp),
		tollgate.WithUsageRecorder(func(_ context.Context, r tollgate.UsageRecord) {
			rig.mu.Lock()
			rig.records = append(rig.records, r)
			rig.mu.Unlock()
		}),
	}, opts...)...)
	return rig
}

// accBase is the rig's base transport: it reads each request body (keeping
// a copy), optionally holds the request at a gate, and sends it on.
type accBase struct {
	next http.RoundTripper

	mu      sync.Mutex
	bodies  [][]byte
	gate    chan struct{} // non-nil: requests wait until it is closed
	arrived chan struct{} // a value per request that reached the gate
}

func (b *accBase) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		var err error
		body, err = io.ReadAll(req.Body)
		_ = req.Body.Close()
		if err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
	}
	b.mu.Lock()
	b.bodies = append(b.bodies, body)
	gate, arrived := b.gate, b.arrived
	b.mu.Unlock()
	if gate != nil {
		arrived <- struct{}{}
		select {
		case <-gate:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	return b.next.RoundTrip(req)
}

// hold makes the requests that reach the base from now on wait until
// release is called (which a test also registers as a cleanup). arrived
// receives a value for each.
func (b *accBase) hold() (arrived <-chan struct{}, release func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	gate, ch := make(chan struct{}), make(chan struct{}, 256)
	b.gate, b.arrived = gate, ch
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			b.gate, b.arrived = nil, nil
			b.mu.Unlock()
			close(gate)
		})
	}
}

// sent returns the bodies of the requests the base sent, in order.
func (b *accBase) sent() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.bodies...)
}

// messages is a Messages request to the rig's server.
func (rig *accRig) messages(body string) *http.Request {
	return rig.anthropic(http.MethodPost, "/v1/messages", body)
}

// anthropic is a request to path of the rig's server, as the Anthropic SDK
// sends it.
func (rig *accRig) anthropic(method, path, body string) *http.Request {
	rig.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, rig.url+path, rd)
	require.NoError(rig.t, err)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("x-api-key", "test-key")
	if body != "" {
		req.Header.Set("content-type", "application/json")
	}
	return req
}

// chat is an OpenAI chat completions request to the rig's server.
func (rig *accRig) chat(body string) *http.Request {
	rig.t.Helper()
	req, err := http.NewRequest(http.MethodPost, rig.url+"/v1/chat/completions", strings.NewReader(body))
	require.NoError(rig.t, err)
	req.Header.Set("authorization", "Bearer test-key")
	req.Header.Set("content-type", "application/json")
	return req
}

// to sends req to the server at base instead: the same account, pool and
// Transport, another server.
func (rig *accRig) to(base string, req *http.Request) *http.Request {
	rig.t.Helper()
	u, err := url.Parse(base)
	require.NoError(rig.t, err)
	req.URL.Scheme, req.URL.Host, req.Host = u.Scheme, u.Host, ""
	return req
}

// another returns a rig with a Transport of its own (a second process) in
// front of the same server, on the same clock.
func (rig *accRig) another(opts ...tollgate.Option) *accRig {
	rig.t.Helper()
	httpBase := &http.Transport{}
	rig.t.Cleanup(httpBase.CloseIdleConnections)
	other := newAccRigOn(rig.t, rig.clk, httpBase, opts...)
	other.srv, other.url = rig.srv, rig.url
	return other
}

// start sends req on a goroutine of its own.
func (rig *accRig) start(req *http.Request) <-chan rtResult {
	return startRoundTrip(rig.rt, req)
}

// accGuard bounds how long a test waits for something that needs no fake
// time: a guard against a broken test hanging, not a timing assumption.
const accGuard = 5 * time.Second

// send waits for a call started with start, playing the fake clock through
// every wait the call starts on it (a wait fires at once), and returns the
// result and the waits it played.
func (rig *accRig) send(done <-chan rtResult) (rtResult, []time.Duration) {
	rig.t.Helper()
	var waits []time.Duration
	guard := time.After(accGuard)
	for {
		changed := rig.clk.Changed()
		if p := rig.clk.Pending(); len(p) > 0 {
			waits = append(waits, p[0])
			rig.clk.AdvanceToNext()
			continue
		}
		select {
		case r := <-done:
			return r, waits
		case <-changed:
		case <-guard:
			rig.t.Fatal("the call neither ended nor waited on the fake clock")
		}
	}
}

// receive is send for a call that must not wait on the fake clock: one that
// does fails the test (and is played through to its end).
func (rig *accRig) receive(done <-chan rtResult) rtResult {
	rig.t.Helper()
	r, waits := rig.send(done)
	assert.Empty(rig.t, waits, "the call went without waiting on the clock")
	return r
}

// awaitSent waits until n requests have reached the base's gate (see
// hold). It fails the test when an attempt waits on the fake clock first.
func (rig *accRig) awaitSent(arrived <-chan struct{}, n int) {
	rig.t.Helper()
	guard := time.After(accGuard)
	for i := 0; i < n; {
		changed := rig.clk.Changed()
		if p := rig.clk.Pending(); len(p) > 0 {
			rig.t.Errorf("only %d of %d calls were sent before one waited on the clock (%v)", i, n, p)
			return
		}
		select {
		case <-arrived:
			i++
		case <-changed:
		case <-guard:
			rig.t.Fatalf("only %d of %d calls were sent", i, n)
		}
	}
}

// accCall is a finished call: its status, body and call span's attributes.
type accCall struct {
	t      *testing.T
	status int
	body   string
	span   map[string]any
}

// do sends req and reads its response to the end, without moving the fake
// clock, and returns the call with the span it ended.
func (rig *accRig) do(req *http.Request) accCall {
	rig.t.Helper()
	before := len(rig.callSpans())
	r := rig.receive(rig.start(req))
	require.NoError(rig.t, r.err)
	body := accReadAll(rig.t, r.resp)
	spans := rig.callSpans()
	require.Len(rig.t, spans, before+1, "the call span ends with the body")
	return accCall{t: rig.t, status: r.resp.StatusCode, body: body, span: accAttrs(spans[before].Attributes)}
}

// quiet is do for a call that must succeed, without looking at its span.
func (rig *accRig) quiet(req *http.Request) {
	rig.t.Helper()
	r := rig.receive(rig.start(req))
	require.NoError(rig.t, r.err)
	require.Equal(rig.t, http.StatusOK, r.resp.StatusCode)
	accReadAll(rig.t, r.resp)
}

// ok is do for a call that must succeed.
func (rig *accRig) ok(req *http.Request) accCall {
	rig.t.Helper()
	c := rig.do(req)
	require.Equal(rig.t, http.StatusOK, c.status, "%s", c.body)
	return c
}

func accReadAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return string(b)
}

// callSpans returns the ended call spans (not the attempts'), in end order.
func (rig *accRig) callSpans() tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range rig.spans.GetSpans() {
		if _, attempt := accAttrs(s.Attributes)["tollgate.attempt"]; !attempt {
			out = append(out, s)
		}
	}
	return out
}

func accAttrs(kvs []attribute.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

// int returns the span's integer attribute key, failing the test when the
// span has none.
func (c accCall) int(key string) int64 {
	c.t.Helper()
	v, ok := c.span[key]
	require.True(c.t, ok, "the call span has %s", key)
	n, ok := v.(int64)
	require.True(c.t, ok, "%s is an integer: %v", key, v)
	return n
}

func (c accCall) str(key string) string {
	c.t.Helper()
	v, ok := c.span[key]
	require.True(c.t, ok, "the call span has %s", key)
	s, _ := v.(string)
	return s
}

// budget returns the Budget layer's view of the first Key of k's provider
// and family, failing the test when the State does not know it.
func (rig *accRig) budget(k tollgate.Key) tollgate.BudgetSnapshot {
	rig.t.Helper()
	ks, ok := rig.rt.Snapshot().Key(k)
	require.True(rig.t, ok, "the State knows %s", k)
	return ks.Budget
}

func (rig *accRig) usageRecords() []tollgate.UsageRecord {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return append([]tollgate.UsageRecord(nil), rig.records...)
}

// accWords returns n words of four letters or digits each: tollgatetest's
// tokenizer counts each as one token, five prompt bytes with its space.
// Texts of different seeds differ.
func accWords(seed string, n int) string {
	const digits = "abcdefghijklmnopqrstuvwxyz0123456789"
	h := fnv.New32a()
	_, _ = h.Write([]byte(seed))
	off := int(h.Sum32() % (36 * 36 * 36 * 36))
	var b strings.Builder
	b.Grow(n * 5)
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		x := (off + i*7919) % (36 * 36 * 36 * 36)
		b.WriteByte(digits[x/(36*36*36)%36])
		b.WriteByte(digits[x/(36*36)%36])
		b.WriteByte(digits[x/36%36])
		b.WriteByte(digits[x%36])
	}
	return b.String()
}

// accBlock is one content block of a Messages request.
type accBlock = map[string]any

func accText(s string) accBlock { return accBlock{"type": "text", "text": s} }

// accMarked returns a copy of b with cache_control, asking for ttl ("" for
// the default).
func accMarked(b accBlock, ttl string) accBlock {
	out := make(accBlock, len(b)+1)
	for k, v := range b {
		out[k] = v
	}
	cc := map[string]any{"type": "ephemeral"}
	if ttl != "" {
		cc["ttl"] = ttl
	}
	out["cache_control"] = cc
	return out
}

// accTurn is one message of a Messages request.
type accTurn struct {
	Role    string     `json:"role"`
	Content []accBlock `json:"content"`
}

// accRequest is a Messages request body.
func accRequest(model string, maxTokens int, system []accBlock, turns ...accTurn) string {
	req := map[string]any{"model": model, "max_tokens": maxTokens, "messages": turns}
	if system != nil {
		req["system"] = system
	}
	b, err := json.Marshal(req)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// accConvo is a conversation as agent harnesses keep it: a system prompt,
// then turn after turn; each request marks the system prompt and the
// newest turn's last block with cache_control.
type accConvo struct {
	model     string
	maxTokens int
	system    string
	turns     []accTurn // unmarked
}

func (c *accConvo) say(role string, texts ...string) *accConvo {
	turn := accTurn{Role: role}
	for _, s := range texts {
		turn.Content = append(turn.Content, accText(s))
	}
	c.turns = append(c.turns, turn)
	return c
}

// body is the conversation's next request: with cache_control asking ttl
// on the system block and the newest turn's last block when marked, with
// none when not.
func (c *accConvo) body(marked bool, ttl string) string {
	system := []accBlock{accText(c.system)}
	turns := append([]accTurn(nil), c.turns...)
	if marked {
		system[0] = accMarked(system[0], ttl)
		last := &turns[len(turns)-1]
		content := append([]accBlock(nil), last.Content...)
		content[len(content)-1] = accMarked(content[len(content)-1], ttl)
		last.Content = content
	}
	return accRequest(c.model, c.maxTokens, system, turns...)
}

// accSmall is a short one-turn Messages request for model.
func accSmall(model string, maxTokens int, seed string) string {
	return accRequest(model, maxTokens, nil, accTurn{Role: "user", Content: []accBlock{accText(accWords(seed, 50))}})
}

// ---- Output accounting ----

// Against a server that counts output as it is produced, an attempt
// reserves what the pool's calls are learned to produce, never its
// max_tokens: calls asking 8,192 tokens each under an 8,000-a-minute output
// limit go out together, and the rule in force is the provider's, which
// nothing the server shows contradicts, whatever the rounding.
func TestOutputCountedAsProducedReservesALearnedEstimateNotMaxTokens(t *testing.T) {
	for _, rounding := range []tollgatetest.RemainingRounding{tollgatetest.RoundNearest, tollgatetest.RoundDown, tollgatetest.Exact} {
		t.Run(fmt.Sprint("rounding=", rounding), func(t *testing.T) {
			rig := newAccRig(t, accTier1(tollgatetest.Config{
				OutputAccounting: tollgatetest.CountAsProduced, RoundRemaining: rounding}))
			const maxTokens = 8192
			first := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "first")))
			assert.Equal(t, "reserve_max_tokens", first.str(accOutputRule), "before any response, the safe rule")
			assert.Equal(t, int64(maxTokens), first.int(accEstOutput))
			b := rig.budget(accSonnet)
			assert.Equal(t, tollgate.CountAsProduced, b.Output)
			assert.Equal(t, "detected", b.OutputSource, "the first response confirmed Anthropic's documented rule")

			const together = 4
			arrived, release := rig.base.hold()
			t.Cleanup(release)
			var calls []<-chan rtResult
			for i := range together {
				calls = append(calls, rig.start(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, fmt.Sprint("call", i)))))
			}
			rig.awaitSent(arrived, together)
			b = rig.budget(accSonnet)
			assert.Equal(t, together, b.InFlight)
			perCall := math.Ceil(b.ProducedEstimate)
			assert.Less(t, perCall, float64(maxTokens))
			assert.Equal(t, together*perCall, b.Dimensions[tollgate.OutputTokens].Reserved,
				"each attempt in flight holds the learned estimate of its output")
			release()

			before := len(rig.callSpans())
			for _, c := range calls {
				r := rig.receive(c)
				require.NoError(t, r.err)
				assert.Equal(t, http.StatusOK, r.resp.StatusCode)
				accReadAll(t, r.resp)
			}
			for _, s := range rig.callSpans()[before:] {
				c := accCall{t: t, span: accAttrs(s.Attributes)}
				assert.Equal(t, int64(perCall), c.int(accEstOutput))
				assert.Equal(t, "count_as_produced", c.str(accOutputRule))
			}
			b = rig.budget(accSonnet)
			assert.Equal(t, tollgate.CountAsProduced, b.Output, "still the rule in force after calls in flight together")
			assert.Zero(t, b.Dimensions[tollgate.OutputTokens].Reserved, "all settled")
			assert.Zero(t, rig.srv.Stats().RateLimited)
		})
	}
}

// Against a server that takes max_tokens at admission, the first response
// shows it — the output-tokens remaining at its start is the limit less
// max_tokens, however it is rounded — and from then on each attempt
// reserves its max_tokens, without the server's rounding ever making it
// look like the other rule.
func TestOutputReservedMaxTokensIsDetectedAndReserved(t *testing.T) {
	for _, rounding := range []tollgatetest.RemainingRounding{tollgatetest.RoundNearest, tollgatetest.RoundDown, tollgatetest.Exact} {
		t.Run(fmt.Sprint("rounding=", rounding), func(t *testing.T) {
			rig := newAccRig(t, accTier1(tollgatetest.Config{
				OutputAccounting: tollgatetest.ReserveMaxTokens, RoundRemaining: rounding}))
			const maxTokens = 2048 // as the fleet under the older rule
			first := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "first")))
			assert.Equal(t, "reserve_max_tokens", first.str(accOutputRule), "before any response, the safe rule")
			b := rig.budget(accSonnet)
			assert.Equal(t, tollgate.ReserveMaxTokens, b.Output)
			assert.Equal(t, "detected", b.OutputSource)

			_, release := rig.base.hold()
			t.Cleanup(release)
			held := rig.start(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "second")))
			require.True(t, bgtEventually(func() bool { return rig.budget(accSonnet).InFlight == 1 }), "the second call is admitted")
			assert.Equal(t, float64(maxTokens), rig.budget(accSonnet).Dimensions[tollgate.OutputTokens].Reserved,
				"an attempt in flight holds its max_tokens")
			release()
			r := rig.receive(held)
			require.NoError(t, r.err)
			accReadAll(t, r.resp)

			for i := range 5 {
				c := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, fmt.Sprint("later", i))))
				assert.Equal(t, int64(maxTokens), c.int(accEstOutput))
				assert.Equal(t, "reserve_max_tokens", c.str(accOutputRule))
			}
			b = rig.budget(accSonnet)
			assert.Equal(t, tollgate.ReserveMaxTokens, b.Output, "later responses, rounded, never look like output counted as produced")
			assert.Equal(t, "detected", b.OutputSource)
			assert.Zero(t, rig.srv.Stats().RateLimited)
		})
	}
}

// Told its limits, a Transport sends its first calls together, before any
// response could show how output is counted; until one does, each is
// charged its max_tokens, so that a server that still reserves max_tokens
// draws no 429 from them: of four calls of 2,048 under an 8,000 output
// limit, three go at once and the fourth waits for what they give back.
func TestOutputToldLimitsChargeMaxTokensUntilAResponseShowsTheRule(t *testing.T) {
	rig := newAccRig(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens,
		RoundRemaining: tollgatetest.RoundNearest}),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}))
	const maxTokens, calls = 2048, 4
	done, release := accAllButTheLastGo(t, rig, maxTokens, calls)
	b := rig.budget(accSonnet)
	assert.Equal(t, float64((calls-1)*maxTokens), b.Dimensions[tollgate.OutputTokens].Reserved)
	// Granted ahead of time for when the refill covers it: the 192 tokens
	// missing from the bucket and a quarter second's refill (33⅓ tokens,
	// cushion), at 8,000 a minute. Without that quarter second,
	// this fourth call drew 429s "needs 2048, 2044 available" on a busy
	// machine: the server's full bucket lost the refill of the moment
	// between tollgate's charge of the first call and its own.
	pending := rig.clk.Pending()
	require.Len(t, pending, 1)
	assert.InDelta(t, float64(1690*time.Millisecond), float64(pending[0]), float64(time.Millisecond))
	release()
	accAllOK(t, rig, done)
	assert.Zero(t, rig.srv.Stats().RateLimited)
	b = rig.budget(accSonnet)
	assert.Equal(t, tollgate.ReserveMaxTokens, b.Output)
}

// accAllButTheLastGo holds the rig's base and starts calls of maxTokens
// each, and requires that all but the last are sent while the last waits,
// granted ahead of time; it returns the calls and what releases the base.
func accAllButTheLastGo(t *testing.T, rig *accRig, maxTokens, calls int) ([]<-chan rtResult, func()) {
	t.Helper()
	_, release := rig.base.hold()
	t.Cleanup(release)
	var done []<-chan rtResult
	for i := range calls {
		done = append(done, rig.start(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, fmt.Sprint("call", i)))))
	}
	require.True(t, bgtEventually(func() bool {
		ks, ok := rig.rt.Snapshot().Key(accSonnet)
		return ok && ks.Budget.InFlight == calls-1 && ks.Budget.Waiting == 1 && len(rig.clk.Pending()) == 1
	}), "all calls but the last are sent, the last waits")
	return done, release
}

// accAllOK plays the calls through to their end (on the fake clock) and
// requires each to succeed.
func accAllOK(t *testing.T, rig *accRig, done []<-chan rtResult) {
	t.Helper()
	for _, c := range done {
		r, _ := rig.send(c)
		require.NoError(t, r.err)
		assert.Equal(t, http.StatusOK, r.resp.StatusCode)
		accReadAll(t, r.resp)
	}
}

// A server that reserves max_tokens may show, in a JSON response's headers,
// its levels as of their writing: after it gave back what the reply did not
// use, so that the reading looks like max_tokens never taken. That proves
// nothing, and the calls stay charged their max_tokens: of four calls of
// 2,048 under an 8,000 output limit, three go at once and the fourth waits,
// with no 429. (Before, the first response switched the pool to output
// counted as produced, and the fourth call drew a 429.)
func TestOutputJSONReadingAsOfItsWritingDoesNotProveCountAsProduced(t *testing.T) {
	rig := newAccRigThrough(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens,
		RoundRemaining: tollgatetest.RoundNearest}), func(srv *tollgatetest.Server, next http.RoundTripper) http.RoundTripper {
		return &accReadAtWrite{srv: srv, next: next}
	})
	srv := rig.srv
	const maxTokens, calls = 2048, 4

	first := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "first")))
	assert.Equal(t, "reserve_max_tokens", first.str(accOutputRule))
	require.Greater(t, srv.Limits().OutputTokens.Remaining-1000, 8_000-maxTokens,
		"the reading, rounded, looks like max_tokens untaken")
	b := rig.budget(accSonnet)
	assert.Equal(t, "provider", b.OutputSource, "nothing the server showed confirmed the rule")

	done, release := accAllButTheLastGo(t, rig, maxTokens, calls)
	release()
	accAllOK(t, rig, done)
	assert.Zero(t, srv.Stats().RateLimited)
	for _, sp := range rig.callSpans() {
		c := accCall{t: t, span: accAttrs(sp.Attributes)}
		assert.Equal(t, "reserve_max_tokens", c.str(accOutputRule))
	}
}

// A request that asks for a stream proves nothing where the server answers
// it with a JSON body: its headers came with that body, and may show the
// levels as of its writing, as above.
func TestOutputStreamRequestAnsweredWithJSONDoesNotProveCountAsProduced(t *testing.T) {
	rig := newAccRigThrough(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens,
		RoundRemaining: tollgatetest.RoundNearest}), func(srv *tollgatetest.Server, next http.RoundTripper) http.RoundTripper {
		return &accReadAtWrite{srv: srv, next: accNoStream{next}}
	})
	body := `{"stream":true,` + accSmall("claude-sonnet-4-5", 2048, "first")[1:]
	rig.ok(rig.messages(body))
	assert.Equal(t, "provider", rig.budget(accSonnet).OutputSource, "nothing the server showed confirmed the rule")
}

// accNoStream sends requests on without "stream":true: a server that
// answers a stream request with a JSON body.
type accNoStream struct{ next http.RoundTripper }

func (a accNoStream) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	body = bytes.Replace(body, []byte(`"stream":true,`), nil, 1)
	req = req.Clone(req.Context())
	req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	return a.next.RoundTrip(req)
}

// A server that reads its levels when it admits a call shows it on a JSON
// reply that took long enough: the requests reading, from its reset, is more
// than two seconds before the Date the server wrote. That reading proves
// max_tokens untaken, and the next calls are charged what calls produce; the
// same reading on a reply written at once proves nothing.
func TestOutputJSONReadingFromItsAdmissionProvesCountAsProduced(t *testing.T) {
	for _, tc := range []struct {
		later  time.Duration // from the admission to the Date of the reply
		source string
		rule   string
	}{
		{0, "provider", "reserve_max_tokens"},
		{10 * time.Second, "detected", "count_as_produced"},
	} {
		t.Run(fmt.Sprint("written after ", tc.later), func(t *testing.T) {
			rig := newAccRigThrough(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.CountAsProduced,
				RoundRemaining: tollgatetest.RoundNearest}), func(_ *tollgatetest.Server, next http.RoundTripper) http.RoundTripper {
				return &accWrittenLater{next: next, later: tc.later}
			})
			const maxTokens = 2048
			first := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "first")))
			assert.Equal(t, "reserve_max_tokens", first.str(accOutputRule), "before any response, the safe rule")
			assert.Equal(t, tc.source, rig.budget(accSonnet).OutputSource)
			c := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "second")))
			assert.Equal(t, tc.rule, c.str(accOutputRule))
		})
	}
}

// accWrittenLater sends requests on and dates each response later by
// later: a server that wrote it that long after it read its levels.
type accWrittenLater struct {
	next  http.RoundTripper
	later time.Duration
}

func (a *accWrittenLater) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("the server wrote no Date: %w", err)
	}
	resp.Header.Set("Date", date.Add(a.later).Format(http.TimeFormat))
	return resp, nil
}

// accReadAtWrite sends requests on to srv and shows, in each response's
// limit headers, srv's levels once the response is written (its
// reservation settled), the token ones rounded to the nearest thousand: a
// server that reads its levels for a JSON response's headers when it
// writes them.
type accReadAtWrite struct {
	srv  *tollgatetest.Server
	next http.RoundTripper
}

func (a *accReadAtWrite) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	l := a.srv.Limits()
	rounded := func(n int) string { return strconv.Itoa((n + 500) / 1000 * 1000) }
	resp.Header.Set("anthropic-ratelimit-requests-remaining", strconv.Itoa(l.Requests.Remaining))
	resp.Header.Set("anthropic-ratelimit-requests-reset", l.Requests.FullAt.UTC().Truncate(time.Second).Add(time.Second).Format(time.RFC3339))
	resp.Header.Set("anthropic-ratelimit-input-tokens-remaining", rounded(l.InputTokens.Remaining))
	resp.Header.Set("anthropic-ratelimit-output-tokens-remaining", rounded(l.OutputTokens.Remaining))
	resp.Header.Set("anthropic-ratelimit-tokens-remaining", rounded(min(l.InputTokens.Remaining, l.OutputTokens.Remaining)))
	return resp, nil
}

// The rule follows the server: a pool that detected max_tokens reserved
// switches back to output counted as produced when a response proves it —
// a stream's output-tokens remaining at its start that max_tokens cannot
// have been taken from, rounding allowed for.
func TestOutputRuleFollowsTheServerBackToCountAsProduced(t *testing.T) {
	rig := newAccRig(t, accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens,
		RoundRemaining: tollgatetest.RoundNearest}))
	const maxTokens = 2048
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "first")))
	b := rig.budget(accSonnet)
	require.Equal(t, tollgate.ReserveMaxTokens, b.Output)
	require.Equal(t, "detected", b.OutputSource)

	// The account's requests now reach a server that counts output as it is
	// produced.
	produced := tollgatetest.NewServer(accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.CountAsProduced,
		RoundRemaining: tollgatetest.RoundNearest, Now: rig.clk.Now}))
	t.Cleanup(produced.Close)
	second := `{"stream":true,` + accSmall("claude-sonnet-4-5", maxTokens, "second")[1:]
	c := rig.ok(rig.to(produced.URL, rig.messages(second)))
	assert.Equal(t, "reserve_max_tokens", c.str(accOutputRule), "sent under the rule it had")
	b = rig.budget(accSonnet)
	assert.Equal(t, tollgate.CountAsProduced, b.Output)
	assert.Equal(t, "detected", b.OutputSource)
	c = rig.ok(rig.to(produced.URL, rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "third"))))
	assert.Equal(t, "count_as_produced", c.str(accOutputRule))
	assert.Less(t, c.int(accEstOutput), int64(maxTokens))
}

// WithOutputAccounting states the rule: what the server shows does not
// change it.
func TestOutputAccountingOptionIsNotOverridden(t *testing.T) {
	tests := []struct {
		name   string
		option tollgate.OutputAccounting
		server tollgatetest.OutputAccounting
	}{
		{"count as produced against a server that reserves", tollgate.CountAsProduced, tollgatetest.ReserveMaxTokens},
		{"reserve against a server that counts as produced", tollgate.ReserveMaxTokens, tollgatetest.CountAsProduced},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rig := newAccRig(t, accTier1(tollgatetest.Config{OutputAccounting: tc.server, RoundRemaining: tollgatetest.Exact}),
				tollgate.WithOutputAccounting(tc.option))
			const maxTokens = 4096
			for i := range 4 {
				c := rig.ok(rig.messages(accSmall("claude-sonnet-4-5", maxTokens, fmt.Sprint("call", i))))
				assert.Equal(t, tc.option.String(), c.str(accOutputRule))
				if tc.option == tollgate.ReserveMaxTokens {
					assert.Equal(t, int64(maxTokens), c.int(accEstOutput))
				} else {
					assert.Less(t, c.int(accEstOutput), int64(maxTokens))
				}
				b := rig.budget(accSonnet)
				assert.Equal(t, tc.option, b.Output, "call %d", i)
				assert.Equal(t, "option", b.OutputSource, "call %d", i)
			}
		})
	}
}

// OpenAI counts max_tokens when the request is made: by default an
// attempt reserves its max_tokens, or DefaultOutputTokens when it sets
// none.
func TestOutputOpenAIReservesMaxTokensByDefault(t *testing.T) {
	rig := newAccRig(t, tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 90_000})
	withMax := rig.ok(rig.chat(`{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"Hello there"}]}`))
	assert.Equal(t, int64(1000), withMax.int(accEstOutput))
	assert.Equal(t, "reserve_max_tokens", withMax.str(accOutputRule))
	without := rig.ok(rig.chat(`{"model":"gpt-4o","messages":[{"role":"user","content":"Hello again"}]}`))
	assert.Equal(t, int64(tollgate.DefaultOutputTokens), without.int(accEstOutput))

	b := rig.budget(tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"})
	assert.Equal(t, tollgate.ReserveMaxTokens, b.Output)
	assert.Equal(t, "provider", b.OutputSource)
}

// ---- Telemetry ----

// The call span says what the budget estimated (input, the cache reads it
// predicted, output), what the server counted (input as its limit counts
// it, output), and how output is counted; the usage attributes say what
// the server reported, cache reads included. JSON and streams alike.
func TestTelemetryCallSpanCarriesEstimatedAndCountedTokens(t *testing.T) {
	rig := newAccRig(t, accRoomy(tollgatetest.Config{OutputAccounting: tollgatetest.CountAsProduced}))
	convo := &accConvo{model: "claude-sonnet-4-5", maxTokens: 2048, system: accWords("system", 2000)}
	convo.say("user", accWords("task", 100))
	var calls []accCall
	for i := range 3 {
		body := convo.body(true, "")
		if i == 0 {
			// A stream's headers, which come before its output, show the
			// rule (provesUntaken).
			body = strings.Replace(body, `"max_tokens":2048`, `"max_tokens":2048,"stream":true`, 1)
		}
		calls = append(calls, rig.ok(rig.messages(body)))
		convo.say("assistant", accWords(fmt.Sprint("reply", i), 150)).say("user", accWords(fmt.Sprint("result", i), 400))
	}
	for i, c := range calls {
		read, created := c.int(accUsageRead), c.int(accUsageCreated)
		assert.Equal(t, c.int(accUsageInput)-read, c.int(accCountedIn),
			"call %d: Sonnet's input limit counts input and cache writes, not reads", i)
		assert.Equal(t, c.int(accUsageOutput), c.int(accCountedOut), "call %d", i)
		assert.Positive(t, created, "call %d writes its newest turn", i)
		assert.Positive(t, c.int(accEstInput), "call %d", i)
		assert.Positive(t, c.int(accEstOutput), "call %d", i)
		rule := "count_as_produced"
		if i == 0 {
			rule = "reserve_max_tokens" // until a response confirms the rule
		}
		assert.Equal(t, rule, c.str(accOutputRule), "call %d", i)
		if i == 0 {
			assert.Zero(t, c.int(accEstCached), "nothing is cached yet")
			assert.Zero(t, read)
		} else {
			assert.Positive(t, read, "call %d reads the conversation so far", i)
			assert.InEpsilon(t, read, c.int(accEstCached), 0.1, "call %d: the predicted cache read is about what was read", i)
		}
	}
}

// tollgate.estimate.error records, per token type, one point for each call
// the server counted: what was estimated less what was counted. A call
// the server refused with no usage records none.
func TestTelemetryEstimateErrorHistogramRecordsEachCountedCall(t *testing.T) {
	rig := newAccRig(t, accRoomy(tollgatetest.Config{OutputAccounting: tollgatetest.CountAsProduced}))
	convo := &accConvo{model: "claude-sonnet-4-5", maxTokens: 1024, system: accWords("system", 1500)}
	convo.say("user", accWords("task", 100))
	var calls []accCall
	for i := range 4 {
		calls = append(calls, rig.ok(rig.messages(convo.body(true, ""))))
		convo.say("assistant", accWords(fmt.Sprint("reply", i), 100)).say("user", accWords(fmt.Sprint("result", i), 300))
	}
	refused := rig.do(rig.messages(`{"model":"claude-sonnet-4-5","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`))
	require.Equal(t, http.StatusBadRequest, refused.status)

	want := map[string]struct {
		count uint64
		sum   int64
	}{}
	for _, c := range calls {
		in, out := want["input"], want["output"]
		in.count, in.sum = in.count+1, in.sum+c.int(accEstInput)-c.int(accCountedIn)
		out.count, out.sum = out.count+1, out.sum+c.int(accEstOutput)-c.int(accCountedOut)
		want["input"], want["output"] = in, out
	}
	var rm metricdata.ResourceMetrics
	require.NoError(t, rig.reader.Collect(context.Background(), &rm))
	var got map[string]struct {
		count uint64
		sum   int64
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "tollgate.estimate.error" {
				continue
			}
			assert.Equal(t, "{token}", m.Unit)
			got = map[string]struct {
				count uint64
				sum   int64
			}{}
			for _, dp := range m.Data.(metricdata.Histogram[int64]).DataPoints {
				typ, _ := dp.Attributes.Value("gen_ai.token.type")
				family, _ := dp.Attributes.Value("tollgate.model_family")
				assert.Equal(t, accSonnet.Family, family.AsString())
				got[typ.AsString()] = struct {
					count uint64
					sum   int64
				}{dp.Count, dp.Sum}
			}
		}
	}
	require.NotNil(t, got, "tollgate.estimate.error is recorded")
	assert.Equal(t, want, got)
}

// Where max_tokens is reserved, the server takes it when the request is
// admitted and gives back what the reply did not use when it ends. The
// remaining a response reports at its start counts the whole max_tokens;
// once the response has ended, the budget must know the unused part is
// back: its level is at least that reading plus max_tokens less the
// output, and a next call that fits on the server goes at once.
func TestOutputReservedUnusedMaxTokensAreGivenBackWhenTheResponseEnds(t *testing.T) {
	tests := []struct {
		name     string
		cfg      tollgatetest.Config
		dim      tollgate.Dimension
		key      tollgate.Key
		request  func(rig *accRig, maxTokens int) *http.Request
		maxToken int
		next     int // the next call's max_tokens: it fits on the server
		warm     bool
	}{
		{
			name: "anthropic, a call after the first", dim: tollgate.OutputTokens, key: accSonnet,
			cfg: accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens, RoundRemaining: tollgatetest.Exact}),
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "call"))
			},
			maxToken: 4096, next: 5000, warm: true,
		},
		{
			name: "anthropic, the first call", dim: tollgate.OutputTokens, key: accSonnet,
			cfg: accTier1(tollgatetest.Config{OutputAccounting: tollgatetest.ReserveMaxTokens, RoundRemaining: tollgatetest.Exact}),
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.messages(accSmall("claude-sonnet-4-5", maxTokens, "call"))
			},
			maxToken: 4096, next: 5000,
		},
		{
			name: "openai, a call after the first", dim: tollgate.Tokens,
			key: tollgate.Key{Provider: tollgate.ProviderOpenAI, Family: "gpt-4o"},
			cfg: tollgatetest.Config{RequestsPerMinute: 500, TokensPerMinute: 10_000},
			request: func(rig *accRig, maxTokens int) *http.Request {
				return rig.chat(`{"model":"gpt-4o","max_tokens":` + strconv.Itoa(maxTokens) + `,"messages":[{"role":"user","content":"Hello there"}]}`)
			},
			maxToken: 4000, next: 6000, warm: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rig := newAccRig(t, tc.cfg, tollgate.WithOutputAccounting(tollgate.ReserveMaxTokens))
			if tc.warm {
				rig.ok(tc.request(rig, tc.maxToken))
				rig.clk.Advance(time.Minute) // every bucket full again, on both sides
			}
			c := rig.ok(tc.request(rig, tc.maxToken))
			var reading int64
			if tc.dim == tollgate.Tokens {
				reading = c.int("tollgate.ratelimit.tokens.remaining")
			} else {
				reading = c.int("tollgate.ratelimit.output_tokens.remaining")
			}
			out := c.int(accCountedOut)
			require.Less(t, out, int64(tc.maxToken), "the reply used less than max_tokens")
			level := rig.budget(tc.key).Dimensions[tc.dim].Level
			assert.GreaterOrEqual(t, level, float64(reading+int64(tc.maxToken)-out),
				"the level knows the %d tokens of max_tokens the reply did not use are back (the server's reading at the start of the response was %d)",
				int64(tc.maxToken)-out, reading)

			left := rig.srv.Limits()
			require.GreaterOrEqual(t, max(left.OutputTokens.Remaining, left.Tokens.Remaining), tc.next+100, "the next call fits on the server")
			r, waits := rig.send(rig.start(tc.request(rig, tc.next)))
			require.NoError(t, r.err)
			accReadAll(t, r.resp)
			assert.Empty(t, waits, "a call that fits on the server goes at once")
		})
	}
}

// Where output is counted as produced, the level this process holds
// follows the server's after every call, the first included (whose
// response taught the limits before its output was counted, and, in a
// stream, before any output was produced): never above it, which would draw
// 429s, and not far below, which would waste the limit. Where the server
// rounds what remains, "not far" is the rounding.
func TestOutputCountedAsProducedLevelFollowsTheServer(t *testing.T) {
	for _, tc := range []struct {
		rounding tollgatetest.RemainingRounding
		slack    float64
	}{{tollgatetest.Exact, 100}, {tollgatetest.RoundNearest, 600}, {tollgatetest.RoundDown, 1_100}} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("rounding=%v/stream=%v", tc.rounding, stream), func(t *testing.T) {
				rig := newAccRig(t, accTier1(tollgatetest.Config{
					OutputAccounting: tollgatetest.CountAsProduced, RoundRemaining: tc.rounding}))
				for i := range 8 {
					body := accSmall("claude-sonnet-4-5", 8192, fmt.Sprint("call", i))
					if stream {
						body = `{"stream":true,` + body[1:]
					}
					req := rig.messages(body)
					req.Header.Set(tollgatetest.OutputTokensHeader, strconv.Itoa(100+100*i))
					rig.ok(req)
					client := rig.budget(accSonnet).Dimensions[tollgate.OutputTokens].Level
					server := float64(rig.srv.Limits().OutputTokens.Remaining)
					assert.LessOrEqual(t, client, server, "call %d: never more than the server has", i)
					assert.InDelta(t, server, client, tc.slack, "call %d: close to what the server has", i)
					rig.clk.Advance(time.Second)
				}
			})
		}
	}
}

// accScripted is a base transport with no server: it answers each request
// with the next of its replies, a 200 of the given content type and body.
type accScripted struct {
	mu      sync.Mutex
	replies []accReply
}

type accReply struct {
	contentType string
	body        io.Reader
}

func (s *accScripted) add(contentType string, body io.Reader) {
	s.mu.Lock()
	s.replies = append(s.replies, accReply{contentType, body})
	s.mu.Unlock()
}

func (s *accScripted) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.replies) == 0 {
		return nil, fmt.Errorf("no reply scripted for %s", req.URL.Path)
	}
	r := s.replies[0]
	s.replies = s.replies[1:]
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {r.contentType}},
		Body: io.NopCloser(r.body), Request: req}, nil
}

// accStream is the pieces of an Anthropic stream: its start, one delta of
// four tokens, and its end reporting output tokens.
var accStream = struct {
	start, delta string
	end          func(output int) string
}{
	start: "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
	delta: "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" one two three four\"}}\n\n",
	end: func(output int) string {
		return fmt.Sprintf("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":%d}}\n\n", output) +
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	},
}

// accWholeStream is a stream of output tokens (a multiple of four).
func accWholeStream(output int) string {
	return accStream.start + strings.Repeat(accStream.delta, output/4) + accStream.end(output)
}

// accNeedStore records the output need and the longest grant ahead of
// every admission it is asked.
type accNeedStore struct {
	tollgate.Store
	mu       sync.Mutex
	needs    []float64
	maxWaits []time.Duration
}

func (s *accNeedStore) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	s.mu.Lock()
	s.needs = append(s.needs, a.Need[tollgate.OutputTokens])
	s.maxWaits = append(s.maxWaits, a.MaxWait)
	s.mu.Unlock()
	return s.Store.Admit(ctx, name, a)
}

func (s *accNeedStore) lastNeed() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.needs[len(s.needs)-1]
}

func (s *accNeedStore) lastMaxWait() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxWaits[len(s.maxWaits)-1]
}

// accTaking is a base that takes the time to answer a request on a fake
// clock: it advances the clock by took before passing the request on.
type accTaking struct {
	next http.RoundTripper
	clk  *fakeclock.Clock
	mu   sync.Mutex
	took time.Duration
}

func (b *accTaking) RoundTrip(req *http.Request) (*http.Response, error) {
	b.mu.Lock()
	took := b.took
	b.mu.Unlock()
	b.clk.Advance(took)
	return b.next.RoundTrip(req)
}

func (b *accTaking) set(took time.Duration) {
	b.mu.Lock()
	b.took = took
	b.mu.Unlock()
}

// Where output is counted as produced, an attempt in flight can only have
// been counted more than its charge once it could have produced that much:
// the margin that later attempts are admitted on counts it from then on,
// as fast as half again the fastest reply of the pool, timed from its send
// to its headers. No attempt is granted ahead past that moment, on a need
// that would no longer hold.
func TestOutputCountedAsProducedMarginCountsAnAttemptOnceItCouldHaveExceededItsCharge(t *testing.T) {
	clk := fakeclock.New(accEpoch)
	scripted := &accScripted{}
	base := &accTaking{next: scripted, clk: clk}
	store := &accNeedStore{Store: tollgate.NewMemoryStore(clk)}
	rig := newAccRigOn(t, clk, base, tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour),
		tollgate.WithOutputAccounting(tollgate.CountAsProduced),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 8_000}))
	reply := func(output int) io.Reader {
		return strings.NewReader(fmt.Sprintf(`{"type":"message","usage":{"input_tokens":40,"output_tokens":%d}}`, output))
	}
	// Three replies of 80, 100 and 120 tokens, two seconds each: the
	// fastest came at 2 s / 120 a token; what calls produce is learned as
	// in TestOutputCountedAsProducedChargesAStreamAsItShowsOutput.
	base.set(2 * time.Second)
	for i, output := range []int{80, 100, 120} {
		scripted.add("application/json", reply(output))
		rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, fmt.Sprint("learn", i))))
	}
	require.InDelta(t, 100, rig.budget(accSonnet).ProducedEstimate, 1e-9)
	base.set(0)
	beyondMean, secondsRefill := math.Sqrt(400+400.0/3), 8_000.0/60
	// Charged 100 tokens, at most 1.5 × 120 / 2 s = 90 a second: the server
	// cannot have counted more than that until 100/90 s after its send.
	perToken := 2 * time.Second / 120
	exceedsAfter := time.Duration(100 * float64(perToken) / 1.5)

	scripted.add("application/json", reply(100))
	held := rig.receive(rig.start(rig.messages(accSmall("claude-sonnet-4-5", 8192, "held"))))
	require.NoError(t, held.err)
	unreported := func() io.Reader { return strings.NewReader(`{"type":"message"}`) }
	scripted.add("application/json", unreported())
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, "at once")))
	assert.Equal(t, 1+math.Ceil(secondsRefill), store.lastNeed(), "just sent, the attempt in flight adds no margin")
	assert.Equal(t, exceedsAfter, store.lastMaxWait(), "not granted ahead past the moment it could have")

	clk.Advance(exceedsAfter - time.Millisecond)
	scripted.add("application/json", unreported())
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, "just before")))
	assert.Equal(t, 1+math.Ceil(secondsRefill), store.lastNeed())
	assert.Equal(t, time.Millisecond, store.lastMaxWait())

	clk.Advance(time.Millisecond)
	scripted.add("application/json", unreported())
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, "after")))
	assert.Equal(t, 1+math.Ceil(3*beyondMean+secondsRefill), store.lastNeed(),
		"once it could have produced its charge, it counts as in TestOutputCountedAsProducedChargesAStreamAsItShowsOutput")
	assert.Greater(t, store.lastMaxWait(), time.Hour, "no attempt in flight is to count later")

	accReadAll(t, held.resp)
	assert.Zero(t, rig.budget(accSonnet).Dimensions[tollgate.OutputTokens].Reserved, "all settled")
}

// Where output is counted as produced, a stream is charged the output it
// shows beyond its estimate as it shows it, so that the server's level
// never falls below tollgate's however long the stream runs; and since its
// excess is seen, the margin that later attempts are admitted on does not
// count it among the attempts whose output is unknown. A stream the server
// answers with a JSON body shows nothing as it goes and counts there.
func TestOutputCountedAsProducedChargesAStreamAsItShowsOutput(t *testing.T) {
	clk := fakeclock.New(accEpoch)
	base := &accScripted{}
	store := &accNeedStore{Store: tollgate.NewMemoryStore(clk)}
	rig := newAccRigOn(t, clk, base, tollgate.WithStore(store), tollgate.WithStoreTimeout(time.Hour),
		tollgate.WithOutputAccounting(tollgate.CountAsProduced),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 8_000}))
	stream := func(seed string) *http.Request {
		return rig.messages(`{"stream":true,` + accSmall("claude-sonnet-4-5", 8192, seed)[1:])
	}
	// Three streams teach the pool what its calls produce (80, 100, 120
	// tokens: mean 100, learned deviation √(800/3), 20 for a sample) and
	// what their deltas carry per token. A call beyond the mean of three
	// then varies by √(20² + 20²/3).
	for i, output := range []int{80, 100, 120} {
		base.add("text/event-stream", strings.NewReader(accWholeStream(output)))
		rig.ok(stream(fmt.Sprint("learn", i)))
	}
	require.InDelta(t, 100, rig.budget(accSonnet).ProducedEstimate, 1e-9)
	deviation, beyondMean := math.Sqrt(800.0/3), math.Sqrt(400+400.0/3)
	secondsRefill := 8_000.0 / 60

	// A stream of 300 tokens, read as the caller reads it.
	long := strings.NewReader(accWholeStream(300))
	base.add("text/event-stream", long)
	r := rig.receive(rig.start(stream("long")))
	require.NoError(t, r.err)
	read := func(n int) {
		_, err := io.ReadFull(r.resp.Body, make([]byte, n))
		require.NoError(t, err)
	}
	reserved := func() float64 { return rig.budget(accSonnet).Dimensions[tollgate.OutputTokens].Reserved }
	read(len(accStream.start) + 20*len(accStream.delta))
	assert.Equal(t, 100.0, reserved(), "80 tokens shown: the estimate still covers them")
	read(10 * len(accStream.delta))
	assert.Equal(t, 120+math.Ceil(deviation), reserved(), "120 shown: charged them and a deviation ahead")
	read(30 * len(accStream.delta))
	assert.Equal(t, 240+math.Ceil(deviation), reserved(), "240 shown")

	// The next attempt is admitted on the second's refill alone: the
	// stream in flight adds no margin. (The replies beside it report no
	// usage, so that what is learned stays as it is.)
	unreported := func() io.Reader { return strings.NewReader(`{"type":"message"}`) }
	base.add("application/json", unreported())
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, "beside")))
	assert.Equal(t, 1+math.Ceil(secondsRefill), store.lastNeed())

	// A stream request answered with a JSON body shows nothing as it goes:
	// while it is in flight, the next attempt needs three deviations of a
	// call beyond the mean more.
	base.add("application/json", strings.NewReader(`{"type":"message","usage":{"input_tokens":40,"output_tokens":100}}`))
	held := rig.receive(rig.start(stream("answered in JSON")))
	require.NoError(t, held.err)
	base.add("application/json", unreported())
	rig.ok(rig.messages(accSmall("claude-sonnet-4-5", 8192, "beside JSON")))
	assert.Equal(t, 1+math.Ceil(3*beyondMean+secondsRefill), store.lastNeed())

	rest := accReadAll(t, r.resp)
	assert.True(t, strings.HasSuffix(rest, accStream.end(300)))
	accReadAll(t, held.resp)
	b := rig.budget(accSonnet)
	assert.Zero(t, b.Dimensions[tollgate.OutputTokens].Reserved, "all settled")
	assert.Equal(t, int64(80+100+120+300+100+100+100), b.Dimensions[tollgate.OutputTokens].Used,
		"the long stream settled to what the server counted")
}

// A server whose deltas carry far more bytes than tokens cannot teach the
// budget to count a stream's output low: what a token is learned to take
// is bounded above any event framing, so a later stream of ordinary deltas
// is still charged about what it shows.
func TestOutputCountedAsProducedStreamsLearnBoundedBytesPerToken(t *testing.T) {
	clk := fakeclock.New(accEpoch)
	base := &accScripted{}
	rig := newAccRigOn(t, clk, base, tollgate.WithOutputAccounting(tollgate.CountAsProduced),
		tollgate.WithLimits(tollgate.Limits{RequestsPerMinute: 1000, InputTokensPerMinute: 1_000_000, OutputTokensPerMinute: 8_000}))
	stream := func(seed string) *http.Request {
		return rig.messages(`{"stream":true,` + accSmall("claude-sonnet-4-5", 8192, seed)[1:])
	}
	padded := "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"" +
		strings.Repeat("x", 40_000) + "\"}}\n\n"
	for i := range 3 { // 40 KB for 4 tokens: 10,000 bytes a token
		base.add("text/event-stream", strings.NewReader(accStream.start+padded+accStream.end(4)))
		rig.ok(stream(fmt.Sprint("padded", i)))
	}
	base.add("text/event-stream", strings.NewReader(accWholeStream(400)))
	r := rig.receive(rig.start(stream("ordinary")))
	require.NoError(t, r.err)
	shown := len(accStream.start) + 100*len(accStream.delta) // all 400 tokens, in 100 ordinary deltas
	_, err := io.ReadFull(r.resp.Body, make([]byte, shown))
	require.NoError(t, err)
	reserved := rig.budget(accSonnet).Dimensions[tollgate.OutputTokens].Reserved
	assert.GreaterOrEqual(t, reserved, math.Ceil(float64(100*len(accStream.delta))/256),
		"charged at no more than 256 bytes a token")
	accReadAll(t, r.resp)
}
