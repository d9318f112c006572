package redisstore_test

import (
	"cmp"
	"context"
	"errors"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/redistest"
	"github.com/tollgate-go/tollgate/redisstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// client returns a client of the test's own for the Redis at addr.
func client(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newStore returns a Store on the shared Redis under a prefix of the test's
// own, and a client to look at its keys.
func newStore(t testing.TB, opts ...redisstore.Option) (*redisstore.Store, *redis.Client, string) {
	c := client(t, redistest.Shared(t))
	prefix := redistest.Prefix(t)
	return redisstore.New(c, append([]redisstore.Option{redisstore.WithPrefix(prefix)}, opts...)...), c, prefix
}

const name = "acct:anthropic:claude-sonnet-4"

func limits(requests, tokens int64) [tollgate.NumDimensions]int64 {
	return [tollgate.NumDimensions]int64{tollgate.Requests: requests, tollgate.Tokens: tokens}
}

func cost(requests, tokens float64) [tollgate.NumDimensions]float64 {
	return [tollgate.NumDimensions]float64{tollgate.Requests: requests, tollgate.Tokens: tokens}
}

// refill is what a bucket of limit per minute refills over d.
func refill(limit int64, d time.Duration) float64 { return float64(limit) * d.Minutes() }

// assertRemaining asserts that got, a time left read after start, is want
// less at most the time since start (and PTTL's rounding).
func assertRemaining(t *testing.T, want, got time.Duration, start time.Time) {
	t.Helper()
	assert.LessOrEqual(t, got, want+time.Millisecond)
	assert.GreaterOrEqual(t, got, want-time.Since(start)-time.Millisecond)
}

// levels reads the levels of name now, changing nothing.
func levels(t *testing.T, s *redisstore.Store, l [tollgate.NumDimensions]int64) tollgate.Levels {
	t.Helper()
	lv, err := s.Settle(context.Background(), name, tollgate.Settlement{Limits: l})
	require.NoError(t, err)
	return lv
}

func TestAdmitConcurrentIsAtomic(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	// Tokens run out first: 1000/15 = 66 admissions, while requests would allow 100.
	l, c := limits(100, 1000), cost(1, 15)
	const workers, each = 16, 25
	var granted atomic.Int64
	errs := make(chan error, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: c})
				if err != nil {
					errs <- err
					return
				}
				if a.Granted {
					if a.Wait != 0 {
						errs <- errors.New("granted ahead with MaxWait 0")
						return
					}
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	lv := levels(t, s, l)
	elapsed := time.Since(start)
	n := float64(granted.Load())
	t.Logf("%d of %d admissions granted in %v", granted.Load(), workers*each, elapsed)

	assert.GreaterOrEqual(t, n, 66.0, "every admission that fitted must have been granted")
	assert.LessOrEqual(t, n, math.Floor((1000+refill(1000, elapsed))/15), "granted more than the tokens limit plus its refill")
	// All or nothing: each dimension was charged exactly once per granted admission.
	assert.InDelta(t, 100-n+refill(100, elapsed)/2, lv.Level[tollgate.Requests], refill(100, elapsed)/2+1e-9)
	assert.InDelta(t, 1000-15*n+refill(1000, elapsed)/2, lv.Level[tollgate.Tokens], refill(1000, elapsed)/2+1e-9)
}

func TestAdmitAllOrNothing(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(100, 10)
	a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 10)})
	require.NoError(t, err)
	require.True(t, a.Granted)
	at := a.Levels.At

	// Fits requests (99 left) but not tokens (0 left): charges neither.
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 5)})
	require.NoError(t, err)
	assert.False(t, a.Granted)
	elapsed := a.Levels.At.Sub(at)
	assert.InDelta(t, 30*time.Second-elapsed, a.Wait, float64(time.Microsecond), "5 of 10 tokens per minute")
	assert.InDelta(t, 99+refill(100, elapsed), a.Levels.Level[tollgate.Requests], 1e-9, "requests not charged: tokens refused them")
	assert.InDelta(t, refill(10, elapsed), a.Levels.Level[tollgate.Tokens], 1e-9)

	// A cost above the limit waits for a full bucket and takes all of it.
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 50)})
	require.NoError(t, err)
	assert.False(t, a.Granted)
	assert.InDelta(t, time.Minute-a.Levels.At.Sub(at), a.Wait, float64(time.Microsecond))
}

