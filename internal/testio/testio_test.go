package testio

import (
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChunkReaderReturnsPiecesThenEOFAndFailsAfterClose(t *testing.T) {
	r := &ChunkReader{Data: []byte("abcdefg"), Next: func() int { return 3 }}
	buf := make([]byte, 10)
	var pieces []string
	for {
		n, err := r.Read(buf)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		pieces = append(pieces, string(buf[:n]))
	}
	assert.Equal(t, []string{"abc", "def", "g"}, pieces)
	require.NoError(t, r.Close())
	assert.Equal(t, 1, r.Closed)
	_, err := r.Read(buf)
	assert.Error(t, err)
}
