package jsonscan

import (
	"encoding/json"
	"math"
)

// ParseInt parses a non-negative JSON integer, or an integral float such as
// 12.0 or 1e3; ok is false for anything else (a negative, a fraction, a
// string, a number past int64).
func ParseInt(b []byte) (v int64, ok bool) {
	if len(b) == 0 {
		return 0, false
	}
	for i, c := range b {
		if c < '0' || c > '9' || i >= 18 {
			return parseIntegralFloat(b)
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

func parseIntegralFloat(b []byte) (int64, bool) {
	if len(b) > 64 || b[0] < '0' || b[0] > '9' {
		return 0, false
	}
	var f float64
	if json.Unmarshal(b, &f) != nil || f != math.Trunc(f) || f < 0 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}
