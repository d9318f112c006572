package tollgate

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
	provider Provider
	name     string
	limits   Limits
}

// tiers are the published Anthropic tables for Claude Sonnet, older (Tier
// 1–4) and newer (Start, Build, Scale). They only name a tier for
// BudgetSnapshot; the limits the budget enforces always come from WithLimits
// or the response headers. Other model families and other providers publish
// other numbers: add rows here.
var tiers = []tier{
	{ProviderAnthropic, "Tier 1", Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}},
	{ProviderAnthropic, "Tier 2", Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 450_000, OutputTokensPerMinute: 90_000}},
	{ProviderAnthropic, "Tier 3", Limits{RequestsPerMinute: 2_000, InputTokensPerMinute: 800_000, OutputTokensPerMinute: 160_000}},
	{ProviderAnthropic, "Tier 4", Limits{RequestsPerMinute: 4_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}},
	{ProviderAnthropic, "Start", Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}},
	{ProviderAnthropic, "Build", Limits{RequestsPerMinute: 5_000, InputTokensPerMinute: 5_000_000, OutputTokensPerMinute: 1_000_000}},
	{ProviderAnthropic, "Scale", Limits{RequestsPerMinute: 10_000, InputTokensPerMinute: 10_000_000, OutputTokensPerMinute: 2_000_000}},
}

// tierOf names the tier whose every listed limit equals the corresponding
// limit in l: TierUnknown when l is all zero, TierCustom when no row of the
// provider's matches.
func tierOf(p Provider, l Limits) string {
	if l == (Limits{}) {
		return TierUnknown
	}
	have := l.byDimension()
	for _, t := range tiers {
		if t.provider != p {
			continue
		}
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
