package redisstore

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A reply of the wrong shape is an error, never a panic.
func TestMalformedReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply any
		n     int
	}{
		{"nil", nil, 5},
		{"not an array", "OK", 5},
		{"too short", []any{"1", "2"}, 5},
		{"not strings", []any{int64(1), "0", "0", "0", "0"}, 5},
	} {
		_, err := parse(tc.reply, tc.n)
		assert.Error(t, err, tc.name)
	}

	r, err := parse([]any{"x", "-5", "nan", "1e400", "0"}, 5)
	assert.NoError(t, err)
	r.float(0)
	assert.ErrorContains(t, r.err, "element 0")
	for _, i := range []int{1, 2} {
		r.err = nil
		r.duration(i)
		assert.Error(t, r.err, "duration %q", r.strings[i])
	}
	r.err = nil
	assert.Equal(t, int64(1<<63-1), int64(r.duration(3)), "a wait beyond Duration's range saturates")
}
