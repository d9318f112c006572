// Package dashboard serves a live view of what tollgate Transports know —
// per account and model family: the limits, the bucket levels, the callers
// waiting, the breaker, how output is counted, recent 429s and a chart of use
// over the last minutes — as an HTML page that refreshes itself and as JSON,
// from one http.Handler that any Go service mounts on its own mux. Metrics
// gives the same service a Prometheus endpoint for tollgate's metrics.
//
//	rt := tollgate.New(nil)
//	dash := dashboard.New(rt)
//	defer dash.Close()
//	mux.Handle("/status", dash)      // the page; /status?format=json is the data
//	mux.Handle("/status.json", dash) // the data again, under a name of its own
//
// The page is self-contained (inline CSS, JavaScript and SVG; no external
// assets) and polls its own URL with ?format=json. Nothing on it or in the
// JSON can reveal an API key: accounts are tollgate's hashes of the
// credential (Key.Account), and the dashboard never sees a request.
//
// History (the chart and the recent 429s) comes from a sampler that reads
// every source's Snapshot once per interval on a goroutine of its own, from
// New until Close; a request for the page or the data also takes a fresh
// sample when the last one is older than the interval.
package dashboard

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-go/tollgate"
)

// Defaults.
const (
	DefaultInterval = 2 * time.Second  // between samples, and between the page's refreshes
	DefaultHistory  = 10 * time.Minute // how far back the chart and the recent 429s go
	// MaxKeys bounds the keys whose history is kept: requests that name ever
	// new models cannot grow the dashboard's memory without end.
	MaxKeys = 256
)

// A Source is what the dashboard reads: a *tollgate.Transport or a
// *tollgate.State.
type Source interface {
	Snapshot() tollgate.Snapshot
}

// Option configures a Dashboard.
type Option func(*config)

type config struct {
	sources  []Source
	interval time.Duration
	history  time.Duration
	title    string
	now      func() time.Time
}

// WithSource adds another Transport (or State) to the dashboard: a service
// with one Transport per provider shows them all on one page.
func WithSource(src Source) Option {
	return func(c *config) {
		if src != nil {
			c.sources = append(c.sources, src)
		}
	}
}

// WithInterval sets how often the sampler reads the sources and the page
// refreshes (default 2 s). Values of zero or below keep the default.
func WithInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.interval = d
		}
	}
}

// WithHistory sets how far back the chart and the count of recent 429s go
// (default 10 minutes). Values below the interval keep the default.
func WithHistory(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.history = d
		}
	}
}

// WithTitle sets the page's title (default "tollgate").
func WithTitle(title string) Option {
	return func(c *config) {
		if title != "" {
			c.title = title
		}
	}
}

// Dashboard is the http.Handler of the status page and its data. It is safe
// for concurrent use.
type Dashboard struct {
	cfg config

	mu      sync.Mutex
	last    time.Time // when the last sample was taken
	keys    map[rowID]*history
	stop    chan struct{}
	stopped chan struct{}
	closed  bool
}

// rowID names one row: a Key of one source.
type rowID struct {
	source int
	key    tollgate.Key
}

// history is what the sampler kept of one row.
type history struct {
	samples      []sample // oldest first, within the history window
	lastCounters tollgate.Counters
	last429      time.Time // when a sample first saw the latest 429s
	seen         time.Time // the last sample whose snapshot had the key
}

// sample is one reading of a row.
type sample struct {
	at          time.Time
	utilization [tollgate.NumDimensions]float64 // Used/Limit over the minute before at; -1 where the limit is unknown
	rateLimited int64                           // 429s since the previous sample
	attempts    int64                           // attempts since the previous sample
}

