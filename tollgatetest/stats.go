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
	// included), count_tokens and model listings included, although they do
	// not draw on the request bucket.
	OK int
	// RateLimited counts 429s sent by the rate limiter (not injected ones).
	RateLimited int
	// Faults counts the injected faults applied, by Fault.Kind.
	Faults map[string]int
	// Status counts responses by HTTP status code. Dropped connections have
	// no status and are not counted here.
	Status map[int]int
	// InputTokens is the prompt tokens the input limit counted for the 2xx
	// Messages and chat completion responses (count_tokens excluded),
	// counted when the headers are sent: on the Messages route
	// input_tokens + cache_creation_input_tokens, plus
	// cache_read_input_tokens for the models whose cache reads count
	// (Config.CacheReadsCountAsInput); on the OpenAI route every prompt
	// token, cached or not. Without prompt caching it is every prompt token.
	InputTokens int
	// OutputTokens is the output tokens generated, counted as they are: a
	// stream's delta by delta as they are written, a non-streaming reply's
	// chunk by chunk while it is generated, before its body is written (so
	// a reply whose body is cut still counts in full, and one whose request
	// ends while it is generated counts what it had).
	OutputTokens int
	// CacheCreationInputTokens is the prompt tokens written to the cache
	// (Anthropic cache_creation_input_tokens), counted with InputTokens.
	CacheCreationInputTokens int
	// CacheReadInputTokens is the prompt tokens read from the cache
	// (Anthropic cache_read_input_tokens, OpenAI cached_tokens), counted
	// with InputTokens.
	CacheReadInputTokens int
	// PromptTokens is every prompt token of the same responses, cached or
	// not: on the Messages route input + cache creation + cache read tokens,
	// on the OpenAI route prompt_tokens.
	PromptTokens int
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
	Start       time.Time // the second's first instant (Unix-second aligned)
	Requests    int
	OK          int
	RateLimited int
	// InputTokens, CacheCreationInputTokens, CacheReadInputTokens and
	// PromptTokens are as in Stats.
	InputTokens              int
	CacheCreationInputTokens int
	CacheReadInputTokens     int
	PromptTokens             int
	OutputTokens             int
	// Admitted counts the requests the rate limiter admitted in this
	// second (count_tokens excluded), and AdmittedInputTokens the input it
	// took for them: what InputTokens counts, but in the second the limit
	// counted it, whatever became of the request after. A share of the
	// limits over a window is these, not the counts of the responses sent
	// in it, which lag admission by the time a reply takes.
	Admitted            int
	AdmittedInputTokens int
}

// add adds sign times o's counts to s's.
func (s *Second) add(o Second, sign int) {
	s.Requests += sign * o.Requests
	s.OK += sign * o.OK
	s.RateLimited += sign * o.RateLimited
	s.InputTokens += sign * o.InputTokens
	s.CacheCreationInputTokens += sign * o.CacheCreationInputTokens
	s.CacheReadInputTokens += sign * o.CacheReadInputTokens
	s.PromptTokens += sign * o.PromptTokens
	s.OutputTokens += sign * o.OutputTokens
	s.Admitted += sign * o.Admitted
	s.AdmittedInputTokens += sign * o.AdmittedInputTokens
}

// Window sums the timeline seconds whose Start lies in [from, to): e.g.
// st.Window(t, t.Add(time.Minute)) is one minute's use, to compare with a
// per-minute limit. The result's Start is from.
func (s Stats) Window(from, to time.Time) Second {
	sum := Second{Start: from}
	for _, sec := range s.Timeline {
		if !sec.Start.Before(from) && sec.Start.Before(to) {
			sum.add(sec, 1)
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
	d.PromptTokens -= prev.PromptTokens
	d.Faults = diffMap(s.Faults, prev.Faults)
	d.Status = diffMap(s.Status, prev.Status)
	old := make(map[int64]Second, len(prev.Timeline))
	for _, sec := range prev.Timeline {
		old[sec.Start.Unix()] = sec
	}
	d.Timeline = nil
	for _, sec := range s.Timeline {
		sec.add(old[sec.Start.Unix()], -1)
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
