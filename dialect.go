package tollgate

import (
	"net/http"
	"strings"
)

// This file is what tollgate knows of each provider, in one table: which
// headers carry which limit, which readings are limits of their own, how
// remaining values are rounded, which tokens the input limit counts, which
// error codes mean the money ran out, which endpoints draw on which pool,
// and the published tiers. A new provider, or a changed rule, is a row here
// rather than an if in the layers.

// Provider names the API dialect of a call.
type Provider string

// The providers tollgate knows the headers and bodies of.
const (
	ProviderAnthropic Provider = "anthropic"
	ProviderOpenAI    Provider = "openai"
)

// A dialect is one provider's row.
type dialect struct {
	provider Provider
	// headers names the limit, remaining and reset header of each
	// dimension the provider reports.
	headers [NumDimensions]headerNames
	// learn marks the dimensions whose *-limit headers are limits to pace by
	// and whose *-remaining headers levels are pulled down to.
	learn [NumDimensions]bool
	// rounding is the unit *-remaining values are rounded to.
	rounding [NumDimensions]float64
	// cacheReads reports whether cache reads count against the input limit;
	// cacheReadModels names the models, by a part of their name, that count
	// them where the provider's other models do not.
	cacheReads      bool
	cacheReadModels []string
	// minCachedTokens is the shortest prefix the prompt cache keeps, by a
	// part of the model's name ("" for the rest).
	minCachedTokens []modelValue
	// output is how the output limit counts an attempt unless the server
	// shows otherwise; detectOutput says the headers can show it (an output
	// limit of its own, reported at the start of a response).
	output       OutputAccounting
	detectOutput bool
	// spendCapCodes are the error codes with which a 429 says the money,
	// not the rate, has run out: waiting minutes cannot help.
	spendCapCodes []string
	// tiers are the published rate-limit tables, to name a tier in
	// Snapshot; pacing always uses the limits the headers report.
	tiers []tier
}

// headerNames are one dimension's canonical header keys.
type headerNames struct{ limit, remaining, reset string }

var dialects = []*dialect{
	{
		provider: ProviderAnthropic,
		headers: headerRow(func(d Dimension, field string) string {
			return "anthropic-ratelimit-" + d.String() + "-" + field
		}, Requests, Tokens, InputTokens, OutputTokens),
		// tokens-* is the most restrictive of the other token limits, a
		// view of them rather than a bucket of its own.
		learn: [NumDimensions]bool{Requests: true, InputTokens: true, OutputTokens: true},
		// "rounded to the nearest thousand" (some servers round down).
		rounding:      [NumDimensions]float64{Tokens: 1000, InputTokens: 1000, OutputTokens: 1000},
		spendCapCodes: []string{"enforced_spend_limit_reached"}, // error.details.error_code
		// "For most Claude models, only uncached input tokens count toward
		// your ITPM rate limits"; Haiku 3.5 counts cache reads too.
		cacheReadModels: []string{"3-5-haiku", "haiku-3-5"},
		minCachedTokens: []modelValue{{"haiku", 2048}, {"", 1024}},
		// Today's docs: output is "evaluated in real time as output tokens
		// are produced"; max_tokens does not factor in.
		output:       CountAsProduced,
		detectOutput: true,
		// Claude Sonnet, older (Tier 1–4) and newer (Start, Build, Scale).
		tiers: []tier{
			{"Tier 1", Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}},
			{"Tier 2", Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 450_000, OutputTokensPerMinute: 90_000}},
			{"Tier 3", Limits{RequestsPerMinute: 2_000, InputTokensPerMinute: 800_000, OutputTokensPerMinute: 160_000}},
			{"Tier 4", Limits{RequestsPerMinute: 4_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}},
			{"Start", Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}},
			{"Build", Limits{RequestsPerMinute: 5_000, InputTokensPerMinute: 5_000_000, OutputTokensPerMinute: 1_000_000}},
			{"Scale", Limits{RequestsPerMinute: 10_000, InputTokensPerMinute: 10_000_000, OutputTokensPerMinute: 2_000_000}},
		},
	},
	{
		provider: ProviderOpenAI,
		headers: headerRow(func(d Dimension, field string) string {
			return "x-ratelimit-" + field + "-" + d.String()
		}, Requests, Tokens),
		learn:         [NumDimensions]bool{Requests: true, Tokens: true},
		cacheReads:    true,                           // "caching does not affect rate limits"
		spendCapCodes: []string{"insufficient_quota"}, // error.code
		// "calculated as the maximum of max_tokens and the estimated number
		// of tokens based on the character count of your request"
		output: ReserveMaxTokens,
	},
}

// A modelValue is a value for the models whose name contains a part.
type modelValue struct {
	part  string
	value int64
}

// countsCacheReads reports whether the input limit of model counts cache
// reads.
func (d *dialect) countsCacheReads(model string) bool {
	if d.cacheReads {
		return true
	}
	m := strings.ToLower(model)
	for _, part := range d.cacheReadModels {
		if strings.Contains(m, part) {
			return true
		}
	}
	return false
}

