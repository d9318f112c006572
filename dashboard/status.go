package dashboard

import "time"

// Status is the data of the page, as GET …?format=json returns it.
type Status struct {
	Title           string      `json:"title"`
	Taken           time.Time   `json:"taken"`
	IntervalSeconds float64     `json:"interval_s"` // between samples; the page refreshes as often
	HistorySeconds  float64     `json:"history_s"`  // how far back History and RecentRateLimited go
	Keys            []KeyStatus `json:"keys"`       // by provider, family, account
}

// KeyStatus is one pool of limits: an account's model family at one
// provider, as one source (Transport) knows it.
type KeyStatus struct {
	// ID names the row: the source's index and Key.StoreName.
	ID       string `json:"id"`
	Source   int    `json:"source"` // the index of the source: 0 for New's, then WithSource's in order
	Provider string `json:"provider"`
	Family   string `json:"family"`
	// Account is tollgate's hash of the credential (Key.Account), never the
	// credential; empty for requests that carried none.
	Account string `json:"account"`
	Tier    string `json:"tier"`
	// ColdStart: no limit is known yet, attempts go one at a time.
	ColdStart bool `json:"cold_start"`
	// Fallback: the shared store failed; this process paces at its share.
	Fallback bool `json:"store_fallback"`
	InFlight int  `json:"in_flight"`
	// Waiting counts the attempts waiting for the budget and for the breaker.
	Waiting    int               `json:"waiting"`
	Output     OutputRule        `json:"output"`
	Dimensions []DimensionStatus `json:"dimensions"`
	Breaker    BreakerStatus     `json:"breaker"`
	Counters   Counters          `json:"counters"`
	// RecentRateLimited counts the 429s of the History window; Last429 is
	// when the sampler first saw the latest of them.
	RecentRateLimited int64      `json:"recent_429s"`
	Last429           *time.Time `json:"last_429,omitempty"`
	History           []Point    `json:"history"`
}

// OutputRule is how output tokens are counted against the output limit.
type OutputRule struct {
	// Rule is "count_as_produced" (output counts as it is produced;
	// max_tokens does not) or "reserve_max_tokens" (max_tokens is taken at
	// admission and the unused part given back at the end).
	Rule string `json:"rule"`
	// Source says where tollgate has the rule from: "provider" (its
	// documented rule), "option" or "detected" (what the responses showed).
	Source string `json:"source"`
	// ProducedEstimate is what an attempt reserves when output counts as
	// produced.
	ProducedEstimate float64 `json:"produced_estimate,omitempty"`
}

// DimensionStatus is one limit of a key.
type DimensionStatus struct {
	Name string `json:"name"` // requests, tokens, input-tokens, output-tokens
	// Limit per minute, and where it is from: "headers", "option", or
	// "headers (not paced)" for a limit the provider reports that the budget
	// does not pace by.
	Limit       int64  `json:"limit"`
	LimitSource string `json:"limit_source"`
	// Paced reports that the budget paces by this limit: Level, Reserved,
	// Used and Utilization are its bucket's.
	Paced bool `json:"paced"`
	// Level is what the budget's bucket holds now (below zero in debt);
	// Reserved what admitted attempts hold of it until they settle.
	Level    float64 `json:"level"`
	Reserved float64 `json:"reserved"`
	// Used is what settled attempts consumed in the last minute, and
	// Utilization Used/Limit.
	Used        int64   `json:"used"`
	Utilization float64 `json:"utilization"`
	// Remaining and Reset are what the latest response's headers said.
	Remaining *int64     `json:"remaining,omitempty"`
	Reset     *time.Time `json:"reset,omitempty"`
}

// BreakerStatus is a key's breaker.
type BreakerStatus struct {
	State          string     `json:"state"` // closed, open, half-open
	Reason         string     `json:"reason,omitempty"`
	OpenUntil      *time.Time `json:"open_until,omitempty"`
	OpenForSeconds float64    `json:"open_for_s,omitempty"`
	Trips          int        `json:"trips"` // openings since it was last closed
	Waiting        int        `json:"waiting"`
}

// Counters count what the server answered for a key.
type Counters struct {
	Attempts        int64 `json:"attempts"`
	RateLimited     int64 `json:"rate_limited"` // 429s
	Overloaded      int64 `json:"overloaded"`   // 529s
	ServerErrors    int64 `json:"server_errors"`
	TransportErrors int64 `json:"transport_errors"`
}

// Point is one sample of a key's history.
type Point struct {
	Time int64 `json:"t"` // Unix milliseconds
	// Utilization is, per known limit, its use over the minute before Time
	// as a fraction of the limit.
	Utilization map[string]float64 `json:"utilization"`
	RateLimited int64              `json:"rate_limited"` // 429s since the previous point
	Attempts    int64              `json:"attempts"`     // attempts since the previous point
}
