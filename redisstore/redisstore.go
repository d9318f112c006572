// Package redisstore provides a [tollgate.Store] that keeps every budget and
// pause in Redis, so that all the processes calling an API with one key pace
// against one set of limits.
//
// You need it when more than one process shares an API key (replicas,
// workers, batch jobs): each Transport's default store knows only its own
// process's calls, so N processes together would send up to N times the
// limit. Give each process's Transport a Store from New on one Redis, and
// they share every bucket and every pause by [tollgate.Key.StoreName].
//
// Each method is one round trip (two when Redis has not cached the script
// yet): a Lua script that reads, changes and writes one hash atomically, on
// the Redis server's clock, so that the processes' clocks and their skew do
// not matter. Admit grants ahead of time: an attempt that would have to wait
// at most Admission.MaxWait is charged at once and told how long to wait,
// which keeps one round trip per attempt and serves a fleet in the order its
// calls reached Redis.
//
// When Redis fails or does not answer before ctx is done, a method returns
// an error, and the Transport falls back to a local budget for a while
// ([tollgate.WithStoreFallback]) instead of failing its calls.
package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-go/tollgate"
)

var _ tollgate.Store = (*Store)(nil)

// Store is a [tollgate.Store] in Redis. Each name is one hash, key
// prefix:{name} (the braces make it a Redis Cluster hash tag; every script
// touches that one key), with these fields, numbers in decimal:
//
//	l0..l3  the limit per minute of each tollgate.Dimension's bucket
//	v0..v3  its level at t, below zero while in debt
//	t       when the levels were last brought up to date, µs since the Unix epoch on the server's clock
//	pu, pr  when the pause in force ends (µs) and its reason
//
// A key expires once its buckets are full again and its pause is over, plus
// the expiry margin: it is then no different from a name never seen, whose
// buckets start full.
//
// A Store is safe for concurrent use, and any number of Stores, in any
// number of processes, may share a Redis: those with the same prefix share
// their names' budgets. It needs Redis 5 or later (scripts that write after
// reading TIME), standalone, Sentinel or Cluster.
type Store struct {
	client redis.UniversalClient
	config
}

type config struct {
	prefix string
	margin time.Duration
}

// An Option configures a Store.
type Option func(*config)

// WithPrefix sets the prefix of the Store's keys, "tollgate" by default.
// Stores with different prefixes keep separate budgets on one Redis.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithExpiryMargin sets how long a key is kept after its buckets are full
// again and its pause is over, 10s by default; a negative margin counts as
// zero. It only absorbs rounding and the time between a script's run and
// the caller's next call: once a key expires, its name starts afresh with
// full buckets, which is where it would be anyway.
func WithExpiryMargin(d time.Duration) Option {
	return func(c *config) { c.margin = max(d, 0) }
}

// New returns a Store that keeps its state in the Redis that client talks
// to: a *redis.Client, *redis.ClusterClient, *redis.Ring or failover client.
// The Store does not close the client.
//
// Each method returns once ctx is done, whatever the client's options: while
// go-redis waits for a reply it heeds ctx's deadline only with
// ContextTimeoutEnabled, and its cancellation never, so the command goes on
// in a goroutine that ends when go-redis gives up on its own (ReadTimeout).
// go-redis retries a command whose reply timed out (MaxRetries), so a slow
// Redis may charge an attempt twice; a client with MaxRetries -1 never does.
func New(client redis.UniversalClient, opts ...Option) *Store {
	s := &Store{client: client, config: config{prefix: "tollgate", margin: 10 * time.Second}}
	for _, o := range opts {
		o(&s.config)
	}
	return s
}

// The scripts: common.lua loads a name's state, each operation's own part
// follows it.
var (
	//go:embed common.lua
	commonLua string
	//go:embed admit.lua
	admitLua string
	//go:embed settle.lua
	settleLua string
	//go:embed pause.lua
	pauseLua string

	admitScript  = redis.NewScript(commonLua + admitLua)
	settleScript = redis.NewScript(commonLua + settleLua)
	pauseScript  = redis.NewScript(commonLua + pauseLua)
)

// key returns the Redis key of name.
func (s *Store) key(name string) string { return s.prefix + ":{" + name + "}" }

