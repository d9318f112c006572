package dashboard

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"html"
	"regexp"
	"strings"
)

// statusPage is the page; {{TITLE}} is replaced by the escaped title.
//
//go:embed status.html
var statusPage string

// pageCSP allows the page's own inline script and style, by their hashes,
// and requests to its own origin: nothing else loads or runs.
var pageCSP = func() string {
	hash := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(statusPage)
		sum := sha256.Sum256([]byte(m[1]))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; connect-src 'self'; img-src 'self' data:; " +
		"script-src " + hash(`(?s)<script>(.*?)</script>`) + "; " +
		"style-src " + hash(`(?s)<style>(.*?)</style>`) + "; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// page returns the page with d's title.
func (d *Dashboard) page() []byte {
	return []byte(strings.ReplaceAll(statusPage, "{{TITLE}}", html.EscapeString(d.cfg.title)))
}