// A need below the cost admits once the bucket holds the need and charges
// the whole cost, into debt; an invalid need is an error.
func TestAdmitAtTheNeed(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(0, 600)
	a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(0, 550)})
	require.NoError(t, err)
	require.True(t, a.Granted)
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(0, 300), Need: cost(0, 20)})
	require.NoError(t, err)
	require.True(t, a.Granted, "50 left cover the need of 20")
	assert.InDelta(t, -250, a.Levels.Level[tollgate.Tokens], 1, "the whole cost charged, into debt")
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(0, 1), Need: cost(0, 20)})
	require.NoError(t, err)
	assert.False(t, a.Granted, "in debt: short of the need")
	assert.InDelta(t, 27*time.Second, a.Wait, float64(time.Second), "until the level is back at the need")

	_, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(0, 1), Need: cost(0, math.NaN())})
	assert.ErrorContains(t, err, "invalid need")
}

func TestAdmitKeep(t *testing.T) {
	// Keep is what the attempt must leave in each bucket (the headroom a
	// lower priority leaves for Interactive calls): cost and Keep fit
	// together, capped at the limit; only the cost is charged. It holds
	// for a grant ahead of time too.
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(100, 60) // tokens: one a second
	keep := cost(0, 20)
	a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 50), Keep: keep})
	require.NoError(t, err)
	require.True(t, a.Granted, "50 + 20 capped at 60: a full bucket fits")
	at := a.Levels.At
	assert.InDelta(t, 10, a.Levels.Level[tollgate.Tokens], 1e-9, "charged its cost only")

	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 5), Keep: keep})
	require.NoError(t, err)
	assert.False(t, a.Granted, "5 fits the 10 left, but not with 20 kept")
	assert.InDelta(t, 15*time.Second-a.Levels.At.Sub(at), a.Wait, float64(time.Microsecond))

	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 5), Keep: keep, MaxWait: time.Minute})
	require.NoError(t, err)
	assert.True(t, a.Granted, "granted ahead")
	assert.InDelta(t, 15*time.Second-a.Levels.At.Sub(at), a.Wait, float64(time.Microsecond), "for when it fits with 20 kept")
	assert.InDelta(t, 5+refill(60, a.Levels.At.Sub(at)), a.Levels.Level[tollgate.Tokens], 1e-9, "charged 5")

	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 5)})
	require.NoError(t, err)
	assert.True(t, a.Granted, "an attempt that keeps nothing takes what is left")
}

func TestAdmitCarriesSettlements(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(100, 10)
	a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 10)})
	require.NoError(t, err)
	require.True(t, a.Granted)
	at := a.Levels.At

	// Settlements go first: the give-back of 6 tokens makes room for 5,
	// and the second one's floor holds requests down, in one round trip.
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 5), Settle: []tollgate.Settlement{
		{Limits: l, Charge: cost(0, -6), SentAt: at},
		{Limits: l, Floor: cost(20, 0), HasFloor: [tollgate.NumDimensions]bool{tollgate.Requests: true}, SentAt: at},
	}})
	require.NoError(t, err)
	assert.True(t, a.Granted)
	assert.Zero(t, a.Wait)
	elapsed := a.Levels.At.Sub(at)
	assert.InDelta(t, 1+refill(10, elapsed), a.Levels.Level[tollgate.Tokens], 1e-9)
	assert.InDelta(t, 19+refill(100, elapsed), a.Levels.Level[tollgate.Requests], 1e-9)

	// They apply even when the admission is refused.
	require.NoError(t, s.Pause(ctx, name, time.Minute, "retry-after"))
	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 1), Settle: []tollgate.Settlement{
		{Limits: l, Charge: cost(-19, -1)},
	}})
	require.NoError(t, err)
	assert.False(t, a.Granted)
	assert.Positive(t, a.Paused)
	assert.InDelta(t, 38+refill(100, a.Levels.At.Sub(at)), a.Levels.Level[tollgate.Requests], 1e-9)

	_, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Settle: []tollgate.Settlement{{Limits: l, Charge: cost(math.NaN(), 0)}}})
	assert.ErrorContains(t, err, "invalid charge")
}

