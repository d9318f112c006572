package tollgate

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestTierOf(t *testing.T) {
	cases := []struct {
		provider Provider
		limits   Limits
		want     string
	}{
		{ProviderAnthropic, Limits{}, TierUnknown},
		{ProviderOpenAI, Limits{}, TierUnknown},
		{ProviderAnthropic, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, "Tier 1"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 450_000, OutputTokensPerMinute: 90_000}, "Tier 2"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 2_000, InputTokensPerMinute: 800_000, OutputTokensPerMinute: 160_000}, "Tier 3"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 4_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}, "Tier 4"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 1_000, InputTokensPerMinute: 2_000_000, OutputTokensPerMinute: 400_000}, "Start"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 5_000, InputTokensPerMinute: 5_000_000, OutputTokensPerMinute: 1_000_000}, "Build"},
		{ProviderAnthropic, Limits{RequestsPerMinute: 10_000, InputTokensPerMinute: 10_000_000, OutputTokensPerMinute: 2_000_000}, "Scale"},
		// The seed article's numbers match no table.
		{ProviderAnthropic, Limits{RequestsPerMinute: 500, TokensPerMinute: 10_000}, TierCustom},
		{ProviderAnthropic, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000}, TierCustom},
		{ProviderAnthropic, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_001}, TierCustom},
		// A combined limit the table does not list does not spoil a match.
		{ProviderAnthropic, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000, TokensPerMinute: 8_000}, "Tier 1"},
		// Another provider's limits equal to a row name no tier of that row's provider.
		{ProviderOpenAI, Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, TierCustom},
		{ProviderOpenAI, Limits{RequestsPerMinute: 500, TokensPerMinute: 30_000}, TierCustom},
		{"other", Limits{RequestsPerMinute: 50, InputTokensPerMinute: 30_000, OutputTokensPerMinute: 8_000}, TierCustom},
	}
	for _, tc := range cases {
		t.Run(string(tc.provider)+"/"+tc.want, func(t *testing.T) {
			assert.Equal(t, tc.want, tierOf(tc.provider, tc.limits))
		})
	}
}

func TestTierTableRowsAreDistinct(t *testing.T) {
	for _, dl := range dialects {
		seen := map[Limits]string{}
		for _, row := range dl.tiers {
			if other, dup := seen[row.limits]; dup {
				t.Errorf("%s: %s and %s have the same limits", dl.provider, other, row.name)
			}
			seen[row.limits] = row.name
		}
	}
}
