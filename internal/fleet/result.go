package fleet

import (
	"math"
	"slices"
	"time"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Result is what one client's run came to.
type Result struct {
	Client      string `json:"client"`
	Interrupted bool   `json:"interrupted"` // stopped by the caller's context, not the deadline
	// Elapsed runs from the start to the deadline (or the interruption).
	Elapsed time.Duration `json:"elapsed_ns"`

	OK     int `json:"ok_calls"`
	Failed int `json:"failed_calls"`
	CutOff int `json:"cut_off_calls"` // stopped by the end of the run; neither
	// FailedByKind counts the failed calls by Call.Kind.
	FailedByKind map[string]int `json:"failed_by_kind,omitempty"`

	// Attempts is the HTTP attempts the client sent, counted by the fleet.
	Attempts int `json:"attempts"`
	// RateLimited is the 429s the client drew: the server's count, or the
	// responses the fleet saw when there is no fake server.
	RateLimited int `json:"rate_limited"`
	// Source says where RateLimited and Used come from: "server" (the fake
	// API's counters) or "client" (responses and reported usage).
	Source string `json:"source"`
	// Used is what the server admitted and served.
	Used Usage `json:"used"`

	Limits Limits `json:"limits"`
	// Shares has one entry per limited dimension; Binding is the largest.
	Shares  []Share `json:"shares"`
	Binding Share   `json:"binding"`

	// RateLimitedPer100OK is 100·RateLimited/OK; 0 when no call succeeded.
	RateLimitedPer100OK float64       `json:"rate_limited_per_100_ok"`
	OKPerMinute         float64       `json:"ok_per_minute"`
	P50                 time.Duration `json:"p50_ns"` // latency of successful calls, nearest rank
	P95                 time.Duration `json:"p95_ns"`
	// OKPromptTokens is the mean prompt size of the successful calls. Every
	// client is offered the same prompts; one that fails calls fails the
	// large ones more (they need more of the bucket), so its successful calls
	// are smaller and more of them fit in the limit.
	OKPromptTokens float64 `json:"ok_mean_prompt_tokens"`
	// CacheReadShare is the share of the prompt tokens served that were
	// read from the prompt cache: Used.CacheReadInputTokens /
	// Used.PromptTokens; 0 when no prompt was served.
	CacheReadShare float64 `json:"cache_read_share"`

	// Groups has one entry per group of agents (Config.Groups), in the
	// order their first calls ended; none without groups.
	Groups []GroupResult `json:"groups,omitempty"`

	// Calls is every call, in the order they ended.
	Calls []Call `json:"-"`
}

// GroupResult is what one group of agents got out of a run.
type GroupResult struct {
	Name string `json:"name"`
	// Agents is how many of the group's agents made a call.
	Agents int `json:"agents"`
	OK     int `json:"ok_calls"`
	Failed int `json:"failed_calls"`
	// P50, P95 and Max are the latencies of the group's successful calls.
	P50 time.Duration `json:"p50_ns"`
	P95 time.Duration `json:"p95_ns"`
	Max time.Duration `json:"max_ns"`
	// InputTokens and OutputTokens are what its successful calls reported
	// using (input as the input limit counts it); InputShare and
	// OutputShare are their shares of what all the run's successful calls
	// reported.
	InputTokens  int     `json:"input_tokens"`
	OutputTokens int     `json:"output_tokens"`
	InputShare   float64 `json:"input_share"`
	OutputShare  float64 `json:"output_share"`
}

// Usage is what was consumed in each dimension, and how the prompts were
// served.
type Usage struct {
	Requests int `json:"requests"`
	// InputTokens is what the input-tokens limit counted: input + cache
	// creation tokens (and cache reads for the few models whose reads
	// count, on the server's side).
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
	// CacheReadInputTokens and CacheCreationInputTokens are the prompt
	// tokens read from and written to the cache; PromptTokens is every
	// prompt token, cached or not.
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	PromptTokens             int `json:"prompt_tokens"`
}

// The dimensions of a Share.
const (
	DimRequests     = "requests"
	DimInputTokens  = "input_tokens"
	DimOutputTokens = "output_tokens"
	DimTokens       = "tokens" // input + output, against a combined limit
)

// Share is how much of one limit was used.
type Share struct {
	Dimension string  `json:"dimension"`
	Limit     int     `json:"limit_per_minute"`
	Used      int     `json:"used"`
	Allowance float64 `json:"allowance"` // Limit + Limit·elapsed/1 min
	Share     float64 `json:"share"`     // Used / Allowance
}

// Shares returns the share of each limited dimension of l that u used in
// elapsed, the buckets having started full: used / (L + L·elapsed/1 min).
func Shares(u Usage, l Limits, elapsed time.Duration) []Share {
	var out []Share
	add := func(dim string, limit, used int) {
		if limit <= 0 {
			return
		}
		allowance := float64(limit) + float64(limit)*elapsed.Minutes()
		out = append(out, Share{Dimension: dim, Limit: limit, Used: used, Allowance: allowance, Share: float64(used) / allowance})
	}
	add(DimRequests, l.RequestsPerMinute, u.Requests)
	add(DimInputTokens, l.InputTokensPerMinute, u.InputTokens)
	add(DimOutputTokens, l.OutputTokensPerMinute, u.OutputTokens)
	add(DimTokens, l.TokensPerMinute, u.InputTokens+u.OutputTokens)
	return out
}

// Binding returns the share with the largest value (the first of equals),
// or the zero Share when there is none.
func Binding(shares []Share) Share {
	var b Share
	for i, s := range shares {
		if i == 0 || s.Share > b.Share {
			b = s
		}
	}
	return b
}

// Percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method: the smallest value such that at least p % of the
// values are at or below it, i.e. sorted[ceil(p/100·n) − 1]. Zero when ds is
// empty. ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Summarize fills in a Result's derived figures (Shares, Binding, the
// rates and percentiles) from its counts, Calls, Limits and Elapsed.
func (r *Result) Summarize() {
	r.OK, r.Failed, r.CutOff = 0, 0, 0
	r.FailedByKind = map[string]int{}
	var lat []time.Duration
	prompt := 0
	for _, c := range r.Calls {
		switch {
		case c.OK:
			r.OK++
			lat = append(lat, c.Latency)
			prompt += c.PromptTokens
		case c.Kind == KindCutOff:
			r.CutOff++
		default:
			r.Failed++
			r.FailedByKind[c.Kind]++
		}
	}
	r.Shares = Shares(r.Used, r.Limits, r.Elapsed)
	r.Binding = Binding(r.Shares)
	r.RateLimitedPer100OK, r.OKPromptTokens = 0, 0
	if r.OK > 0 {
		r.OKPromptTokens = float64(prompt) / float64(r.OK)
		r.RateLimitedPer100OK = 100 * float64(r.RateLimited) / float64(r.OK)
	}
	r.OKPerMinute = 0
	if r.Elapsed > 0 {
		r.OKPerMinute = float64(r.OK) / r.Elapsed.Minutes()
	}
	r.P50 = Percentile(lat, 50)
	r.P95 = Percentile(lat, 95)
	r.CacheReadShare = 0
	if r.Used.PromptTokens > 0 {
		r.CacheReadShare = float64(r.Used.CacheReadInputTokens) / float64(r.Used.PromptTokens)
	}
	r.Groups = groupResults(r.Calls)
}

// groupResults sums calls up by group; nil when none has a group.
func groupResults(calls []Call) []GroupResult {
	var out []GroupResult
	index := map[string]int{}
	agents := map[string]map[int]bool{}
	lat := map[string][]time.Duration{}
	var in, outTok int
	for _, c := range calls {
		if c.OK {
			in += c.InputTokens
			outTok += c.OutputTokens
		}
		if c.Group == "" || c.Kind == KindCutOff {
			continue
		}
		i, ok := index[c.Group]
		if !ok {
			i = len(out)
			index[c.Group] = i
			out = append(out, GroupResult{Name: c.Group})
			agents[c.Group] = map[int]bool{}
		}
		g := &out[i]
		agents[c.Group][c.Agent] = true
		if !c.OK {
			g.Failed++
			continue
		}
		g.OK++
		g.InputTokens += c.InputTokens
		g.OutputTokens += c.OutputTokens
		lat[c.Group] = append(lat[c.Group], c.Latency)
	}
	for i := range out {
		g := &out[i]
		g.Agents = len(agents[g.Name])
		g.P50, g.P95, g.Max = Percentile(lat[g.Name], 50), Percentile(lat[g.Name], 95), Percentile(lat[g.Name], 100)
		if in > 0 {
			g.InputShare = float64(g.InputTokens) / float64(in)
		}
		if outTok > 0 {
			g.OutputShare = float64(g.OutputTokens) / float64(outTok)
		}
	}
	return out
}

func (r *run) result(cfg Config, end time.Time, interrupted bool) Result {
	r.mu.Lock()
	calls := slices.Clone(r.calls)
	r.mu.Unlock()
	res := Result{
		Client:      r.name,
		Interrupted: interrupted,
		Elapsed:     end.Sub(r.start),
		Attempts:    int(r.base.attempts.Load()),
		Limits:      cfg.Limits,
		Calls:       calls,
	}
	if r.srv != nil {
		st := r.srv.Stats()
		res.Source = "server"
		res.RateLimited = st.RateLimited
		res.Used = serverUsage(st)
	} else {
		res.Source = "client"
		res.RateLimited = int(r.base.rateLimited.Load())
		res.Used = r.clientUsage()
	}
	res.Summarize()
	return res
}

// serverUsage is what a fake server admitted: requests that got a 2xx (a
// limiter 429 takes nothing), the input tokens of those as the input limit
// counted them, and the output tokens actually sent (a reservation's unused
// part is given back); and how the prompts were served.
func serverUsage(st tollgatetest.Stats) Usage {
	return Usage{Requests: st.OK, InputTokens: st.InputTokens, OutputTokens: st.OutputTokens,
		CacheReadInputTokens: st.CacheReadInputTokens, CacheCreationInputTokens: st.CacheCreationInputTokens,
		PromptTokens: st.PromptTokens}
}

// clientUsage is what the successful calls reported, when there is no fake
// server to ask: input tokens as most models count them (input + cache
// creation).
func (r *run) clientUsage() Usage {
	in, read := int(r.inTok.Load()), int(r.readTok.Load())
	return Usage{Requests: int(r.ok.Load()), InputTokens: in, OutputTokens: int(r.outTok.Load()),
		CacheReadInputTokens: read, CacheCreationInputTokens: int(r.createTok.Load()), PromptTokens: in + read}
}

// Progress is the live state of one run.
type Progress struct {
	Client      string
	Elapsed     time.Duration
	OK, Failed  int
	RateLimited int // 429s drawn so far
	// Binding is the dimension with the largest share so far, PerMinute its
	// use over the last minute (for a run younger than a minute, its use so
	// far, which may exceed Limit: the server's buckets start full) and Limit
	// its limit.
	Binding   string
	PerMinute float64
	Limit     int
	Share     float64 // the share of Binding so far
	// CacheShare is the share of the prompt tokens so far that were read
	// from the cache.
	CacheShare float64
	Status     string // the client's own (Target.Status), e.g. a breaker's state
	Done       bool   // the run is over: this is the last report
}

func progressOf(runs []*run, now time.Time, done bool) []Progress {
	out := make([]Progress, len(runs))
	for i, r := range runs {
		elapsed := now.Sub(r.start)
		p := Progress{Client: r.name, Elapsed: elapsed, OK: int(r.ok.Load()), Failed: int(r.failed.Load()), Done: done}
		var used, recent Usage
		window := min(elapsed, time.Minute)
		if r.srv != nil {
			st := r.srv.Stats()
			p.RateLimited = st.RateLimited
			used = serverUsage(st)
			// The timeline has whole seconds: take those that overlap the window.
			from := now.Add(-window).Truncate(time.Second)
			w := st.Window(from, now.Add(time.Second))
			recent = Usage{Requests: w.OK, InputTokens: w.InputTokens, OutputTokens: w.OutputTokens}
			window = now.Sub(from)
		} else {
			p.RateLimited = int(r.base.rateLimited.Load())
			used = r.clientUsage()
			recent = used
			window = elapsed
		}
		if used.PromptTokens > 0 {
			p.CacheShare = float64(used.CacheReadInputTokens) / float64(used.PromptTokens)
		}
		b := Binding(Shares(used, r.cfg.Limits, elapsed))
		p.Binding, p.Limit, p.Share = b.Dimension, b.Limit, b.Share
		if window > 0 {
			var n int
			switch b.Dimension {
			case DimRequests:
				n = recent.Requests
			case DimInputTokens:
				n = recent.InputTokens
			case DimOutputTokens:
				n = recent.OutputTokens
			case DimTokens:
				n = recent.InputTokens + recent.OutputTokens
			}
			p.PerMinute = float64(n)
		}
		if r.target.Status != nil {
			p.Status = r.target.Status()
		}
		out[i] = p
	}
	return out
}
