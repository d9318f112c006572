package tollgate

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/semconv/v1.41.0/genaiconv"
	"go.opentelemetry.io/otel/trace"
)

// This file is the Trace layer's telemetry: its options, its tracer and
// instruments, and the attribute sets its metrics are recorded with, made
// once per pool or per kind of call rather than once per call.

// instrumentationName names tollgate's tracer and meter.
const instrumentationName = "github.com/tollgate-go/tollgate"

// telemetryConfig is the Trace layer's part of config.
type telemetryConfig struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	recordUsage    func(context.Context, UsageRecord)
}

// WithTracerProvider sets the TracerProvider of the Trace layer's spans. A
// nil provider, or no option, means otel.GetTracerProvider().
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.telemetry.tracerProvider = tp }
}

// WithMeterProvider sets the MeterProvider of the Trace layer's metrics. A
// nil provider, or no option, means otel.GetMeterProvider().
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.telemetry.meterProvider = mp }
}

// WithUsageRecorder makes the Trace layer call record exactly once per call,
// when the call ends (see Trace), with what it cost. ctx is the call's
// request context, which carries its span. record is called on the
// goroutine that ended the call (usually the one reading or closing the
// response body), with no lock held, so it must be quick and safe for
// concurrent use. A nil record records nothing.
func WithUsageRecorder(record func(ctx context.Context, rec UsageRecord)) Option {
	return func(c *config) { c.telemetry.recordUsage = record }
}

// telemetry is the Trace layer's tracer and instruments for one State.
type telemetry struct {
	tracer trace.Tracer
	inst   instruments
	// calls caches the attribute sets of the GenAI metrics by the shape of
	// a call (operation, provider, server, models, error).
	calls      sync.Map // callShape → *callSets
	callsCount atomic.Int32
}

type instruments struct {
	tokenUsage  genaiconv.ClientTokenUsage
	duration    genaiconv.ClientOperationDuration
	firstChunk  genaiconv.ClientOperationTimeToFirstChunk
	wait        metric.Float64Histogram
	retries     metric.Int64Counter
	rateLimited metric.Int64Counter
	estimate    metric.Int64Histogram
}

// telemetry returns s's telemetry, creating its tracer and instruments on
// first use.
func (s *State) telemetry() *telemetry {
	s.telOnce.Do(func() { s.tel = newTelemetry(s) })
	return s.tel
}

// Recommended bucket boundaries of the GenAI conventions.
var (
	durationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	tokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
	// estimateBuckets span an estimate's error either way, in tokens.
	estimateBuckets = []float64{-16384, -4096, -1024, -256, -64, -16, 0, 16, 64, 256, 1024, 4096, 16384}
)

