// Package testio has readers for tests of code that reads bodies: bodies
// that arrive in pieces of chosen sizes and count their closes.
package testio

import (
	"errors"
	"io"
)

// ChunkReader returns Data in pieces whose sizes Next chooses (at least one
// byte each), then io.EOF. Closed counts the calls to Close; a Read after
// one fails.
type ChunkReader struct {
	Data   []byte
	Next   func() int
	Closed int
}

// Read returns the next piece of Data.
func (r *ChunkReader) Read(p []byte) (int, error) {
	if r.Closed > 0 {
		return 0, errors.New("read after close")
	}
	if len(r.Data) == 0 {
		return 0, io.EOF
	}
	n := min(max(r.Next(), 1), len(p), len(r.Data))
	copy(p, r.Data[:n])
	r.Data = r.Data[n:]
	return n, nil
}

// Close counts the call.
func (r *ChunkReader) Close() error { r.Closed++; return nil }