func TestGrantAhead(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(60, 0) // 20 requests every 20 s
	adm := tollgate.Admission{Limits: l, Cost: cost(20, 0), MaxWait: 70 * time.Second}
	var all []tollgate.Admitted
	for range 6 {
		a, err := s.Admit(ctx, name, adm)
		require.NoError(t, err)
		require.True(t, a.Granted, "admission %d within MaxWait", len(all)+1)
		all = append(all, a)
	}
	// The bucket was full at the first: three go at once, and each after
	// them waits behind the debt of those before it, 20 s more each.
	start := all[0].Levels.At
	var waits []time.Duration
	for i, a := range all {
		sendAt := start.Add(time.Duration(max(i-2, 0)) * 20 * time.Second)
		want := max(sendAt.Sub(a.Levels.At), 0)
		assert.InDelta(t, want, a.Wait, float64(time.Microsecond), "admission %d", i+1)
		waits = append(waits, a.Wait)
	}
	t.Logf("waits: %v", waits)
	last := all[len(all)-1]
	assert.InDelta(t, -60+refill(60, last.Levels.At.Sub(start)), last.Levels.Level[tollgate.Requests], 1e-9,
		"granting ahead charged all six")

	// The seventh would wait till 80 s after the first, beyond MaxWait:
	// refused and charged nothing.
	a, err := s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assert.False(t, a.Granted)
	assert.InDelta(t, start.Add(80*time.Second).Sub(a.Levels.At), a.Wait, float64(time.Microsecond))
	assert.InDelta(t, -60+refill(60, a.Levels.At.Sub(start)), a.Levels.Level[tollgate.Requests], 1e-9)
}

func TestGrantAheadConcurrentQueuesInOrder(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	adm := tollgate.Admission{Limits: limits(60, 0), Cost: cost(20, 0), MaxWait: 10 * time.Minute}
	const n = 12
	got := make(chan tollgate.Admitted, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			a, err := s.Admit(ctx, name, adm)
			if err != nil {
				errs <- err
				return
			}
			got <- a
		})
	}
	wg.Wait()
	close(got)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var all []tollgate.Admitted
	for a := range got {
		require.True(t, a.Granted)
		all = append(all, a)
	}
	require.Len(t, all, n)
	// In the order they reached Redis, each granted ahead is sent 20 s
	// after the one before.
	slices.SortFunc(all, func(a, b tollgate.Admitted) int {
		return cmp.Or(a.Levels.At.Compare(b.Levels.At), cmp.Compare(a.Wait, b.Wait))
	})
	sendAt := func(a tollgate.Admitted) time.Time { return a.Levels.At.Add(a.Wait) }
	for i, a := range all {
		assert.Equal(t, i >= 3, a.Wait > 0, "admission %d waits %v; a full bucket of 60 holds three", i+1, a.Wait)
		if i > 3 {
			assert.InDelta(t, 20*time.Second, sendAt(a).Sub(sendAt(all[i-1])), float64(2*time.Microsecond),
				"send times of admissions %d and %d", i, i+1)
		}
	}
}

