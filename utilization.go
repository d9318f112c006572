package tollgate

import (
	"math"
	"time"
)

// DefaultUtilizationThreshold is the threshold WithUtilizationAlert uses
// when given zero or less.
const DefaultUtilizationThreshold = 0.8

// UtilizationAlert reports that the use of one limit over the last minute
// crossed the threshold given to WithUtilizationAlert, upwards (Above) or
// back down.
type UtilizationAlert struct {
	Key       Key
	Dimension Dimension
	// Used is what settled attempts consumed of the limit in the minute
	// before At.
	Used        int64
	Limit       int64
	Utilization float64 // Used / Limit
	Above       bool    // whether Utilization is at or above the threshold
	At          time.Time
}

// WithUtilizationAlert calls f when the use of any known limit of a Key over
// the last minute reaches threshold (a fraction of the limit; 0.8 when zero
// or less), and again when it falls back below. Use is the actual
// consumption of settled attempts in a sliding one-minute window (in whole
// seconds). Nothing runs in the background: use is evaluated when an
// attempt is admitted or settled, so a fall is reported at the next such
// event. f runs on a goroutine of tollgate's, with no lock held, one alert
// at a time and in order (breaker changes go through the same queue); a
// slow f delays later alerts, never a request. A nil f turns alerts off.
func WithUtilizationAlert(threshold float64, f func(UtilizationAlert)) Option {
	return func(c *config) {
		if threshold <= 0 {
			threshold = DefaultUtilizationThreshold
		}
		c.budget.alertThreshold, c.budget.onAlert = threshold, f
	}
}

// evaluateAlertsLocked queues an alert for every known limit whose use over
// the last minute crossed the threshold since the last evaluation.
func (p *pool) evaluateAlertsLocked(now time.Time) {
	b := &p.budget
	if b.cfg.onAlert == nil {
		return
	}
	used := b.window.sum(now)
	for d, limit := range b.limits {
		if limit <= 0 {
			continue
		}
		u := float64(used[d]) / float64(limit)
		if above := u >= b.cfg.alertThreshold; above != b.above[d] {
			b.above[d] = above
			b.alerts = append(b.alerts, UtilizationAlert{
				Key: p.key, Dimension: Dimension(d), Used: used[d], Limit: limit,
				Utilization: u, Above: above, At: now,
			})
		}
	}
}

// usageWindow sums consumption per dimension over the last minute, in
// one-second slots.
type usageWindow struct {
	slots [60]usageSlot
}

type usageSlot struct {
	second int64 // Unix second the slot counts
	used   [NumDimensions]int64
}

func (w *usageWindow) add(now time.Time, d int, n float64) {
	if n <= 0 {
		return
	}
	sec := now.Unix()
	s := &w.slots[sec%int64(len(w.slots))]
	if s.second != sec {
		*s = usageSlot{second: sec}
	}
	s.used[d] += int64(math.Round(n))
}

// sum returns the consumption in the minute up to now.
func (w *usageWindow) sum(now time.Time) [NumDimensions]int64 {
	var total [NumDimensions]int64
	sec := now.Unix()
	for i := range w.slots {
		s := &w.slots[i]
		if s.second > sec-int64(len(w.slots)) && s.second <= sec {
			for d, n := range s.used {
				total[d] += n
			}
		}
	}
	return total
}