// minCached returns the shortest prefix, in tokens, model's prompt cache
// keeps.
func (d *dialect) minCached(model string) int64 {
	m := strings.ToLower(model)
	for _, mv := range d.minCachedTokens {
		if strings.Contains(m, mv.part) {
			return mv.value
		}
	}
	return 0
}

// otherDialect is used for a provider not in the table: every reported
// limit is learned and every input token counts.
var otherDialect = &dialect{learn: [NumDimensions]bool{true, true, true, true}, cacheReads: true, output: ReserveMaxTokens}

func headerRow(name func(d Dimension, field string) string, dims ...Dimension) (row [NumDimensions]headerNames) {
	for _, d := range dims {
		row[d] = headerNames{
			http.CanonicalHeaderKey(name(d, "limit")),
			http.CanonicalHeaderKey(name(d, "remaining")),
			http.CanonicalHeaderKey(name(d, "reset")),
		}
	}
	return row
}

// dialectOf returns p's row.
func dialectOf(p Provider) *dialect {
	for _, d := range dialects {
		if d.provider == p {
			return d
		}
	}
	return otherDialect
}

// isSpendCap reports whether a 429's error says the spend cap is reached,
// in any provider's words.
func isSpendCap(e *APIError) bool {
	if e == nil || e.Code == "" {
		return false
	}
	for _, d := range dialects {
		for _, code := range d.spendCapCodes {
			if e.Code == code {
				return true
			}
		}
	}
	return false
}

// An endpoint is a route of an API, by a part of its path.
type endpoint struct {
	path      string // the end of the path
	prefix    bool   // paths below it match too (…/batches/{id}/results)
	provider  Provider
	operation string // the GenAI operation name; "" for others
	// pool is the pool of limits the endpoint draws on: "" for its model's,
	// else a pool of its own by that name; unpaced says the messages limits
	// do not apply to it at all.
	pool    string
	unpaced bool
}

// endpoints are matched in order: the first that matches wins.
var endpoints = []endpoint{
	// count_tokens has a requests-per-minute limit of its own and costs no
	// tokens.
	{path: "/messages/count_tokens", provider: ProviderAnthropic, operation: "count_tokens", pool: "count_tokens"},
	// Message Batches have limits of their own (queued requests), not the
	// messages limits.
	{path: "/messages/batches", prefix: true, provider: ProviderAnthropic, pool: "batches", unpaced: true},
	{path: "/messages", provider: ProviderAnthropic, operation: "chat"},
	{path: "/models", prefix: true, pool: "models", unpaced: true},
	{path: "/files", prefix: true, pool: "files", unpaced: true},
	{path: "/chat/completions", provider: ProviderOpenAI, operation: "chat"},
	{path: "/responses", provider: ProviderOpenAI, operation: "chat"},
	{path: "/embeddings", provider: ProviderOpenAI, operation: "embeddings"},
	{path: "/completions", provider: ProviderOpenAI},
}

// matches reports whether a path (without a trailing slash) is e's.
func (e *endpoint) matches(path string) bool {
	return strings.HasSuffix(path, e.path) || e.prefix && strings.Contains(path, e.path+"/")
}

// classify returns the provider and the endpoint a request's URL and
// headers tell: its path's endpoint, else an anthropic-version header, else
// the host ("anthropic" in it means Anthropic, anything else OpenAI). The
// endpoint is nil for a path the table does not know.
func classify(req *http.Request) (Provider, *endpoint) {
	var path, host string
	if req.URL != nil {
		path = strings.TrimRight(req.URL.Path, "/")
		host = req.URL.Host
	}
	if host == "" {
		host = req.Host
	}
	provider := Provider("")
	var ep *endpoint
	for i := range endpoints {
		// OpenAI's Assistants API also has …/threads/{id}/messages.
		if e := &endpoints[i]; e.matches(path) && !strings.Contains(path, "/threads/") {
			provider, ep = e.provider, e
			break
		}
	}
	if req.Header.Get("anthropic-version") != "" {
		provider = ProviderAnthropic
	}
	if provider == "" {
		provider = ProviderOpenAI
		if strings.Contains(strings.ToLower(host), "anthropic") {
			provider = ProviderAnthropic
		}
	}
	return provider, ep
}

// The tier names BudgetSnapshot.Tier takes besides the names in the tables.
const (
	// TierUnknown: no limit is known yet for the Key.
	TierUnknown = "unknown"
	// TierCustom: limits are known but match no published tier.
	TierCustom = "custom"
)

// A tier is one row of a provider's published rate-limit tables. Only the
// dimensions a row sets (non-zero) are compared.
type tier struct {
	name   string
	limits Limits
}

// tierOf names the tier whose every listed limit equals the corresponding
// limit in l: TierUnknown when l is all zero, TierCustom when no row of the
// provider's matches.
func tierOf(p Provider, l Limits) string {
	if l == (Limits{}) {
		return TierUnknown
	}
	have := l.byDimension()
	for _, t := range dialectOf(p).tiers {
		match := true
		for d, want := range t.limits.byDimension() {
			if want != 0 && have[d] != want {
				match = false
				break
			}
		}
		if match {
			return t.name
		}
	}
	return TierCustom
}