func TestSettle(t *testing.T) {
	ctx := context.Background()
	l := limits(100, 0)
	admit := func(t *testing.T, s *redisstore.Store, l [tollgate.NumDimensions]int64, c [tollgate.NumDimensions]float64) tollgate.Admitted {
		t.Helper()
		a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: c})
		require.NoError(t, err)
		require.True(t, a.Granted)
		return a
	}
	settle := func(t *testing.T, s *redisstore.Store, st tollgate.Settlement) tollgate.Levels {
		t.Helper()
		lv, err := s.Settle(ctx, name, st)
		require.NoError(t, err)
		return lv
	}

	t.Run("give back caps at the limit", func(t *testing.T) {
		s, _, _ := newStore(t)
		admit(t, s, l, cost(1, 0))
		lv := settle(t, s, tollgate.Settlement{Limits: l, Charge: cost(-5, 0)})
		assert.Equal(t, 100.0, lv.Level[tollgate.Requests])
	})
	t.Run("take goes into debt", func(t *testing.T) {
		s, _, _ := newStore(t)
		a := admit(t, s, l, cost(1, 0))
		lv := settle(t, s, tollgate.Settlement{Limits: l, Charge: cost(150, 0)})
		assert.InDelta(t, -51+refill(100, lv.At.Sub(a.Levels.At)), lv.Level[tollgate.Requests], 1e-9)
	})
	t.Run("floor lowers, never raises, and adds the refill since SentAt", func(t *testing.T) {
		s, _, _ := newStore(t)
		l := limits(600, 0)
		a := admit(t, s, l, cost(1, 0))
		sent := a.Levels.At
		floor := func(f float64, sentAt time.Time) tollgate.Settlement {
			return tollgate.Settlement{Limits: l, Floor: cost(f, 0), HasFloor: [tollgate.NumDimensions]bool{true}, SentAt: sentAt}
		}
		lv := settle(t, s, floor(100, sent))
		assert.InDelta(t, 100+refill(600, lv.At.Sub(sent)), lv.Level[tollgate.Requests], 1e-9)

		before := lv
		lv = settle(t, s, floor(500, sent))
		assert.InDelta(t, before.Level[tollgate.Requests]+refill(600, lv.At.Sub(before.At)), lv.Level[tollgate.Requests], 1e-9,
			"a floor above the level raised it")

		// A floor of 0 reported by an attempt sent 10 s ago: the bucket has refilled 100 since.
		s2, _, _ := newStore(t)
		a = admit(t, s2, l, cost(0, 0))
		sent = a.Levels.At.Add(-10 * time.Second)
		lv = settle(t, s2, floor(0, sent))
		assert.InDelta(t, refill(600, lv.At.Sub(sent)), lv.Level[tollgate.Requests], 1e-9)

		// SentAt after now adds no refill, and a NaN floor or none changes nothing.
		lv = settle(t, s2, floor(10, lv.At.Add(time.Hour)))
		assert.Equal(t, 10.0, lv.Level[tollgate.Requests])
		before = lv
		lv = settle(t, s2, floor(math.NaN(), sent))
		assert.InDelta(t, 10+refill(600, lv.At.Sub(before.At)), lv.Level[tollgate.Requests], 1e-9)
	})
}

func TestServerClock(t *testing.T) {
	s, c, _ := newStore(t)
	ctx := context.Background()
	l := limits(6000, 0) // 100 per second: refill shows within milliseconds
	before, err := c.Time(ctx).Result()
	require.NoError(t, err)
	first, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1000, 0)})
	require.NoError(t, err)
	after, err := c.Time(ctx).Result()
	require.NoError(t, err)
	t.Logf("TIME before %v, Levels.At %v, TIME after %v, local clock %v", before, first.Levels.At, after, time.Now())
	assert.False(t, first.Levels.At.Before(before.Truncate(time.Microsecond)), "Levels.At before the server's TIME")
	assert.False(t, first.Levels.At.After(after), "Levels.At after the server's TIME")

	// The refill between two scripts is exactly what the server's times
	// they reported allow: nothing else goes into it.
	time.Sleep(5 * time.Millisecond)
	second, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 0)})
	require.NoError(t, err)
	elapsed := second.Levels.At.Sub(first.Levels.At)
	require.Greater(t, elapsed, time.Duration(0))
	assert.InDelta(t, 5000+refill(6000, elapsed)-1, second.Levels.Level[tollgate.Requests], 1e-9)
}