func newTelemetry(s *State) *telemetry {
	tc := s.cfg.telemetry
	tp, mp := tc.tracerProvider, tc.meterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &telemetry{tracer: tp.Tracer(instrumentationName, trace.WithSchemaURL(semconv.SchemaURL))}
	m := mp.Meter(instrumentationName, metric.WithSchemaURL(semconv.SchemaURL))

	// An instrument that cannot be made is reported and replaced by a no-op.
	var errs []error
	keep := func(err error) { errs = append(errs, err) }
	var err error
	in := &t.inst
	in.tokenUsage, err = genaiconv.NewClientTokenUsage(m, metric.WithExplicitBucketBoundaries(tokenBuckets...))
	keep(err)
	in.duration, err = genaiconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	in.firstChunk, err = genaiconv.NewClientOperationTimeToFirstChunk(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	in.wait, err = m.Float64Histogram("tollgate.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a call waited before an attempt, by cause: budget, pause (open breaker) or backoff."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	keep(err)
	in.retries, err = m.Int64Counter("tollgate.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("Attempts that were retried, by reason."))
	keep(err)
	in.rateLimited, err = m.Int64Counter("tollgate.rate_limited", metric.WithUnit("{response}"),
		metric.WithDescription("429 responses, by the limit that was exhausted."))
	keep(err)
	in.estimate, err = m.Int64Histogram("tollgate.estimate.error", metric.WithUnit("{token}"),
		metric.WithDescription("What the budget charged an attempt before it was sent, less what the server counted, "+
			"by token type (input, output): above zero the attempt held more than it needed, below zero less."),
		metric.WithExplicitBucketBoundaries(estimateBuckets...))
	keep(err)
	keep(registerGauges(m, s))
	if err := errors.Join(errs...); err != nil {
		otel.Handle(fmt.Errorf("tollgate: creating instruments: %w", err))
	}
	in.orNoop()
	return t
}

func (in *instruments) orNoop() {
	var n noop.Meter
	if in.wait == nil {
		in.wait, _ = n.Float64Histogram("")
	}
	if in.retries == nil {
		in.retries, _ = n.Int64Counter("")
	}
	if in.rateLimited == nil {
		in.rateLimited, _ = n.Int64Counter("")
	}
	if in.estimate == nil {
		in.estimate, _ = n.Int64Histogram("")
	}
}

// registerGauges registers the gauges that read the State when metrics are
// collected, so that no call pays for them: what the latest responses said
// of each limit, each breaker's state, and whether the store fell back. The
// callback holds s weakly, and is unregistered once s is gone.
func registerGauges(m metric.Meter, s *State) error {
	remaining, err1 := m.Int64ObservableGauge("tollgate.ratelimit.remaining",
		metric.WithDescription("What the provider's rate-limit headers said remains, per dimension, after the latest response."))
	limit, err2 := m.Int64ObservableGauge("tollgate.ratelimit.limit",
		metric.WithDescription("The per-minute limit the provider's rate-limit headers reported, per dimension."))
	breaker, err3 := m.Int64ObservableGauge("tollgate.breaker.state",
		metric.WithDescription("Breaker state per (provider, model family): 0 closed, 1 half-open, 2 open."))
	fallback, err4 := m.Int64ObservableGauge("tollgate.store.fallback",
		metric.WithDescription("1 while the store given by WithStore fails and the budget paces locally at its fallback share, 0 while the store answers."))
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return err
	}
	ref := weak.Make(s)
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := ref.Value()
		if s == nil {
			return nil
		}
		if !s.guard.own {
			o.ObserveInt64(fallback, boolInt(s.guard.isDown()))
		}
		now := s.cfg.clock.Now()
		s.eachPool(func(p *pool) {
			sets := p.metricSets()
			p.mu.Lock()
			readings, state := p.readings, p.stateAtLocked(now)
			p.mu.Unlock()
			o.ObserveInt64(breaker, breakerLevel[state], metric.WithAttributeSet(sets.key))
			for d, r := range readings.Limits {
				if r.HasRemaining {
					o.ObserveInt64(remaining, r.Remaining, metric.WithAttributeSet(sets.dimension[d]))
				}
				if r.HasLimit {
					o.ObserveInt64(limit, r.Limit, metric.WithAttributeSet(sets.dimension[d]))
				}
			}
		})
		return nil
	}, remaining, limit, breaker, fallback)
	if err != nil {
		return err
	}
	runtime.AddCleanup(s, func(reg metric.Registration) { _ = reg.Unregister() }, reg)
	return nil
}

var breakerLevel = map[BreakerState]int64{BreakerClosed: 0, BreakerHalfOpen: 1, BreakerOpen: 2}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// poolSets are the attribute sets of one pool's metrics.
type poolSets struct {
	key       attribute.Set // provider, family
	dimension [NumDimensions]attribute.Set
	wait      [numWaitCauses][NumPriorities]attribute.Set // by cause (waitCauses) and priority rank
	estimate  [2]attribute.Set                            // input, output
	reasons   sync.Map                                    // retry or rate-limit reason → attribute.Set
	count     atomic.Int32
}

// metricSets returns p's attribute sets, made on first use.
func (p *pool) metricSets() *poolSets {
	p.setsOnce.Do(func() {
		k := p.key
		base := []attribute.KeyValue{semconv.GenAIProviderNameKey.String(string(k.Provider)), modelFamilyKey.String(k.Family)}
		with := func(kv attribute.KeyValue) attribute.Set {
			return attribute.NewSet(append(append([]attribute.KeyValue(nil), base...), kv)...)
		}
		s := &poolSets{key: attribute.NewSet(base...)}
		for d := range NumDimensions {
			s.dimension[d] = with(dimensionKey.String(Dimension(d).String()))
		}
		for i, cause := range waitCauses {
			for _, pr := range [...]Priority{Interactive, Normal, Background} {
				s.wait[i][pr.rank()] = attribute.NewSet(append(append([]attribute.KeyValue(nil), base...),
					waitCauseKey.String(cause), priorityKey.String(pr.String()))...)
			}
		}
		s.estimate = [2]attribute.Set{with(semconv.GenAITokenTypeInput), with(semconv.GenAITokenTypeOutput)}
		p.sets = s
	})
	return p.sets
}

// waitCauses are the causes of a wait, as addWait names them.
var waitCauses = [...]string{"budget", "pause", "backoff"}

const numWaitCauses = len(waitCauses)

// waitCauseIndex returns the index of cause in waitCauses.
func waitCauseIndex(cause string) int {
	switch cause {
	case "budget":
		return 0
	case "pause":
		return 1
	}
	return 2
}

// maxReasonSets bounds the reasons whose attribute sets a pool keeps.
const maxReasonSets = 64