// New returns a Dashboard of src and the sources WithSource adds, and starts
// its sampler; Close stops it. A nil src is left out.
func New(src Source, opts ...Option) *Dashboard {
	cfg := config{interval: DefaultInterval, history: DefaultHistory, title: "tollgate", now: time.Now}
	if src != nil {
		cfg.sources = append(cfg.sources, src)
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.history < cfg.interval {
		cfg.history = max(DefaultHistory, cfg.interval)
	}
	d := &Dashboard{cfg: cfg, keys: make(map[rowID]*history), stop: make(chan struct{}), stopped: make(chan struct{})}
	go d.sampler()
	return d
}

// Close stops the sampler and waits until it has returned. The handler keeps
// serving the sources' current state, and the history taken so far, after
// Close. Calling it again does nothing.
func (d *Dashboard) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	close(d.stop)
	d.mu.Unlock()
	<-d.stopped
}

func (d *Dashboard) sampler() {
	defer close(d.stopped)
	t := time.NewTicker(d.cfg.interval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.sampleIfDue()
		}
	}
}

// snapshots reads every source.
func (d *Dashboard) snapshots() []tollgate.Snapshot {
	snaps := make([]tollgate.Snapshot, len(d.cfg.sources))
	for i, s := range d.cfg.sources {
		snaps[i] = s.Snapshot()
	}
	return snaps
}

// sampleIfDue takes a sample unless one was taken less than an interval ago
// (a tick and a request may come together), and returns the snapshots it
// read, or fresh ones.
func (d *Dashboard) sampleIfDue() []tollgate.Snapshot {
	snaps := d.snapshots() // outside the lock: Snapshot takes the pools' locks
	now := d.cfg.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	// Half an interval of slack, so a ticker that fires a little early
	// still samples.
	if !d.last.IsZero() && now.Sub(d.last) < d.cfg.interval/2 {
		return snaps
	}
	d.last = now
	for i, snap := range snaps {
		for _, ks := range snap.Keys {
			d.recordLocked(rowID{i, ks.Key}, ks, now)
		}
	}
	d.pruneLocked(now)
	return snaps
}

func (d *Dashboard) recordLocked(id rowID, ks tollgate.KeySnapshot, now time.Time) {
	h, ok := d.keys[id]
	if !ok {
		if len(d.keys) >= MaxKeys {
			return
		}
		// A key's first sample counts what happened before it too: its
		// 429s happened within the last interval or so.
		h = &history{}
		d.keys[id] = h
	}
	s := sample{at: now}
	for dim, db := range ks.Budget.Dimensions {
		s.utilization[dim] = -1
		if db.Limit > 0 {
			s.utilization[dim] = db.Utilization
		}
	}
	c := ks.Counters
	s.rateLimited = max(0, c.RateLimited-h.lastCounters.RateLimited)
	s.attempts = max(0, c.Attempts-h.lastCounters.Attempts)
	if s.rateLimited > 0 {
		h.last429 = now
	}
	h.lastCounters = c
	h.seen = now
	h.samples = append(h.samples, s)
}

// pruneLocked drops samples older than the history window, and keys no
// sample has seen within it.
func (d *Dashboard) pruneLocked(now time.Time) {
	from := now.Add(-d.cfg.history)
	for id, h := range d.keys {
		i := 0
		for i < len(h.samples) && h.samples[i].at.Before(from) {
			i++
		}
		h.samples = slices.Delete(h.samples, 0, i)
		if h.seen.Before(from) {
			delete(d.keys, id)
		}
	}
}

// ServeHTTP serves the page, or its data as JSON when the path ends in
// ".json" or the query says format=json. Only GET and HEAD are allowed.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if strings.HasSuffix(r.URL.Path, ".json") || r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", " ")
		_ = enc.Encode(d.Status())
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", pageCSP)
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(d.page())
}

