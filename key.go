package tollgate

import (
	"regexp"
	"strings"
)

// Provider names the API dialect of a call.
type Provider string

// The providers tollgate knows the headers and bodies of.
const (
	ProviderAnthropic Provider = "anthropic"
	ProviderOpenAI    Provider = "openai"
)

// Key identifies one pool of rate limits: the provider and the model family.
// Anthropic pools limits per model family (all Sonnet 4.x share one pool), so
// every model of a family shares one Key.
type Key struct {
	Provider Provider
	Family   string // see ModelFamily; empty when the request names no model
}

func (k Key) String() string {
	if k.Family == "" {
		return string(k.Provider)
	}
	return string(k.Provider) + "/" + k.Family
}

var (
	// a trailing snapshot date: -20250929, -2024-08-06, or -latest
	dateSuffix = regexp.MustCompile(`-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$`)
	// claude-<name>-<major>-<minor>: the newer naming, pooled per major version
	claudeMinor = regexp.MustCompile(`^(claude-[a-z]+-\d+)-\d+$`)
)

// ModelFamily returns the rate-limit pool a model belongs to: the model name
// without its snapshot date, and for Claude models named
// claude-<name>-<major>-<minor> without the minor version
// ("claude-sonnet-4-5-20250929" → "claude-sonnet-4"). Other names are kept
// as they are apart from the date. Use WithModelFamily where an account's
// pools are cut differently.
func ModelFamily(provider Provider, model string) string {
	m := strings.ToLower(strings.TrimSpace(model))
	m = dateSuffix.ReplaceAllString(m, "")
	if provider == ProviderAnthropic {
		if g := claudeMinor.FindStringSubmatch(m); g != nil {
			return g[1]
		}
	}
	return m
}
