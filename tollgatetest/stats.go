package tollgatetest

import (
	"maps"
	"sort"
	"time"
)

// TimelineSeconds is how many of the most recent one-second buckets
// Stats.Timeline keeps (an hour).
const TimelineSeconds = 3600

// Stats is a copy of a server's counters, as returned by Server.Stats.
type Stats struct {
	// Requests counts every request that reached the handler, whatever
	// became of it.
	Requests int
	// OK counts responses with a 2xx status (a stream that later failed
	// included).
	OK int
	// RateLimited counts 429s sent by the rate limiter (not injected ones).
	RateLimited int
	// Faults counts the injected faults applied, by Fault.Kind.
	Faults map[string]int
	// Status counts responses by HTTP status code. Dropped connections have
	// no status and are not counted here.
	Status map[int]int
	// InputTokens is the prompt tokens of the 2xx Messages and chat
	// completion responses (count_tokens requests excluded), counted when
	// the headers are sent.
	InputTokens int
	// OutputTokens is the generated tokens actually sent: a non-streaming
	// reply's tokens when its body is written in full, a stream's tokens
	// delta by delta as they are written.
	OutputTokens int
	// CacheCreationInputTokens and CacheReadInputTokens are always 0: the
	// server does not simulate prompt caching (it reports 0 for both).
	CacheCreationInputTokens int
	CacheReadInputTokens     int
	// InFlight is the number of requests being handled now.
	InFlight int
	// PeakConcurrency is the largest InFlight seen (since the last
	// ResetStats, which sets it to the InFlight of that moment).
	PeakConcurrency int
	// Timeline has one entry per second of Config.Now time in which
	// something was counted, oldest first, at most TimelineSeconds of them.
	Timeline []Second
}

// Second is the activity of one second of the timeline. An event belongs to
// the second its Config.Now time falls in: a request to the second it
// arrived, a status to the second it was written, tokens to the second they
// were counted.
type Second struct {
	Start        time.Time // the second's first instant (Unix-second aligned)
	Requests     int
	OK           int
	RateLimited  int
	InputTokens  int
	OutputTokens int
}

func (s *Second) add(o Second) {
	s.Requests += o.Requests
	s.OK += o.OK
	s.RateLimited += o.RateLimited
	s.InputTokens += o.InputTokens
	s.OutputTokens += o.OutputTokens
}

// Window sums the timeline seconds whose Start lies in [from, to): e.g.
// st.Window(t, t.Add(time.Minute)) is one minute's use, to compare with a
// per-minute limit. The result's Start is from.
func (s Stats) Window(from, to time.Time) Second {
	sum := Second{Start: from}
	for _, sec := range s.Timeline {
		if !sec.Start.Before(from) && sec.Start.Before(to) {
			sum.add(sec)
		}
	}
	return sum
}

// Since returns the change from an earlier copy prev to s: counters,
// map entries and timeline seconds are differences (entries that did not
// change are left out); InFlight and PeakConcurrency are s's.
func (s Stats) Since(prev Stats) Stats {
	d := s
	d.Requests -= prev.Requests
	d.OK -= prev.OK
	d.RateLimited -= prev.RateLimited
	d.InputTokens -= prev.InputTokens
	d.OutputTokens -= prev.OutputTokens
	d.CacheCreationInputTokens -= prev.CacheCreationInputTokens
	d.CacheReadInputTokens -= prev.CacheReadInputTokens
	d.Faults = diffMap(s.Faults, prev.Faults)
	d.Status = diffMap(s.Status, prev.Status)
	old := make(map[int64]Second, len(prev.Timeline))
	for _, sec := range prev.Timeline {
		old[sec.Start.Unix()] = sec
	}
	d.Timeline = nil
	for _, sec := range s.Timeline {
		p := old[sec.Start.Unix()]
		sec.Requests -= p.Requests
		sec.OK -= p.OK
		sec.RateLimited -= p.RateLimited
		sec.InputTokens -= p.InputTokens
		sec.OutputTokens -= p.OutputTokens
		if sec != (Second{Start: sec.Start}) {
			d.Timeline = append(d.Timeline, sec)
		}
	}
	return d
}

// TotalFaults is the sum of Faults.
func (s Stats) TotalFaults() int {
	n := 0
	for _, v := range s.Faults {
		n += v
	}
	return n
}

func diffMap[K comparable](cur, prev map[K]int) map[K]int {
	d := make(map[K]int)
	for k, v := range cur {
		if v != prev[k] {
			d[k] = v - prev[k]
		}
	}
	for k, v := range prev {
		if _, ok := cur[k]; !ok && v != 0 {
			d[k] = -v
		}
	}
	return d
}

// counters is the live form of Stats, guarded by Server.mu.
type counters struct {
	st       Stats
	timeline map[int64]*Second
}

func newCounters() counters {
	return counters{
		st:       Stats{Faults: map[string]int{}, Status: map[int]int{}},
		timeline: map[int64]*Second{},
	}
}

// second returns the timeline bucket of t, trimming the oldest ones.
func (c *counters) second(t time.Time) *Second {
	k := t.Unix()
	if sec, ok := c.timeline[k]; ok {
		return sec
	}
	sec := &Second{Start: time.Unix(k, 0).UTC()}
	c.timeline[k] = sec
	if len(c.timeline) > TimelineSeconds {
		oldest := k
		for kk := range c.timeline {
			oldest = min(oldest, kk)
		}
		delete(c.timeline, oldest)
	}
	return sec
}

func (c *counters) snapshot() Stats {
	st := c.st
	st.Faults = maps.Clone(c.st.Faults)
	st.Status = maps.Clone(c.st.Status)
	st.Timeline = make([]Second, 0, len(c.timeline))
	for _, sec := range c.timeline {
		st.Timeline = append(st.Timeline, *sec)
	}
	sort.Slice(st.Timeline, func(i, j int) bool { return st.Timeline[i].Start.Before(st.Timeline[j].Start) })
	return st
}
