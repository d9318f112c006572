// Package jsonscan reads JSON as it streams past and captures the values
// found at a fixed table of paths, keeping a bounded amount of state
// whatever the document holds.
//
// A Scanner is fed bytes in any cut (Feed), told where the input ends
// (End), and then lists what it captured (Captures). It walks into a
// container only where the table has a path through it; everything else —
// message content, tool inputs, arrays of anything — is skipped by counting
// brackets outside strings, so no document can grow the stack or the heap
// and most of a large body is passed over quickly. It is not a validator:
// inside a skipped container anything bracket-balanced goes; but it never
// misreads a valid document.
package jsonscan

import (
	"fmt"
	"strings"
)

// Kind says what a path's value must be to be captured.
type Kind uint8

const (
	// Scalar captures a string, number, true, false or null; an object or
	// array at the path is walked into (when the table goes deeper) or
	// skipped.
	Scalar Kind = iota
	// Whole captures any value, an object or array included, as its raw
	// bytes.
	Whole
)

// A Path names one value to capture: object keys joined by dots, with "[]"
// for every element of an array, e.g. "usage", "message.id",
// "choices[].finish_reason".
type Path struct {
	Path  string
	Field int // the caller's name for the value, reported in Capture.Field
	Kind  Kind
}

// A Table is a compiled set of paths, shared by any number of Scanners.
type Table struct {
	nodes  []node // nodes[0] is the document
	keyMax int    // longest key on any path: longer keys match nothing
	depth  int    // deepest container on any path
}

// node is one step of a path: an object member or an array element.
type node struct {
	field    int  // captured here; -1: nothing
	kind     Kind // of the capture
	elem     int  // child for any array element; -1: none
	children map[string]int
}

// maxDepth bounds the containers a table may go through.
const maxDepth = 8

// Compile builds the table of paths. It panics on a malformed path or two
// captures at one path: tables are written once, in code.
func Compile(paths []Path) *Table {
	t := &Table{nodes: []node{{field: -1, elem: -1}}}
	for _, p := range paths {
		at, depth := 0, 0
		for _, step := range splitPath(p.Path) {
			if step == "" {
				panic(fmt.Sprintf("jsonscan: malformed path %q", p.Path))
			}
			depth++
			if step == "[]" {
				if t.nodes[at].elem < 0 {
					t.nodes[at].elem = t.add()
				}
				at = t.nodes[at].elem
				continue
			}
			t.keyMax = max(t.keyMax, len(step))
			if t.nodes[at].children == nil {
				t.nodes[at].children = make(map[string]int)
			}
			next, ok := t.nodes[at].children[step]
			if !ok {
				next = t.add()
				t.nodes[at].children[step] = next
			}
			at = next
		}
		if depth == 0 || depth > maxDepth {
			panic(fmt.Sprintf("jsonscan: path %q has %d steps, want 1 to %d", p.Path, depth, maxDepth))
		}
		if t.nodes[at].field >= 0 {
			panic(fmt.Sprintf("jsonscan: two captures at %q", p.Path))
		}
		t.nodes[at].field, t.nodes[at].kind = p.Field, p.Kind
		t.depth = max(t.depth, depth)
	}
	return t
}

func (t *Table) add() int {
	t.nodes = append(t.nodes, node{field: -1, elem: -1})
	return len(t.nodes) - 1
}

// splitPath splits "a.b[].c" into "a", "b", "[]", "c"; a path that starts
// with "[]" is about a document that is an array.
func splitPath(p string) []string {
	var steps []string
	for part := range strings.SplitSeq(p, ".") {
		arrays := 0
		for strings.HasSuffix(part, "[]") {
			part = strings.TrimSuffix(part, "[]")
			arrays++
		}
		if part != "" || arrays == 0 || len(steps) > 0 {
			steps = append(steps, part)
		}
		for range arrays {
			steps = append(steps, "[]")
		}
	}
	return steps
}

// child returns the node for key under n, or -1.
func (t *Table) child(n int, key []byte) int {
	if n < 0 || len(key) > t.keyMax {
		return -1
	}
	c, ok := t.nodes[n].children[string(key)]
	if !ok {
		return -1
	}
	return c
}

// walks reports whether a container at node n can hold a capture deeper.
func (t *Table) walks(n int) bool {
	return n >= 0 && (t.nodes[n].elem >= 0 || len(t.nodes[n].children) > 0)
}
