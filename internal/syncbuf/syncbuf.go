// Package syncbuf is a buffer for tests that capture what a program writes
// from several goroutines (its logs, its stdout) and read or wait on it
// meanwhile.
package syncbuf

import (
	"bytes"
	"regexp"
	"sync"
	"time"
)

// Buffer is a bytes.Buffer that several goroutines may write at once, as
// they may write os.Stdout or a log. The zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed at the next write; nil until asked for
}

// Write appends p and wakes those waiting for a write.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return n, err
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Written returns a channel that is closed at the next write.
func (b *Buffer) Written() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.written == nil {
		b.written = make(chan struct{})
	}
	return b.written
}

// Wait returns the first match of re in what was written, with its
// submatches (regexp.FindStringSubmatch), waiting for writes until timeout;
// nil when there is none by then.
func (b *Buffer) Wait(re *regexp.Regexp, timeout time.Duration) []string {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		written := b.Written() // before reading: a write in between wakes it
		if m := re.FindStringSubmatch(b.String()); m != nil {
			return m
		}
		select {
		case <-written:
		case <-deadline.C:
			return nil
		}
	}
}