// Admit implements tollgate.Store in one script run. It first applies
// a.Settle, in order, as Settle does. A bucket the hash does not hold (a
// name never seen, expired, or lost with a Redis restarted empty) starts at
// a.Start where a.HasStart, else full. It grants the attempt
// when every bucket whose limit is above zero holds its cost, or its need
// where a.Need sets one, plus a.Keep (the two capped together at the
// limit), charging all of them their cost; it also grants it, charging all
// of them at once, when the longest wait until that fits is at most
// a.MaxWait, and then reports that wait in Wait. Otherwise it charges
// nothing and reports the wait. While a pause is in force it grants nothing
// and reports the time left in Paused. Levels.At is the Redis server's
// time. Every cost, need and Keep must be finite and not negative;
// a.MaxWait below zero counts as zero.
func (s *Store) Admit(ctx context.Context, name string, a tollgate.Admission) (tollgate.Admitted, error) {
	args := make([]any, 0, 23+13*len(a.Settle))
	args = append(args, s.marginArg())
	args = appendLimits(args, a.Limits)
	for d, c := range a.Cost {
		if math.IsNaN(c) || math.IsInf(c, 0) || c < 0 {
			return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: invalid cost %v of %v", c, tollgate.Dimension(d))
		}
		args = append(args, formatFloat(c))
	}
	for d, start := range a.Start {
		if a.HasStart[d] && !math.IsNaN(start) && !math.IsInf(start, 0) {
			args = append(args, formatFloat(start))
		} else {
			args = append(args, "")
		}
	}
	for d, need := range a.Need {
		if math.IsNaN(need) || math.IsInf(need, 0) || need < 0 {
			return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: invalid need %v of %v", need, tollgate.Dimension(d))
		}
		args = append(args, formatFloat(need))
	}
	args = append(args, max(a.MaxWait, 0).Microseconds())
	for d, k := range a.Keep {
		if math.IsNaN(k) || math.IsInf(k, 0) || k < 0 {
			return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: invalid headroom %v of %v", k, tollgate.Dimension(d))
		}
		args = append(args, formatFloat(k))
	}
	args = append(args, len(a.Settle))
	for _, st := range a.Settle {
		var err error
		if args, err = appendSettlement(args, st); err != nil {
			return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: %w", err)
		}
	}
	reply, err := s.run(ctx, admitScript, name, args)
	if err != nil {
		return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: %w", err)
	}
	r, err := parse(reply, 9)
	if err != nil {
		return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: %w", err)
	}
	granted := r.strings[0] == "1"
	if !granted && r.strings[0] != "0" {
		return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: unexpected reply: granted %q", r.strings[0])
	}
	wait, paused := r.duration(1), r.duration(2)
	levels := r.levels(4)
	if r.err != nil {
		return tollgate.Admitted{}, fmt.Errorf("redisstore: admit: %w", r.err)
	}
	return tollgate.Admitted{Granted: granted, Wait: wait, Paused: paused, PauseReason: r.strings[3], Levels: levels}, nil
}

// Settle implements tollgate.Store in one script run: for each dimension
// whose limit is above zero and whose bucket the hash holds (a bucket it
// does not hold is left to the next Admit) it takes a positive Charge, gives back a
// negative one (never above the limit), then, where HasFloor, lowers the
// level to Floor plus the refill since SentAt (on the server's clock, as
// Admit's Levels.At) when it is above that. Charges must be finite; a Floor
// that is NaN is ignored, an infinite one is an error.
func (s *Store) Settle(ctx context.Context, name string, st tollgate.Settlement) (tollgate.Levels, error) {
	args, err := appendSettlement(append(make([]any, 0, 14), s.marginArg()), st)
	if err != nil {
		return tollgate.Levels{}, fmt.Errorf("redisstore: settle: %w", err)
	}
	reply, err := s.run(ctx, settleScript, name, args)
	if err != nil {
		return tollgate.Levels{}, fmt.Errorf("redisstore: settle: %w", err)
	}
	r, err := parse(reply, 5)
	if err != nil {
		return tollgate.Levels{}, fmt.Errorf("redisstore: settle: %w", err)
	}
	levels := r.levels(0)
	if r.err != nil {
		return tollgate.Levels{}, fmt.Errorf("redisstore: settle: %w", r.err)
	}
	return levels, nil
}

