package reqscan

import (
	"bytes"
	"hash/maphash"
	"time"
)

// This file reads the prompt the way a provider's prompt cache does
// (Anthropic's: tools, then system, then messages, whatever the order of
// the keys in the body), block by block, with the cache_control breakpoints
// the request sets. Each block is known by a hash of its content — never
// its text — with the cache_control marker left out, since a marker that
// moves from turn to turn does not change what is cached.

// A Block is one block of the prompt in cache order.
type Block struct {
	// Prefix is a hash of the prompt up to and including this block.
	Prefix uint64
	// Bytes is the prompt bytes up to and including this block.
	Bytes int64
	// Breakpoint says the block carries cache_control; TTL is the time to
	// live it asks for (5 minutes unless "ttl":"1h"), zero for a ttl this
	// package does not know.
	Breakpoint bool
	TTL        time.Duration
}

// MaxBreakpoints is the most cache_control breakpoints a request may set;
// a request with more gets no Blocks (the provider refuses it).
const MaxBreakpoints = 4

// maxBlocks bounds the blocks kept; a prompt of more gets no Blocks.
const maxBlocks = 4096

// The sections of the prompt, in cache order.
const (
	sectionTools = iota
	sectionSystem
	sectionMessages
	numSections
)

// A promptBlock is one block as the body walk finds it, before it is put
// in cache order.
type promptBlock struct {
	section    int
	digest     uint64
	bytes      int64
	breakpoint bool
	ttl        time.Duration
}

// hashSeed is this process's seed for block hashes: predictions are made
// and checked within one process.
var hashSeed = maphash.MakeSeed()

// blockHash hashes one block's content.
type blockHash struct {
	h    maphash.Hash
	used bool
}

func (b *blockHash) reset() {
	if !b.used {
		b.h.SetSeed(hashSeed)
		b.used = true
	}
	b.h.Reset()
}

// cacheWalk collects the blocks of the prompt as the body is walked.
type cacheWalk struct {
	on     bool // the body has a tools, system or messages section
	blocks []promptBlock
	marks  int
	over   bool // more blocks than maxBlocks
	// refused: a breakpoint the provider refuses (an unknown ttl, or on a
	// block that cannot be cached).
	refused bool
	hash    blockHash
}

// add records one block.
func (w *cacheWalk) add(b promptBlock) {
	w.on = true
	if b.breakpoint {
		w.marks++
	}
	if len(w.blocks) >= maxBlocks {
		w.over = true
		return
	}
	w.blocks = append(w.blocks, b)
}

// ordered returns the blocks in cache order, chained: nil when the prompt
// sets no breakpoint, too many, or one the provider refuses (also a 1-hour
// breakpoint after a 5-minute one), or has too many blocks. A request the
// provider refuses is predicted nothing from the cache.
func (w *cacheWalk) ordered() []Block {
	if !w.on || w.marks == 0 || w.marks > MaxBreakpoints || w.over || w.refused {
		return nil
	}
	out := make([]Block, 0, len(w.blocks))
	var prefix uint64
	var total int64
	shortTTL := false
	for section := range numSections {
		for _, b := range w.blocks {
			if b.section != section {
				continue
			}
			if b.breakpoint {
				if shortTTL && b.ttl > 5*time.Minute {
					return nil
				}
				shortTTL = shortTTL || b.ttl <= 5*time.Minute
			}
			prefix = mix(prefix + b.digest*0x9E3779B97F4A7C15)
			total += b.bytes
			out = append(out, Block{Prefix: prefix, Bytes: total, Breakpoint: b.breakpoint, TTL: b.ttl})
		}
	}
	return out
}

// mix is splitmix64's finalizer.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// stringBlock records a string (a system prompt or a message's content
// given as one string) as a block; a string carries no breakpoint.
func (p *parser) stringBlock(section int, role, raw []byte, n int64) {
	h := &p.cache.hash
	h.reset()
	_, _ = h.h.Write(role)
	_, _ = h.h.Write(raw)
	p.cache.add(promptBlock{section: section, digest: h.h.Sum64(), bytes: n})
}

