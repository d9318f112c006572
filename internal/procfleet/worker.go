package procfleet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
	"github.com/tollgate-go/tollgate/internal/fleet/peers"
	"github.com/tollgate-go/tollgate/redisstore"
)

// workerConfig is the first line the parent writes on a worker's stdin.
type workerConfig struct {
	Name  string `json:"name"`
	Index int    `json:"index"`

	BaseURL string `json:"base_url"`
	APIKey  string `json:"api_key"`

	Agents          int           `json:"agents"`
	Duration        time.Duration `json:"duration_ns"`
	Stream          bool          `json:"stream"`
	Model           string        `json:"model"`
	MaxTokens       int           `json:"max_tokens"`
	MinPromptTokens int           `json:"min_prompt_tokens"`
	MaxPromptTokens int           `json:"max_prompt_tokens"`
	Seed            uint64        `json:"seed"`
	Limits          fleet.Limits  `json:"limits"`
	Told            bool          `json:"told"`
	Drain           time.Duration `json:"drain_ns"`

	Mode         Mode          `json:"mode"`
	RedisAddr    string        `json:"redis_addr,omitempty"`
	RedisPrefix  string        `json:"redis_prefix,omitempty"`
	StoreTimeout time.Duration `json:"store_timeout_ns,omitempty"`

	ProgressInterval time.Duration `json:"progress_interval_ns"`
}

// startMessage is the second line: when to start, on the machine's clock.
type startMessage struct {
	StartAt time.Time `json:"start_at"`
}

// message is one line a worker writes on stdout; exactly one field is set.
type message struct {
	Ready    bool            `json:"ready,omitempty"`
	Progress *workerProgress `json:"progress,omitempty"`
	Report   *Worker         `json:"report,omitempty"`
}

type workerProgress struct {
	OK        int  `json:"ok"`
	Failed    int  `json:"failed"`
	StoreDown bool `json:"store_down,omitempty"` // on the local fallback budget now
}

// readyTimeout bounds a worker's set-up: its first PING to Redis.
const readyTimeout = 10 * time.Second

// MaybeRunWorker runs this process as a worker and exits when WorkerEnv is
// set in its environment, and returns at once otherwise. Call it first
// thing in main (or in TestMain, for a test binary that Run re-executes),
// before flags are parsed or anything is written to stdout.
func MaybeRunWorker() {
	if os.Getenv(WorkerEnv) == "" {
		return
	}
	os.Exit(runWorker(os.Stdin, os.Stdout, os.Stderr))
}

// runWorker is the worker: it returns the exit code.
func runWorker(stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "procfleet worker: "+format+"\n", a...)
		return 1
	}
	in := bufio.NewReader(stdin)
	var cfg workerConfig
	if err := readLine(in, &cfg); err != nil {
		return fail("reading the configuration on stdin: %v", err)
	}

	// Stopped by SIGINT/SIGTERM, or by the end of stdin: the parent closes
	// it to stop the worker, and it ends when the parent dies.
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	starts := make(chan startMessage, 1)
	go func() {
		var s startMessage
		if readLine(in, &s) == nil {
			starts <- s
			_, _ = io.Copy(io.Discard, in)
		}
		stop()
	}()

	w, err := newWorker(ctx, cfg, stderr)
	if err != nil {
		return fail("%s: %v", cfg.Name, err)
	}
	defer w.close()
	out := &lineEncoder{w: stdout}
	if err := out.send(message{Ready: true}); err != nil {
		return fail("%s: writing on stdout: %v", cfg.Name, err)
	}

	var start startMessage
	select {
	case start = <-starts:
	case <-ctx.Done():
		return 1 // stopped before the start: the parent has given up
	}
	t := time.NewTimer(time.Until(start.StartAt))
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return 1
	}

	fc := fleet.Config{
		Agents: cfg.Agents, Duration: cfg.Duration, Stream: cfg.Stream, Model: cfg.Model, MaxTokens: cfg.MaxTokens,
		MinPromptTokens: cfg.MinPromptTokens, MaxPromptTokens: cfg.MaxPromptTokens, Seed: cfg.Seed,
		BaseURL: cfg.BaseURL, APIKey: cfg.APIKey, Limits: cfg.Limits, Drain: cfg.Drain,
		ProgressInterval: cfg.ProgressInterval,
		Progress: func(ps []fleet.Progress) {
			_ = out.send(message{Progress: &workerProgress{OK: ps[0].OK, Failed: ps[0].Failed, StoreDown: w.storeDown.Load()}})
		},
	}
	results, err := fleet.Run(ctx, fc, w.client())
	if err != nil {
		return fail("%s: %v", cfg.Name, err)
	}
	rep := w.report(results[0])
	if err := out.send(message{Report: &rep}); err != nil {
		return fail("%s: writing the report on stdout: %v", cfg.Name, err)
	}
	return 0
}