// Pause implements tollgate.Store in one script run: every Admit of name
// is refused until d from now on the server's clock, with reason, unless a
// pause that ends later is in force already. A d of zero or less changes
// nothing.
func (s *Store) Pause(ctx context.Context, name string, d time.Duration, reason string) error {
	// rounded up: a pause is never shorter than asked
	us := (max(d, 0) + time.Microsecond - 1) / time.Microsecond
	reply, err := s.run(ctx, pauseScript, name, []any{s.marginArg(), int64(us), reason})
	if err != nil {
		return fmt.Errorf("redisstore: pause: %w", err)
	}
	if _, ok := reply.(string); !ok {
		return fmt.Errorf("redisstore: pause: unexpected reply %T", reply)
	}
	return nil
}

// appendSettlement appends the 13 script arguments of st: limits, charges,
// floors (” where there is none) and when the attempt was sent.
func appendSettlement(args []any, st tollgate.Settlement) ([]any, error) {
	args = appendLimits(args, st.Limits)
	for d, c := range st.Charge {
		if math.IsNaN(c) || math.IsInf(c, 0) {
			return nil, fmt.Errorf("invalid charge %v of %v", c, tollgate.Dimension(d))
		}
		args = append(args, formatFloat(c))
	}
	for d, f := range st.Floor {
		switch {
		case !st.HasFloor[d] || math.IsNaN(f):
			args = append(args, "")
		case math.IsInf(f, 0):
			return nil, fmt.Errorf("invalid floor %v of %v", f, tollgate.Dimension(d))
		default:
			args = append(args, formatFloat(f))
		}
	}
	return append(args, st.SentAt.UnixMicro()), nil
}

// marginArg is the expiry margin in whole milliseconds, rounded up.
func (s *Store) marginArg() int64 {
	return int64((s.margin + time.Millisecond - 1) / time.Millisecond)
}

func appendLimits(args []any, limits [tollgate.NumDimensions]int64) []any {
	for _, l := range limits {
		args = append(args, max(l, 0))
	}
	return args
}

// formatFloat formats x so that Lua's tonumber reads it back exactly.
func formatFloat(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }

// run runs script on name's key and returns its reply, or ctx's error once
// ctx is done. A client with ContextTimeoutEnabled still waits for a reply
// past a cancellation (only ctx's deadline reaches its socket), so the
// command always runs in a goroutine of its own when ctx can be done.
func (s *Store) run(ctx context.Context, script *redis.Script, name string, args []any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	keys := []string{s.key(name)}
	if ctx.Done() == nil {
		return script.Run(ctx, s.client, keys, args...).Result()
	}
	type result struct {
		reply any
		err   error
	}
	done := make(chan result, 1)
	go func() {
		reply, err := script.Run(ctx, s.client, keys, args...).Result()
		done <- result{reply, err}
	}()
	select {
	case r := <-done:
		return r.reply, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reply is a script's reply: an array of strings. Its accessors record the
// first malformed element in err.
type reply struct {
	strings []string
	err     error
}

// parse checks that v is an array of n strings.
func parse(v any, n int) (*reply, error) {
	a, ok := v.([]any)
	if !ok || len(a) != n {
		return nil, fmt.Errorf("unexpected reply %T of %d elements, want %d strings", v, len(a), n)
	}
	r := &reply{strings: make([]string, n)}
	for i, e := range a {
		if r.strings[i], ok = e.(string); !ok {
			return nil, fmt.Errorf("unexpected reply element %d: %T, want a string", i, e)
		}
	}
	return r, nil
}

func (r *reply) float(i int) float64 {
	x, err := strconv.ParseFloat(r.strings[i], 64)
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("unexpected reply element %d: %w", i, err)
	}
	return x
}

// duration reads element i, microseconds, as a Duration.
func (r *reply) duration(i int) time.Duration {
	us := r.float(i)
	switch {
	case math.IsNaN(us) || us < 0:
		if r.err == nil {
			r.err = errors.New("unexpected reply: duration " + r.strings[i])
		}
		return 0
	case us*float64(time.Microsecond) >= math.MaxInt64:
		return math.MaxInt64
	}
	return time.Duration(us * float64(time.Microsecond))
}

// levels reads the server's time at element i and the levels after it, ”
// (no bucket) as NaN.
func (r *reply) levels(i int) tollgate.Levels {
	l := tollgate.Levels{At: time.UnixMicro(int64(r.float(i)))}
	for d := range l.Level {
		l.Level[d] = math.NaN()
		if r.strings[i+1+d] != "" {
			l.Level[d] = r.float(i + 1 + d)
		}
	}
	return l
}