func TestPause(t *testing.T) {
	s, c, prefix := newStore(t, redisstore.WithExpiryMargin(time.Second))
	ctx := context.Background()
	adm := tollgate.Admission{Limits: limits(100, 0), Cost: cost(1, 0)}

	paused := time.Now()
	require.NoError(t, s.Pause(ctx, name, time.Minute, "overloaded"))
	a, err := s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assert.False(t, a.Granted)
	assertRemaining(t, time.Minute, a.Paused, paused)
	assert.Equal(t, "overloaded", a.PauseReason)
	assert.Equal(t, 100.0, a.Levels.Level[tollgate.Requests], "a refused admission was charged")

	// A shorter pause, or a negative one, changes nothing.
	require.NoError(t, s.Pause(ctx, name, time.Second, "short"))
	require.NoError(t, s.Pause(ctx, name, -time.Hour, "negative"))
	a, err = s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assertRemaining(t, time.Minute, a.Paused, paused)
	assert.Equal(t, "overloaded", a.PauseReason)

	// A longer one extends it, with its reason; the key lives as long.
	paused = time.Now()
	require.NoError(t, s.Pause(ctx, name, 2*time.Minute, "spend limit"))
	a, err = s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assertRemaining(t, 2*time.Minute, a.Paused, paused)
	assert.Equal(t, "spend limit", a.PauseReason)
	ttl, err := c.PTTL(ctx, prefix+":{"+name+"}").Result()
	require.NoError(t, err)
	assertRemaining(t, 2*time.Minute+time.Second, ttl, paused)

	// A pause ends on time.
	const other = "acct:openai:gpt-4o"
	require.NoError(t, s.Pause(ctx, other, 30*time.Millisecond, "brief"))
	time.Sleep(40 * time.Millisecond)
	a, err = s.Admit(ctx, other, adm)
	require.NoError(t, err)
	assert.True(t, a.Granted)
	assert.Zero(t, a.Paused)
	assert.Empty(t, a.PauseReason)
}

func TestExpiry(t *testing.T) {
	const margin = 50 * time.Millisecond
	s, c, prefix := newStore(t, redisstore.WithExpiryMargin(margin))
	ctx := context.Background()
	key := func(name string) string { return prefix + ":{" + name + "}" }
	pttl := func(name string) time.Duration {
		d, err := c.PTTL(ctx, key(name)).Result()
		require.NoError(t, err)
		return d
	}

	// Half of a 60 per minute bucket refills in 30 s.
	start := time.Now()
	_, err := s.Admit(ctx, "slow", tollgate.Admission{Limits: limits(60, 0), Cost: cost(30, 0)})
	require.NoError(t, err)
	assertRemaining(t, 30*time.Second+margin, pttl("slow"), start)

	// A full bucket is kept for the margin only.
	start = time.Now()
	_, err = s.Admit(ctx, "full", tollgate.Admission{Limits: limits(60, 0)})
	require.NoError(t, err)
	assertRemaining(t, margin, pttl("full"), start)

	// One request of 6000 per minute refills in 10 ms; the key goes 10 ms + the margin later.
	const fast = "fast"
	l := limits(6000, 0)
	start = time.Now()
	a, err := s.Admit(ctx, fast, tollgate.Admission{Limits: l, Cost: cost(1, 0)})
	require.NoError(t, err)
	admitted := time.Now()
	ttl := pttl(fast)
	assertRemaining(t, 10*time.Millisecond+margin, ttl, start)
	for {
		n, err := c.Exists(ctx, key(fast)).Result()
		require.NoError(t, err)
		if n == 0 {
			break
		}
		require.Less(t, time.Since(admitted), time.Second, "the key outlived its TTL")
		time.Sleep(2 * time.Millisecond)
	}
	gone := time.Since(admitted)
	t.Logf("key gone %v after the admission (PTTL then %v)", gone, ttl)
	assert.GreaterOrEqual(t, gone, ttl-2*time.Millisecond, "the key went before its bucket was full plus the margin")
	a, err = s.Admit(ctx, fast, tollgate.Admission{Limits: l, Cost: cost(1, 0)})
	require.NoError(t, err)
	assert.Equal(t, 5999.0, a.Levels.Level[tollgate.Requests], "a name whose key expired starts full")

	// Unknown dimensions touch no fields; a Pause of nothing stored keeps nothing.
	fields, err := c.HKeys(ctx, key(fast)).Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"l0", "v0", "t"}, fields)
	require.NoError(t, s.Pause(ctx, "nothing", 0, ""))
	n, err := c.Exists(ctx, key("nothing")).Result()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestLimitChange(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	admit := func(l [tollgate.NumDimensions]int64, c [tollgate.NumDimensions]float64) tollgate.Admitted {
		a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: c})
		require.NoError(t, err)
		return a
	}
	a := admit(limits(100, 0), cost(50, 0))
	assert.Equal(t, 50.0, a.Levels.Level[tollgate.Requests])
	// A lower limit caps the level; a higher one keeps it (it does not start full).
	b := admit(limits(40, 0), cost(0, 0))
	assert.Equal(t, 40.0, b.Levels.Level[tollgate.Requests])
	c := admit(limits(200, 0), cost(0, 0))
	assert.Equal(t, 40.0, c.Levels.Level[tollgate.Requests], "full at 40 until now")
	// A dimension first seen starts full; one left out keeps its level and refill.
	d := admit(limits(0, 1000), cost(0, 10))
	assert.Equal(t, 990.0, d.Levels.Level[tollgate.Tokens])
	assert.InDelta(t, 40+refill(200, d.Levels.At.Sub(c.Levels.At)), d.Levels.Level[tollgate.Requests], 1e-9)
}