// reason returns the set of the pool's attributes with key = value.
func (s *poolSets) reason(key attribute.Key, value string) attribute.Set {
	type reasonKey struct {
		key   attribute.Key
		value string
	}
	rk := reasonKey{key, value}
	if set, ok := s.reasons.Load(rk); ok {
		return set.(attribute.Set)
	}
	kvs := append(s.key.ToSlice(), key.String(value))
	set := attribute.NewSet(kvs...)
	if s.count.Load() < maxReasonSets {
		if _, loaded := s.reasons.LoadOrStore(rk, set); !loaded {
			s.count.Add(1)
		}
	}
	return set
}

// callShape is what a call's GenAI metric attributes depend on.
type callShape struct {
	operation, provider, address string
	port                         int
	model, responseModel         string
	errorType                    string
}

// callSets are the attribute sets of one shape of call.
type callSets struct {
	duration, input, output, firstChunk attribute.Set
}

// maxCallSets bounds the shapes whose sets are kept: a fleet uses a few
// models against a few servers, and errors are few of a kind.
const maxCallSets = 1024

// setsFor returns the attribute sets of calls of shape cs.
func (t *telemetry) setsFor(cs callShape) *callSets {
	if s, ok := t.calls.Load(cs); ok {
		return s.(*callSets)
	}
	attrs := []attribute.KeyValue{
		semconv.GenAIOperationNameKey.String(cs.operation),
		semconv.GenAIProviderNameKey.String(cs.provider),
		semconv.ServerAddress(cs.address), semconv.ServerPort(cs.port),
	}
	if cs.model != "" {
		attrs = append(attrs, semconv.GenAIRequestModel(cs.model))
	}
	if cs.responseModel != "" {
		attrs = append(attrs, semconv.GenAIResponseModel(cs.responseModel))
	}
	with := func(kvs ...attribute.KeyValue) attribute.Set {
		return attribute.NewSet(append(append([]attribute.KeyValue(nil), attrs...), kvs...)...)
	}
	s := &callSets{
		input:      with(semconv.GenAITokenTypeInput),
		output:     with(semconv.GenAITokenTypeOutput),
		firstChunk: with(),
		duration:   with(),
	}
	if cs.errorType != "" {
		s.duration = with(semconv.ErrorTypeKey.String(cs.errorType))
	}
	if t.callsCount.Load() < maxCallSets {
		if _, loaded := t.calls.LoadOrStore(cs, s); !loaded {
			t.callsCount.Add(1)
		}
	}
	return s
}

// tollgate's own attribute keys.
const (
	attemptsKey      = attribute.Key("tollgate.attempts")
	attemptKey       = attribute.Key("tollgate.attempt")
	requestIDKey     = attribute.Key("tollgate.request.id")
	modelFamilyKey   = attribute.Key("tollgate.model_family")
	tierKey          = attribute.Key("tollgate.tier")
	waitBudgetKey    = attribute.Key("tollgate.wait.budget")  // seconds
	waitPauseKey     = attribute.Key("tollgate.wait.pause")   // seconds
	waitBackoffKey   = attribute.Key("tollgate.wait.backoff") // seconds
	waitCauseKey     = attribute.Key("tollgate.wait.cause")
	waitDurationKey  = attribute.Key("tollgate.wait.duration") // seconds
	retryReasonKey   = attribute.Key("tollgate.retry.reason")
	retryWaitKey     = attribute.Key("tollgate.retry.wait") // seconds
	dimensionKey     = attribute.Key("tollgate.ratelimit.dimension")
	rateLimitedByKey = attribute.Key("tollgate.rate_limited.reason")
	breakerFromKey   = attribute.Key("tollgate.breaker.from")
	breakerToKey     = attribute.Key("tollgate.breaker.to")
	breakerReasonKey = attribute.Key("tollgate.breaker.reason")
	priorityKey      = attribute.Key("tollgate.priority") // interactive, normal, background
	tenantKey        = attribute.Key("tollgate.tenant")
	// What the budget charged the last attempt before it was sent, and what
	// the server counted of it (tokens), and how output was counted.
	estInputKey      = attribute.Key("tollgate.estimate.input_tokens")
	estCachedKey     = attribute.Key("tollgate.estimate.cache_read.input_tokens")
	estOutputKey     = attribute.Key("tollgate.estimate.output_tokens")
	countedInputKey  = attribute.Key("tollgate.counted.input_tokens")
	countedOutputKey = attribute.Key("tollgate.counted.output_tokens")
	outputAccountKey = attribute.Key("tollgate.output.accounting")
)

// dimensionAttrs are the span attribute keys of each dimension's reading,
// e.g. tollgate.ratelimit.input_tokens.remaining.
var dimensionAttrs = func() (keys [NumDimensions]struct{ remaining, limit attribute.Key }) {
	for d := range NumDimensions {
		name := strings.ReplaceAll(Dimension(d).String(), "-", "_")
		keys[d].remaining = attribute.Key("tollgate.ratelimit." + name + ".remaining")
		keys[d].limit = attribute.Key("tollgate.ratelimit." + name + ".limit")
	}
	return keys
}()