// readLine reads one line of JSON into v.
func readLine(r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil && (len(line) == 0 || !errors.Is(err, io.EOF)) {
		return err
	}
	return json.Unmarshal(line, v)
}

// lineEncoder writes JSON lines, one at a time.
type lineEncoder struct {
	mu sync.Mutex
	w  io.Writer
}

func (e *lineEncoder) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, err = e.w.Write(append(b, '\n'))
	return err
}

// worker is a worker's tollgate client and what it counts of it.
type worker struct {
	cfg   workerConfig
	opts  []tollgate.Option
	redis *redis.Client // nil in memory mode
	cmds  commandCounter
	store *storeCounter // nil in memory mode

	fallbacks    atomic.Int64
	storeDown    atomic.Bool
	breakerOpens atomic.Int64

	mu     sync.Mutex
	waits  tollgate.Waits
	status func() string
}

func newWorker(ctx context.Context, cfg workerConfig, stderr io.Writer) (*worker, error) {
	w := &worker{cfg: cfg}
	w.opts = []tollgate.Option{
		tollgate.WithLogger(slog.New(&logCounter{Handler: slog.NewTextHandler(stderr, nil), w: w})),
		tollgate.WithUsageRecorder(func(_ context.Context, rec tollgate.UsageRecord) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.waits.Budget += rec.Waits.Budget
			w.waits.Pause += rec.Waits.Pause
			w.waits.Backoff += rec.Waits.Backoff
		}),
		tollgate.WithBreakerStateChange(func(e tollgate.BreakerEvent) {
			if e.To == tollgate.BreakerOpen {
				w.breakerOpens.Add(1)
			}
		}),
	}
	switch cfg.Mode {
	case ModeMemory:
	case ModeRedis:
		w.redis = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr})
		pctx, cancel := context.WithTimeout(ctx, readyTimeout)
		err := w.redis.Ping(pctx).Err()
		cancel()
		if err != nil {
			_ = w.redis.Close()
			return nil, fmt.Errorf("no Redis at %s: %w", cfg.RedisAddr, err)
		}
		// Counted from here: the PING above is the worker's, not the store's.
		w.redis.AddHook(&w.cmds)
		var ro []redisstore.Option
		if cfg.RedisPrefix != "" {
			ro = append(ro, redisstore.WithPrefix(cfg.RedisPrefix))
		}
		w.store = &storeCounter{Store: redisstore.New(w.redis, ro...)}
		w.opts = append(w.opts, tollgate.WithStore(w.store))
		if cfg.StoreTimeout > 0 {
			w.opts = append(w.opts, tollgate.WithStoreTimeout(cfg.StoreTimeout))
		}
	default:
		return nil, fmt.Errorf("unknown mode %q", cfg.Mode)
	}
	return w, nil
}

// client is peers.Tollgate with the worker's options, keeping its status.
func (w *worker) client() fleet.Client {
	c := peers.Tollgate(w.cfg.Told, w.opts...)
	build := c.New
	c.New = func(env fleet.Env) (*fleet.Target, error) {
		t, err := build(env)
		if err == nil && t.Status != nil {
			w.mu.Lock()
			w.status = t.Status
			w.mu.Unlock()
		}
		return t, err
	}
	return c
}

func (w *worker) report(r fleet.Result) Worker {
	w.mu.Lock()
	defer w.mu.Unlock()
	rep := Worker{
		Name: w.cfg.Name, Index: w.cfg.Index, PID: os.Getpid(), Seed: w.cfg.Seed,
		Result: r, Calls: r.Calls,
		StoreFallbacks: int(w.fallbacks.Load()), BreakerOpens: int(w.breakerOpens.Load()),
		Waits: w.waits,
	}
	if w.status != nil {
		rep.Status = w.status()
	}
	if w.redis != nil {
		rep.RedisCommands, rep.RedisErrors = w.cmds.counts()
	}
	if w.store != nil {
		c := w.store.calls()
		rep.StoreCalls = &c
	}
	return rep
}

func (w *worker) close() {
	if w.redis != nil {
		_ = w.redis.Close()
	}
}

// logCounter passes tollgate's log on, counting the store's fallbacks: a
// warning about the store is a fallback, anything milder about it a
// recovery.
type logCounter struct {
	slog.Handler
	w *worker
}