func TestPrefixes(t *testing.T) {
	addr := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	a := redisstore.New(client(t, addr), redisstore.WithPrefix(prefix+"a"))
	b := redisstore.New(client(t, addr), redisstore.WithPrefix(prefix+"b"))
	sameAsA := redisstore.New(client(t, addr), redisstore.WithPrefix(prefix+"a"))
	ctx := context.Background()
	adm := tollgate.Admission{Limits: limits(10, 0), Cost: cost(10, 0)}
	for _, s := range []struct {
		store   *redisstore.Store
		granted bool
	}{{a, true}, {b, true}, {sameAsA, false}} {
		got, err := s.store.Admit(ctx, name, adm)
		require.NoError(t, err)
		assert.Equal(t, s.granted, got.Granted)
	}
}

func TestInvalidInput(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := context.Background()
	l := limits(100, 100)
	for _, x := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1} {
		_, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, x)})
		assert.ErrorContains(t, err, "redisstore: admit: invalid cost", "cost %v", x)
	}
	for _, x := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		_, err := s.Settle(ctx, name, tollgate.Settlement{Limits: l, Charge: cost(x, 0)})
		assert.ErrorContains(t, err, "redisstore: settle: invalid charge", "charge %v", x)
	}
	for _, x := range []float64{math.NaN(), math.Inf(1), -1} {
		_, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 1), Keep: cost(0, x)})
		assert.ErrorContains(t, err, "redisstore: admit: invalid headroom", "keep %v", x)
	}
	_, err := s.Settle(ctx, name, tollgate.Settlement{Limits: l, Floor: cost(math.Inf(-1), 0), HasFloor: [tollgate.NumDimensions]bool{true}})
	assert.ErrorContains(t, err, "redisstore: settle: invalid floor")
	n, err := c.Exists(ctx, prefix+":{"+name+"}").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "invalid input reached Redis")
}

func TestRestartedServer(t *testing.T) {
	srv := redistest.Start(t)
	s := redisstore.New(client(t, srv.Addr))
	ctx := context.Background()
	adm := tollgate.Admission{Limits: limits(10, 0), Cost: cost(4, 0)}
	a, err := s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assert.Equal(t, 6.0, a.Levels.Level[tollgate.Requests])

	// A new server has lost the scripts (NOSCRIPT: Run falls back to EVAL) and the state.
	srv.Restart()
	a, err = s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assert.Equal(t, 6.0, a.Levels.Level[tollgate.Requests])

	// Lost again: a settlement finds no bucket and leaves it alone, the next
	// admission starts it from what its caller knew.
	srv.Restart()
	lv, err := s.Settle(ctx, name, tollgate.Settlement{Limits: limits(10, 0), Charge: cost(3, 0)})
	require.NoError(t, err)
	assert.True(t, math.IsNaN(lv.Level[tollgate.Requests]), "no bucket: NaN, got %v", lv.Level[tollgate.Requests])
	adm.Start, adm.HasStart = cost(5, 0), [tollgate.NumDimensions]bool{tollgate.Requests: true}
	a, err = s.Admit(ctx, name, adm)
	require.NoError(t, err)
	assert.InDelta(t, 1.0, a.Levels.Level[tollgate.Requests], 1e-3, "started at 5, less the cost of 4")

	srv.Stop()
	ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = s.Admit(ctx, name, adm)
	assert.ErrorContains(t, err, "redisstore: admit:")
}

