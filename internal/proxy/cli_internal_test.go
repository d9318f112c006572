package proxy

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestExposedWarning(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		warn bool
	}{{"127.0.0.1", false}, {"127.0.0.2", false}, {"::1", false}, {"0.0.0.0", true}, {"::", true}, {"192.0.2.7", true}} {
		w := exposedWarning(&net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 8787})
		if tc.warn {
			assert.Contains(t, w, "anyone who can reach it spends the API keys", tc.ip)
		} else {
			assert.Empty(t, w, tc.ip)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "1048576": 1 << 20, "32MiB": 32 << 20, "512 KiB": 512 << 10, "2GiB": 2 << 30, "100B": 100} {
		var b byteSize
		if assert.NoError(t, b.Set(in), in) {
			assert.Equal(t, want, int64(b), in)
		}
	}
	for _, in := range []string{"", "0", "-1", "32MB", "lots", "1.5MiB", "9999999GiB"} {
		var b byteSize
		assert.Error(t, b.Set(in), in)
	}
	b := byteSize(DefaultMaxBody)
	assert.Equal(t, "32MiB", b.String())
	b = 1000
	assert.Equal(t, "1000", b.String())
}