func (h *logCounter) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "store") {
		if r.Level >= slog.LevelWarn {
			h.w.fallbacks.Add(1)
			h.w.storeDown.Store(true)
		} else {
			h.w.storeDown.Store(false)
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCounter{Handler: h.Handler.WithAttrs(as), w: h.w}
}

func (h *logCounter) WithGroup(name string) slog.Handler {
	return &logCounter{Handler: h.Handler.WithGroup(name), w: h.w}
}

// commandCounter is a go-redis hook that counts the commands a client sends,
// by name (a pipeline as "pipeline", one round trip).
type commandCounter struct {
	mu     sync.Mutex
	byName map[string]int64
	errors int64
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.add(cmd.Name(), err)
		return err
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		c.add("pipeline", err)
		return err
	}
}

func (c *commandCounter) add(name string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byName == nil {
		c.byName = map[string]int64{}
	}
	// A command that got no reply (its context ended, the connection
	// failed) may never have reached the server: it counts as an error
	// only, so that the counts are of commands the server answered.
	var reply redis.Error
	if err == nil || errors.As(err, &reply) {
		c.byName[strings.ToLower(name)]++
	}
	if err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "NOSCRIPT") {
		c.errors++
	}
}

func (c *commandCounter) counts() (map[string]int64, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.byName))
	for k, v := range c.byName {
		out[k] = v
	}
	return out, c.errors
}

// StoreCalls counts what a worker's tollgate asked of its store, and what
// the store answered.
type StoreCalls struct {
	// Admits is every Admit: granted at once (no wait), granted ahead of
	// time (charged now, to be sent after a wait), refused (asked again
	// later), refused for a pause in force, or failed.
	Admits       int64 `json:"admits"`
	GrantedNow   int64 `json:"granted_now"`
	GrantedAhead int64 `json:"granted_ahead"`
	Refused      int64 `json:"refused"`
	Paused       int64 `json:"paused"`
	// AheadWait sums the waits of the grants ahead of time; MaxAheadWait
	// is the longest.
	AheadWait    time.Duration `json:"ahead_wait_ns"`
	MaxAheadWait time.Duration `json:"max_ahead_wait_ns"`
	// Settles is every Settle: those that gave a request back (an attempt
	// not sent, or refused by the server), those that carried what a
	// response said remains (floors), and the others (the usage a response
	// reported, settling its estimate).
	Settles       int64 `json:"settles"`
	SettleRefunds int64 `json:"settle_refunds"`
	SettleFloors  int64 `json:"settle_floors"`
	SettleUsage   int64 `json:"settle_usage"`
	Pauses        int64 `json:"pauses"`
	Errors        int64 `json:"errors"`
}

// Add adds o's counts to c.
func (c *StoreCalls) Add(o StoreCalls) {
	c.Admits += o.Admits
	c.GrantedNow += o.GrantedNow
	c.GrantedAhead += o.GrantedAhead
	c.Refused += o.Refused
	c.Paused += o.Paused
	c.AheadWait += o.AheadWait
	c.MaxAheadWait = max(c.MaxAheadWait, o.MaxAheadWait)
	c.Settles += o.Settles
	c.SettleRefunds += o.SettleRefunds
	c.SettleFloors += o.SettleFloors
	c.SettleUsage += o.SettleUsage
	c.Pauses += o.Pauses
	c.Errors += o.Errors
}

// storeCounter passes every call on to the store and counts it.
type storeCounter struct {
	tollgate.Store
	mu sync.Mutex
	c  StoreCalls
}

func (s *storeCounter) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	res, err := s.Store.Admit(ctx, name, a)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Admits++
	switch {
	case err != nil:
		s.c.Errors++
	case res.Paused > 0:
		s.c.Paused++
	case !res.Granted:
		s.c.Refused++
	case res.Wait > 0:
		s.c.GrantedAhead++
		s.c.AheadWait += res.Wait
		s.c.MaxAheadWait = max(s.c.MaxAheadWait, res.Wait)
	default:
		s.c.GrantedNow++
	}
	return res, err
}

func (s *storeCounter) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	l, err := s.Store.Settle(ctx, name, st)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Settles++
	switch {
	case err != nil:
		s.c.Errors++
	case st.Charge[tollgate.Requests] < 0:
		s.c.SettleRefunds++
	case st.HasFloor != [len(st.HasFloor)]bool{}:
		s.c.SettleFloors++
	default:
		s.c.SettleUsage++
	}
	return l, err
}

func (s *storeCounter) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	err := s.Store.Pause(ctx, name, d, reason)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Pauses++
	if err != nil {
		s.c.Errors++
	}
	return err
}

func (s *storeCounter) calls() StoreCalls {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}
