package peers

import (
	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/internal/fleet"
)

// withLimits is tollgate.WithLimits for the fleet's limits.
func withLimits(l fleet.Limits) tollgate.Option {
	return tollgate.WithLimits(tollgate.Limits{
		RequestsPerMinute:     l.RequestsPerMinute,
		InputTokensPerMinute:  l.InputTokensPerMinute,
		OutputTokensPerMinute: l.OutputTokensPerMinute,
		TokensPerMinute:       l.TokensPerMinute,
	})
}
