package syncbuf

import (
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Goroutines write at once (go test -race checks it); Wait sees a line
// written after it began waiting, and gives up at its timeout.
func TestBufferWritesAndWaits(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { fmt.Fprintf(&b, "line %d\n", i) })
	}
	wg.Wait()
	for i := range 8 {
		assert.Contains(t, b.String(), fmt.Sprintf("line %d\n", i))
	}

	got := make(chan []string, 1)
	go func() { got <- b.Wait(regexp.MustCompile(`listening on (\S+)`), 5*time.Second) }()
	fmt.Fprintln(&b, "listening on 127.0.0.1:8787")
	assert.Equal(t, []string{"listening on 127.0.0.1:8787", "127.0.0.1:8787"}, <-got)

	assert.Nil(t, b.Wait(regexp.MustCompile(`never`), 10*time.Millisecond))
}