// cacheBlock walks one block object of a prompt section (a tool, a system
// block, a message's content block), counting its prompt text as block
// does, and records it with its breakpoint.
func (p *parser) cacheBlock(section int, role []byte, depth int) {
	start, prompt := p.i, p.prompt
	var marker []byte // the cache_control value's bytes
	var spans [][2]int
	p.i++ // '{'
	var typ []byte
	for first := true; !p.bad && p.next(&first, '}'); {
		keyStart := p.i
		k, ok := p.key()
		if !ok {
			return
		}
		if string(k) == "cache_control" {
			p.ws()
			at := p.i
			p.skip()
			marker = p.b[at:p.i]
			continue
		}
		typ = p.member(k, typ, depth+1)
		spans = append(spans, [2]int{keyStart, p.i})
	}
	p.countImage(typ)
	if p.bad {
		return
	}
	h := &p.cache.hash
	h.reset()
	_, _ = h.h.Write(role)
	if len(spans) == 0 {
		_, _ = h.h.Write(p.b[start:p.i])
	}
	for _, s := range spans {
		_, _ = h.h.Write(p.b[s[0]:s[1]])
	}
	b := promptBlock{section: section, digest: h.h.Sum64(), bytes: p.prompt - prompt}
	if marker != nil {
		b.breakpoint, b.ttl = true, markerTTL(marker)
		switch string(typ) {
		case "thinking", "redacted_thinking":
			p.cache.refused = true
		case "text":
			p.cache.refused = p.cache.refused || b.bytes == 0
		}
		p.cache.refused = p.cache.refused || b.ttl == 0
	}
	p.cache.add(b)
}

// markerTTL reads the ttl of a cache_control value: 5 minutes unless it
// says "1h"; zero for a value it cannot read.
func markerTTL(v []byte) time.Duration {
	ttl := []byte(`"ttl"`)
	i := bytes.Index(v, ttl)
	if i < 0 {
		if bytes.Contains(v, []byte(`"ephemeral"`)) {
			return 5 * time.Minute
		}
		return 0
	}
	rest := bytes.TrimLeft(v[i+len(ttl):], " \t\r\n:")
	switch {
	case bytes.HasPrefix(rest, []byte(`"5m"`)):
		return 5 * time.Minute
	case bytes.HasPrefix(rest, []byte(`"1h"`)):
		return time.Hour
	}
	return 0
}

// section walks the value of a tools, system or messages key.
func (p *parser) section(section int) {
	switch p.peek() {
	case '"':
		start := p.i
		raw, n, ok := p.str()
		if ok {
			p.prompt += n
			p.stringBlock(section, nil, p.b[start:p.i], n)
			_ = raw
		}
	case '[':
		p.i++
		for first := true; !p.bad && p.next(&first, ']'); {
			switch {
			case p.peek() == '{' && section == sectionMessages:
				p.message(1)
			case p.peek() == '{':
				p.cacheBlock(section, nil, 1)
			case p.peek() == '"':
				start := p.i
				if _, n, ok := p.str(); ok {
					p.prompt += n
					p.stringBlock(section, nil, p.b[start:p.i], n)
				}
			default:
				p.content(1)
			}
		}
	default:
		p.content(0)
	}
}

// message walks one message of the messages section: its content's blocks
// are recorded, with the role folded into each block's hash.
func (p *parser) message(depth int) {
	p.i++ // '{'
	var role []byte
	var typ []byte
	for first := true; !p.bad && p.next(&first, '}'); {
		k, ok := p.key()
		if !ok {
			return
		}
		switch string(k) {
		case "role":
			p.ws()
			start := p.i
			p.skip()
			role = p.b[start:p.i]
		case "content":
			p.messageContent(role, depth)
		default:
			typ = p.member(k, typ, depth)
		}
	}
	p.countImage(typ)
}

// messageContent walks a message's content: one string, or blocks.
func (p *parser) messageContent(role []byte, depth int) {
	switch p.peek() {
	case '"':
		start := p.i
		if _, n, ok := p.str(); ok {
			p.prompt += n
			p.stringBlock(sectionMessages, role, p.b[start:p.i], n)
		}
	case '[':
		p.i++
		for first := true; !p.bad && p.next(&first, ']'); {
			if p.peek() == '{' {
				p.cacheBlock(sectionMessages, role, depth+1)
			} else {
				p.content(depth + 1)
			}
		}
	default:
		p.content(depth)
	}
}
