package tollgate

import (
	"container/list"
	"time"

	"github.com/tollgate-go/tollgate/internal/reqscan"
)

// This file is what a pool knows of the provider's prompt cache, to predict
// how much of a prompt the server will read from it — cache reads do not
// count against Anthropic's input limit — so that an attempt is not charged
// for them. The model follows Anthropic's documented rules: a request's
// cache_control breakpoints (at most 4) each mark a prefix (tools, system,
// messages, up to and including the block); at each breakpoint the server
// looks back up to 20 blocks for the longest prefix it has cached; a
// request writes the prefixes of its breakpoints that were not cached, when
// they are at least the model's minimum length, for the time to live the
// breakpoint asks (5 minutes or an hour); a read refreshes it. The pool
// remembers prefixes by a hash, never their text, and checks each
// prediction against the usage the response reports: a prefix predicted
// read that was not is forgotten, one read that was not predicted is
// learned.

// cacheLookback is how many blocks before a breakpoint the server looks
// for a cached prefix.
const cacheLookback = 20

// maxCachedPrefixes bounds the prefixes a pool remembers; the oldest are
// forgotten first.
const maxCachedPrefixes = 4096

// promptCache is a pool's record of the prefixes it has seen cached.
type promptCache struct {
	entries map[uint64]*list.Element // prefix → element of order, whose value is *cachedPrefix
	order   list.List                // least recently used first
	// writing counts, by prefix, the attempts in flight expected to write
	// it (reservation.writes).
	writing map[uint64]int
}

// sending notes that an attempt expected to write prefixes is in flight
// (n = 1), or no longer is (n = -1).
func (c *promptCache) sending(prefixes []uint64, n int) {
	if len(prefixes) > 0 && c.writing == nil {
		c.writing = make(map[uint64]int)
	}
	for _, k := range prefixes {
		if c.writing[k] += n; c.writing[k] <= 0 {
			delete(c.writing, k)
		}
	}
}

type cachedPrefix struct {
	prefix uint64
	until  time.Time
}

// predict returns the bytes of the longest prefix of blocks the server is
// expected to read from its cache at now.
func (c *promptCache) predict(now time.Time, blocks []reqscan.Block) int64 {
	return readable(blocks, func(prefix uint64) bool { return c.valid(now, prefix) })
}

// readable returns the bytes of the longest prefix of blocks the server
// reads from a cache that holds the prefixes for which held is true: at each
// breakpoint, the first held prefix looking back up to cacheLookback blocks
// (zero when none).
func readable(blocks []reqscan.Block, held func(prefix uint64) bool) (bytes int64) {
	for b, blk := range blocks {
		if !blk.Breakpoint {
			continue
		}
		for i := b; i >= 0 && i >= b-cacheLookback; i-- {
			if held(blocks[i].Prefix) {
				bytes = max(bytes, blocks[i].Bytes)
				break
			}
		}
	}
	return bytes
}

// writes returns the prefixes of blocks that a request is expected to
// write to the cache: its breakpoints past the predicted read (cachedBytes)
// and at least minTokens long at bytesPerToken.
func writes(blocks []reqscan.Block, cachedBytes int64, bytesPerToken float64, minTokens int64) []uint64 {
	var w []uint64
	for _, blk := range blocks {
		if blk.Breakpoint && blk.TTL > 0 && blk.Bytes > cachedBytes && float64(blk.Bytes)/bytesPerToken >= float64(minTokens) {
			w = append(w, blk.Prefix)
		}
	}
	return w
}

// valid reports whether prefix is cached at now.
func (c *promptCache) valid(now time.Time, prefix uint64) bool {
	e, ok := c.entries[prefix]
	return ok && now.Before(e.Value.(*cachedPrefix).until)
}

// learn records what a response said of the cache: read tokens read from
// it and created tokens written to it, for a prompt of blocks whose
// prefixes are at bytesPerToken bytes a token. It returns the bytes of the
// prefix the server read (zero when none).
func (c *promptCache) learn(now time.Time, blocks []reqscan.Block, read, created int64, bytesPerToken float64, minTokens int64) int64 {
	readAt := -1
	if read > 0 {
		readAt = closestBoundary(blocks, float64(read)*bytesPerToken)
	}
	var readBytes int64
	if readAt >= 0 {
		readBytes = blocks[readAt].Bytes
		c.put(now, blocks[readAt].Prefix, ttlAt(blocks, readAt)) // a read refreshes it
	}
	// What the server did not read, it did not have: forget what said otherwise.
	for _, blk := range blocks {
		if blk.Bytes > readBytes {
			c.forget(blk.Prefix)
		}
	}
	if created <= 0 {
		return readBytes
	}
	for _, blk := range blocks {
		if blk.Breakpoint && blk.TTL > 0 && blk.Bytes > readBytes && float64(blk.Bytes)/bytesPerToken >= float64(minTokens) {
			c.put(now, blk.Prefix, blk.TTL)
		}
	}
	return readBytes
}

// closestBoundary returns the index of the block, among those the server
// can read up to (breakpoints and the blocks they look back over), whose
// prefix's bytes are closest to bytes.
func closestBoundary(blocks []reqscan.Block, bytes float64) int {
	best, bestDiff := -1, 0.0
	for b, blk := range blocks {
		if !blk.Breakpoint {
			continue
		}
		for i := b; i >= 0 && i >= b-cacheLookback; i-- {
			diff := float64(blocks[i].Bytes) - bytes
			if diff < 0 {
				diff = -diff
			}
			if best < 0 || diff < bestDiff {
				best, bestDiff = i, diff
			}
		}
	}
	return best
}

// ttlAt is the time to live of the first breakpoint at or after block i.
func ttlAt(blocks []reqscan.Block, i int) time.Duration {
	for _, blk := range blocks[i:] {
		if blk.Breakpoint && blk.TTL > 0 {
			return blk.TTL
		}
	}
	return 5 * time.Minute
}

func (c *promptCache) put(now time.Time, prefix uint64, ttl time.Duration) {
	if c.entries == nil {
		c.entries = make(map[uint64]*list.Element)
	}
	if e, ok := c.entries[prefix]; ok {
		e.Value.(*cachedPrefix).until = now.Add(ttl)
		c.order.MoveToBack(e)
		return
	}
	c.entries[prefix] = c.order.PushBack(&cachedPrefix{prefix: prefix, until: now.Add(ttl)})
	for c.order.Len() > maxCachedPrefixes {
		oldest := c.order.Front()
		delete(c.entries, oldest.Value.(*cachedPrefix).prefix)
		c.order.Remove(oldest)
	}
}

func (c *promptCache) forget(prefix uint64) {
	if e, ok := c.entries[prefix]; ok {
		delete(c.entries, prefix)
		c.order.Remove(e)
	}
}

// size returns how many prefixes are remembered.
func (c *promptCache) size() int { return c.order.Len() }