// Status returns what the page shows: a fresh snapshot of every source, with
// the history the sampler kept.
func (d *Dashboard) Status() Status {
	snaps := d.sampleIfDue()
	now := d.cfg.now()
	st := Status{
		Title:           d.cfg.title,
		Taken:           now,
		IntervalSeconds: d.cfg.interval.Seconds(),
		HistorySeconds:  d.cfg.history.Seconds(),
		Keys:            []KeyStatus{},
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, snap := range snaps {
		for _, ks := range snap.Keys {
			st.Keys = append(st.Keys, d.keyStatusLocked(i, ks, now))
		}
	}
	slices.SortStableFunc(st.Keys, func(a, b KeyStatus) int {
		return cmp.Or(cmp.Compare(a.Provider, b.Provider), cmp.Compare(a.Family, b.Family),
			cmp.Compare(a.Account, b.Account), cmp.Compare(a.Source, b.Source))
	})
	return st
}

func (d *Dashboard) keyStatusLocked(source int, ks tollgate.KeySnapshot, now time.Time) KeyStatus {
	k, b, br := ks.Key, ks.Budget, ks.Breaker
	out := KeyStatus{
		ID:        keyID(source, k),
		Source:    source,
		Provider:  string(k.Provider),
		Family:    k.Family,
		Account:   k.Account,
		Tier:      b.Tier,
		ColdStart: b.ColdStart,
		Fallback:  b.Fallback,
		InFlight:  b.InFlight,
		Waiting:   b.Waiting + br.Waiting,
		Output: OutputRule{
			Rule:             b.Output.String(),
			Source:           b.OutputSource,
			ProducedEstimate: b.ProducedEstimate,
		},
		Breaker: BreakerStatus{
			State:   string(br.State),
			Reason:  br.Reason,
			Trips:   br.ConsecutiveTrips,
			Waiting: br.Waiting,
		},
		Counters: Counters{
			Attempts:        ks.Counters.Attempts,
			RateLimited:     ks.Counters.RateLimited,
			Overloaded:      ks.Counters.Overloaded,
			ServerErrors:    ks.Counters.ServerErrors,
			TransportErrors: ks.Counters.TransportErrors,
		},
		History: []Point{},
	}
	if br.State == tollgate.BreakerOpen && !br.OpenUntil.IsZero() {
		out.Breaker.OpenUntil = new(br.OpenUntil)
		out.Breaker.OpenForSeconds = max(0, br.OpenUntil.Sub(now).Seconds())
	}
	for dim := range tollgate.NumDimensions {
		db, reading := b.Dimensions[dim], ks.Headers.Limits[dim]
		if db.Limit <= 0 && !reading.Known() {
			continue
		}
		ds := DimensionStatus{
			Name:        tollgate.Dimension(dim).String(),
			Limit:       db.Limit,
			LimitSource: db.Source.String(),
			Paced:       db.Limit > 0,
			Level:       db.Level,
			Reserved:    db.Reserved,
			Used:        db.Used,
			Utilization: db.Utilization,
		}
		if reading.HasRemaining {
			ds.Remaining = new(reading.Remaining)
		}
		if !reading.Reset.IsZero() {
			ds.Reset = new(reading.Reset)
		}
		if db.Limit <= 0 && reading.HasLimit {
			// A limit the headers report but the budget does not pace by
			// (Anthropic's tokens-*, a view of the others).
			ds.Limit, ds.LimitSource = reading.Limit, "headers (not paced)"
		}
		out.Dimensions = append(out.Dimensions, ds)
	}
	if h := d.keys[rowID{source, k}]; h != nil {
		for _, s := range h.samples {
			p := Point{Time: s.at.UnixMilli(), RateLimited: s.rateLimited, Attempts: s.attempts, Utilization: map[string]float64{}}
			for dim, u := range s.utilization {
				if u >= 0 {
					p.Utilization[tollgate.Dimension(dim).String()] = u
				}
			}
			out.History = append(out.History, p)
			out.RecentRateLimited += s.rateLimited
		}
		if !h.last429.IsZero() {
			out.Last429 = new(h.last429)
		}
	}
	return out
}

// keyID is a row's id on the page: stable, and free of anything but the
// hash of the key.
func keyID(source int, k tollgate.Key) string {
	return strconv.Itoa(source) + ":" + k.StoreName()
}
