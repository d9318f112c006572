package jsonscan

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseInt(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1234", 1234, true},
		{"12.0", 12, true},
		{"1e3", 1000, true},
		{"999999999999999999", 999999999999999999, true},
		{"12.5", 0, false},
		{"-3", 0, false},
		{`"12"`, 0, false},
		{"", 0, false},
		{"1e30", 0, false},
		{"true", 0, false},
	} {
		v, ok := ParseInt([]byte(tc.in))
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.want, v, tc.in)
	}
}
