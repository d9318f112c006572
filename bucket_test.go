package tollgate

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// bgtBucketEpoch is when the buckets of these tests start.
var bgtBucketEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestBucket(t *testing.T) {
	t0 := bgtBucketEpoch
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		op   string // take, give, pull, limit
		at   time.Duration
		n    float64
		want float64 // level after the step
	}
	cases := []struct {
		name  string
		limit float64
		steps []step
	}{
		{"starts full and refills continuously", 60, []step{
			{"take", 0, 60, 0}, {"take", 0, 0, 0}, {"take", 500 * time.Millisecond, 0, 0.5}, {"take", 30 * time.Second, 0, 30},
		}},
		{"never above the limit", 60, []step{{"take", 0, 10, 50}, {"take", time.Hour, 0, 60}, {"give", time.Hour, 100, 60}}},
		{"debt is paid off by refill", 60, []step{{"take", 0, 90, -30}, {"take", 45 * time.Second, 0, 15}}},
		{"give returns tokens", 600, []step{{"take", 0, 600, 0}, {"give", 0, 250, 250}}},
		{"pull down lowers, never raises", 100, []step{{"pull", 0, 40, 40}, {"pull", 0, 70, 40}, {"pull", 6 * time.Second, 0, 0}}},
		{"a lower limit caps the level", 100, []step{{"limit", 0, 30, 30}, {"limit", 0, 300, 30}, {"take", 6 * time.Second, 0, 60}}},
		{"time going backwards changes nothing", 60, []step{{"take", 10 * time.Second, 30, 30}, {"take", 0, 0, 30}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			assert.False(t, b.known())
			b.setLimit(t0, tc.limit)
			assert.True(t, b.known())
			for i, s := range tc.steps {
				now := at(s.at)
				switch s.op {
				case "take":
					b.take(now, s.n)
				case "give":
					b.give(now, s.n)
				case "pull":
					b.pullDown(now, s.n)
				case "limit":
					b.setLimit(now, s.n)
				}
				assert.InDelta(t, s.want, b.levelAt(now), 1e-9, "step %d", i)
			}
		})
	}
}

func TestBucketWaitFor(t *testing.T) {
	cases := []struct {
		name  string
		limit float64
		taken float64
		n     float64
		want  time.Duration
	}{
		{"available now", 60, 0, 60, 0},
		{"one a second", 60, 60, 1, time.Second},
		{"fraction of a second", 50, 50, 1, 1200 * time.Millisecond},
		{"from debt", 60, 120, 30, 90 * time.Second},
		{"more than the capacity waits for a full bucket", 6000, 6000, 10_000, time.Minute},
		{"rounds up to the nanosecond", 7, 7, 1, time.Minute/7 + 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			b.setLimit(bgtBucketEpoch, tc.limit)
			b.take(bgtBucketEpoch, tc.taken)
			d := b.waitFor(bgtBucketEpoch, tc.n)
			assert.Equal(t, tc.want, d)
			assert.Zero(t, b.waitFor(bgtBucketEpoch.Add(d), tc.n), "nothing left to wait after the wait")
			if d > 0 {
				assert.Positive(t, b.waitFor(bgtBucketEpoch.Add(d-time.Millisecond), tc.n), "still a wait a millisecond before")
			}
		})
	}
}