// TestAdmitStart pins where a new bucket starts: at Start where given
// (capped at the limit), else full; a bucket the store has keeps its level.
func TestAdmitStart(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	l := limits(100, 1000)
	a, err := s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 0),
		Start: cost(40, 5000), HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true, tollgate.Tokens: true}})
	require.NoError(t, err)
	require.True(t, a.Granted)
	assert.InDelta(t, 39, a.Levels.Level[tollgate.Requests], 1e-3)
	assert.InDelta(t, 1000, a.Levels.Level[tollgate.Tokens], 1e-9, "capped at the limit")
	assert.True(t, math.IsNaN(a.Levels.Level[tollgate.InputTokens]), "no limit, no bucket")

	a, err = s.Admit(ctx, name, tollgate.Admission{Limits: l, Cost: cost(1, 0),
		Start: cost(0, 0), HasStart: [tollgate.NumDimensions]bool{tollgate.Requests: true}})
	require.NoError(t, err)
	assert.InDelta(t, 38, a.Levels.Level[tollgate.Requests], 1e-2, "a known bucket ignores Start")
}

// blackHole is a server that accepts connections, reads, and never answers.
func blackHole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = c.Read(make([]byte, 1<<16)) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestTimeout(t *testing.T) {
	// Runs last of the cleanups: the commands left running in the
	// background have ended once the client is closed and the server gone.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ops := map[string]func(context.Context, *redisstore.Store) error{
		"admit": func(ctx context.Context, s *redisstore.Store) error {
			_, err := s.Admit(ctx, name, tollgate.Admission{Limits: limits(10, 0), Cost: cost(1, 0)})
			return err
		},
		"settle": func(ctx context.Context, s *redisstore.Store) error {
			_, err := s.Settle(ctx, name, tollgate.Settlement{Limits: limits(10, 0)})
			return err
		},
		"pause": func(ctx context.Context, s *redisstore.Store) error {
			return s.Pause(ctx, name, time.Second, "test")
		},
	}
	addr := blackHole(t)
	for _, contextTimeout := range []bool{false, true} {
		c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: contextTimeout})
		t.Cleanup(func() { _ = c.Close() })
		s := redisstore.New(c)
		for op, call := range ops {
			for _, cancel := range []bool{false, true} {
				ctx, stop := context.WithTimeout(context.Background(), 50*time.Millisecond)
				want := context.DeadlineExceeded
				if cancel {
					// canceled with no deadline: ContextTimeoutEnabled does not help then
					ctx, stop = context.WithCancel(context.Background())
					time.AfterFunc(50*time.Millisecond, stop)
					want = context.Canceled
				}
				start := time.Now()
				err := call(ctx, s)
				took := time.Since(start)
				stop()
				assert.ErrorIs(t, err, want, "%s, ContextTimeoutEnabled %v, cancel %v", op, contextTimeout, cancel)
				assert.ErrorContains(t, err, "redisstore: "+op+":")
				assert.Less(t, took, 300*time.Millisecond, "%s, ContextTimeoutEnabled %v, cancel %v", op, contextTimeout, cancel)
			}
		}
	}
}

func BenchmarkAdmitSettle(b *testing.B) {
	for _, bc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		// the Transport's calls: bounded by WithStoreTimeout, so on a goroutine of their own
		{"timeout", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Second)
		}},
		{"background", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, _, _ := newStore(b)
			l := [tollgate.NumDimensions]int64{1 << 40, 1 << 40, 1 << 40, 1 << 40}
			adm := tollgate.Admission{Limits: l, Cost: [tollgate.NumDimensions]float64{1, 1000, 800, 200}}
			st := tollgate.Settlement{Limits: l, Charge: [tollgate.NumDimensions]float64{0, -100, 0, -100}}
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := bc.ctx()
				a, err := s.Admit(ctx, name, adm)
				if err != nil || !a.Granted {
					b.Fatal(a, err)
				}
				st.SentAt = a.Levels.At
				if _, err := s.Settle(ctx, name, st); err != nil {
					b.Fatal(err)
				}
				cancel()
			}
		})
	}
}
