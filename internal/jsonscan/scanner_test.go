package jsonscan

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

const (
	fName = iota
	fWhole
	fItem
	fDeep
)

var testTable = Compile([]Path{
	{Path: "name", Field: fName},
	{Path: "a.whole", Field: fWhole, Kind: Whole},
	{Path: "items[].v", Field: fItem},
	{Path: "x[][].y.z", Field: fDeep},
})

// scan feeds doc in pieces of n bytes and renders what was captured.
func scan(doc string, n int) (got []string, complete, partial bool) {
	s := New(testTable)
	for i := 0; i < len(doc); i += n {
		s.Feed([]byte(doc[i:min(i+n, len(doc))]))
	}
	s.End()
	for _, c := range s.Captures() {
		got = append(got, fmt.Sprintf("%d@%d=%s", c.Field, c.Elem, c.Raw))
	}
	return got, s.Complete(), s.Partial()
}

func TestScanner(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
		complete  bool
	}{
		{"scalars and a whole object", `{"name":"n\"1","a":{"whole":{"k":[1,{"x":"}"}]},"name":2},"z":null}`,
			[]string{`0@-1="n\"1"`, `1@-1={"k":[1,{"x":"}"}]}`}, true},
		{"a scalar path holding an object is not captured", `{"name":{"name":"no"}}`, nil, true},
		{"array elements", `{"items":[{"v":1},{"w":2},{"v":"three"}]}`, []string{`2@0=1`, `2@2="three"`}, true},
		{"deep paths", `{"x":[[{"y":{"z":true}}],[1,{"y":{"z":false}}]]}`, []string{`3@0=true`, `3@1=false`}, true},
		{"unknown keys are skipped", `{"other":{"name":"no"},"name":"yes"}`, []string{`0@-1="yes"`}, true},
		{"keys longer than any path", `{"` + strings.Repeat("n", 100) + `":"no","name":"yes"}`, []string{`0@-1="yes"`}, true},
		{"trailing garbage", `{"name":"a"} x`, []string{`0@-1="a"`}, false},
		{"truncated", `{"name":"a","items":[{"v":`, []string{`0@-1="a"`}, false},
		{"mismatched brackets", `{"name":"a"]`, []string{`0@-1="a"`}, false},
		{"top-level scalar", `12`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []int{1, 3, len(tc.doc)} {
				got, complete, _ := scan(tc.doc, n)
				assert.Equal(t, tc.want, got, "pieces of %d", n)
				assert.Equal(t, tc.complete, complete, "pieces of %d", n)
			}
		})
	}
}

func TestScannerBounds(t *testing.T) {
	big := `{"name":"` + strings.Repeat("x", MaxCapture) + `","items":[{"v":1}]}`
	got, complete, partial := scan(big, 4096)
	assert.Equal(t, []string{`2@0=1`}, got, "a value over MaxCapture is dropped, the rest kept")
	assert.True(t, complete)
	assert.True(t, partial)

	many := `{"items":[` + strings.Repeat(`{"v":1},`, maxCaptures+10) + `{"v":2}]}`
	got, _, partial = scan(many, 4096)
	assert.Len(t, got, maxCaptures)
	assert.True(t, partial)
}

func TestCompileRejectsBadTables(t *testing.T) {
	assert.Panics(t, func() { Compile([]Path{{Path: "a..b"}}) })
	assert.Panics(t, func() { Compile([]Path{{Path: "a"}, {Path: "a"}}) })
	assert.Panics(t, func() { Compile([]Path{{Path: strings.Repeat("a.", maxDepth) + "a"}}) })
}
