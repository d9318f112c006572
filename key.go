package tollgate

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"regexp"
	"strings"
)

// Key identifies one pool of rate limits: the account, the provider and the
// model family. Anthropic pools limits per model family (all Sonnet 4.x
// share one pool), so every model of a family shares one Key.
type Key struct {
	Provider Provider
	Family   string // see ModelFamily; empty when the request names no model
	// Account tells API keys apart without revealing them: the first 16 hex
	// digits of the SHA-256 of the request's credential (x-api-key, api-key
	// or Authorization), empty when it carries none.
	Account string
}

// String returns provider/family; the account is left out.
func (k Key) String() string {
	if k.Family == "" {
		return string(k.Provider)
	}
	return string(k.Provider) + "/" + k.Family
}

// StoreName is the name k's budget and pause have in a Store:
// account:provider:family, with "-" for an empty account.
func (k Key) StoreName() string {
	return cmp.Or(k.Account, "-") + ":" + string(k.Provider) + ":" + k.Family
}

// credentialHeaders are the request headers that carry an API key, in the
// order they are looked for.
var credentialHeaders = []string{"X-Api-Key", "Api-Key", "Authorization"}

// accountOf returns the Account of a request with headers h.
func accountOf(h http.Header) string {
	for _, name := range credentialHeaders {
		if v := h.Get(name); v != "" {
			sum := sha256.Sum256([]byte(v))
			return hex.EncodeToString(sum[:8])
		}
	}
	return ""
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
