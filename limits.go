package tollgate

// This file holds a Key's limits: what they are, where each came from, and
// the option that states them before any response has.

// Limits are rate limits per minute for one Key. A zero field is unknown:
// that dimension is not paced until a response header reports it.
type Limits struct {
	RequestsPerMinute     int
	InputTokensPerMinute  int
	OutputTokensPerMinute int
	// TokensPerMinute limits input and output tokens combined, as OpenAI
	// reports it. Anthropic's tokens-* headers only repeat the most
	// restrictive of its other limits and are not learned as a limit.
	TokensPerMinute int
}

func (l Limits) byDimension() [NumDimensions]int64 {
	return [NumDimensions]int64{
		Requests:     int64(l.RequestsPerMinute),
		Tokens:       int64(l.TokensPerMinute),
		InputTokens:  int64(l.InputTokensPerMinute),
		OutputTokens: int64(l.OutputTokensPerMinute),
	}
}

func limitsOf(v [NumDimensions]int64) Limits {
	return Limits{
		RequestsPerMinute:     int(v[Requests]),
		TokensPerMinute:       int(v[Tokens]),
		InputTokensPerMinute:  int(v[InputTokens]),
		OutputTokensPerMinute: int(v[OutputTokens]),
	}
}

// LimitSource says where an effective limit came from.
type LimitSource uint8

// The sources of a limit.
const (
	LimitUnknown     LimitSource = iota // no limit known: not paced
	LimitFromOption                     // WithLimits
	LimitFromHeaders                    // a response's *-limit header
)

func (s LimitSource) String() string {
	switch s {
	case LimitFromOption:
		return "option"
	case LimitFromHeaders:
		return "headers"
	}
	return "unknown"
}

// WithLimits sets the limits of every Key before any response has reported
// them, which also ends the cold start (one attempt at a time) at once. A
// limit reported by a response's *-limit header replaces the one set here
// for that Key and dimension. Zero fields leave a dimension to the headers;
// negative values count as zero.
func WithLimits(l Limits) Option {
	return func(c *config) {
		v := l.byDimension()
		for d := range v {
			v[d] = max(v[d], 0)
		}
		c.budget.limits = limitsOf(v)
	}
}
