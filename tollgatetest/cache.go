package tollgatetest

import (
	"container/list"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"
)

// Prompt caching rules, as Anthropic's and OpenAI's docs describe them.
const (
	// MaxCacheBreakpoints is how many blocks of a Messages request may carry
	// cache_control (a top-level cache_control included); more is a 400.
	MaxCacheBreakpoints = 4

	// CacheLookbackBlocks is how far, in blocks, a breakpoint looks back for
	// an earlier cached prefix: the prefixes ending at the breakpoint's block
	// and at each of the 20 blocks before it are tried, longest first.
	CacheLookbackBlocks = 20

	// CacheTTL5m and CacheTTL1h are the two lifetimes of an Anthropic cache
	// entry ("ttl": "5m", the default, or "1h"), refreshed by every hit.
	CacheTTL5m = 5 * time.Minute
	CacheTTL1h = time.Hour

	// OpenAICacheMinTokens is the shortest chat completion prompt OpenAI
	// caches; OpenAICacheIncrement is the granularity of the cached prefix
	// (1,024, 1,152, 1,280, … tokens).
	OpenAICacheMinTokens = 1024
	OpenAICacheIncrement = 128

	// OpenAICacheTTL is how long an OpenAI prefix stays cached after it was
	// last written or read (OpenAI: 5 to 10 minutes of inactivity).
	OpenAICacheTTL = 5 * time.Minute
)

// cacheKey is the hash of a whole prefix (the model and dialect included).
type cacheKey [sha256.Size]byte

type cacheEntry struct {
	key     cacheKey
	ttl     time.Duration
	expires time.Time
	elem    *list.Element
	// ready is set once the response of a request that wrote the entry has
	// begun: until then no request reads it, and one with the same prefix
	// writes it too (Anthropic: "a cache entry only becomes available after
	// the first response begins").
	ready bool
}

// promptCache is the server's prompt cache: entries by prefix hash, with a
// bound on their number (least recently written or read dropped first). It
// is guarded by Server.mu.
type promptCache struct {
	max int
	m   map[cacheKey]*cacheEntry
	lru list.List // of *cacheEntry, least recently used first
}

func newPromptCache(max int) *promptCache {
	return &promptCache{max: max, m: map[cacheKey]*cacheEntry{}}
}

// get returns the live, ready entry for k, or nil (an expired one is
// dropped).
func (c *promptCache) get(k cacheKey, now time.Time) *cacheEntry {
	e := c.m[k]
	if e == nil {
		return nil
	}
	if !now.Before(e.expires) {
		c.remove(e)
		return nil
	}
	if !e.ready {
		return nil
	}
	return e
}

func (c *promptCache) remove(e *cacheEntry) {
	c.lru.Remove(e.elem)
	delete(c.m, e.key)
}

// refresh restarts e's lifetime.
func (c *promptCache) refresh(e *cacheEntry, now time.Time) {
	e.expires = now.Add(e.ttl)
	c.lru.MoveToBack(e.elem)
}

// put writes (or rewrites) the entry for k with lifetime ttl, dropping the
// least recently used entries beyond the bound, and returns it.
func (c *promptCache) put(k cacheKey, ttl time.Duration, now time.Time) *cacheEntry {
	if e := c.m[k]; e != nil {
		e.ttl = max(e.ttl, ttl)
		c.refresh(e, now)
		return e
	}
	e := &cacheEntry{key: k, ttl: ttl, expires: now.Add(ttl)}
	e.elem = c.lru.PushBack(e)
	c.m[k] = e
	for len(c.m) > c.max {
		c.remove(c.lru.Front().Value.(*cacheEntry))
	}
	return e
}

// live counts the entries that are ready and have not expired.
func (c *promptCache) live(now time.Time) int {
	n := 0
	for _, e := range c.m {
		if e.ready && now.Before(e.expires) {
			n++
		}
	}
	return n
}

// promptUsage is how a prompt's tokens were served and charged.
type promptUsage struct {
	prompt     int // every prompt token
	input      int // uncached (Anthropic input_tokens; OpenAI: prompt_tokens)
	creation   int // written to the cache (Anthropic)
	creation5m int // of which to 5-minute entries
	creation1h int // of which to 1-hour entries
	read       int // read from the cache
	counted    int // what the input limit counts
}

// cachePlan is what a request will do to the cache if it is admitted.
type cachePlan struct {
	usage   promptUsage
	hits    []*cacheEntry
	writes  []cacheWrite
	written []*cacheEntry // by commit, for begin
}

type cacheWrite struct {
	key cacheKey
	ttl time.Duration
}

// commit applies the plan at the request's admission: hits refreshed, new
// entries written, their lifetime running from now, but not ready before
// begin.
func (c *promptCache) commit(p *cachePlan, now time.Time) {
	for _, e := range p.hits {
		if c.m[e.key] == e { // not dropped by an earlier write of this plan
			c.refresh(e, now)
		}
	}
	for _, w := range p.writes {
		p.written = append(p.written, c.put(w.key, w.ttl, now))
	}
}

// begin makes what the plan wrote ready: the request's response has begun.
func (c *promptCache) begin(p *cachePlan) {
	for _, e := range p.written {
		if c.m[e.key] == e { // not dropped since
			e.ready = true
		}
	}
	p.written = nil
}

// ---- Anthropic ----

// breakpoint is a block's cache_control.
type breakpoint struct {
	ttl time.Duration
}

// promptBlock is one block of an Anthropic prompt in cache order.
type promptBlock struct {
	tokens int
	bp     *breakpoint
	prefix cacheKey // hash of every block up to and including this one
	cum    int      // tokens up to and including this block
}

// anthropicPrompt is a Messages prompt as the cache sees it: tools, then
// system blocks, then every message's content blocks.
type anthropicPrompt struct {
	blocks []promptBlock
	total  int
	bps    []int // indices of the blocks with a breakpoint, ascending
}

// requestError is a request the API would refuse with 400.
type requestError struct{ msg string }

func (e *requestError) Error() string { return e.msg }

func badf(format string, a ...any) error { return &requestError{fmt.Sprintf(format, a...)} }

// parseCacheControl validates a cache_control value; nil when absent.
func parseCacheControl(v any, where string) (*breakpoint, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, badf("%s.cache_control: Input should be a valid dictionary or object", where)
	}
	if typ, _ := m["type"].(string); typ != "ephemeral" {
		return nil, badf("%s.cache_control.type: Input should be 'ephemeral'", where)
	}
	bp := &breakpoint{ttl: CacheTTL5m}
	switch ttl := m["ttl"].(type) {
	case nil:
	case string:
		switch ttl {
		case "5m":
		case "1h":
			bp.ttl = CacheTTL1h
		default:
			return nil, badf("%s.cache_control.ttl: Input should be '5m' or '1h'", where)
		}
	default:
		return nil, badf("%s.cache_control.ttl: Input should be '5m' or '1h'", where)
	}
	return bp, nil
}

// promptBuilder accumulates blocks and their chained hash.
type promptBuilder struct {
	p    anthropicPrompt
	prev cacheKey
}

func (b *promptBuilder) add(tag string, canonical []byte, tokens int, bp *breakpoint) {
	h := sha256.New()
	h.Write(b.prev[:])
	h.Write([]byte(tag))
	h.Write([]byte{0})
	h.Write(canonical)
	var k cacheKey
	h.Sum(k[:0])
	b.prev = k
	b.p.total += tokens
	if bp != nil {
		b.p.bps = append(b.p.bps, len(b.p.blocks))
	}
	b.p.blocks = append(b.p.blocks, promptBlock{tokens: tokens, bp: bp, prefix: k, cum: b.p.total})
}

// blocksOf splits a content value into its blocks: a string is one text
// block; an array is its elements; anything else has none.
func blocksOf(v any) []any {
	switch c := v.(type) {
	case string:
		return []any{map[string]any{"type": "text", "text": c}}
	case []any:
		return c
	}
	return nil
}

// addContentBlock adds one system or message block. Its hash covers its
// JSON without cache_control (which is not part of the cached content:
// moving a breakpoint keeps the prefix), object keys sorted; a string
// content is the text block it stands for.
func (b *promptBuilder) addContentBlock(tag string, blk any, where string) error {
	var bp *breakpoint
	if m, ok := blk.(map[string]any); ok {
		if cc, has := m["cache_control"]; has {
			var err error
			if bp, err = parseCacheControl(cc, where); err != nil {
				return err
			}
			if bp != nil {
				switch typ, _ := m["type"].(string); typ {
				case "thinking", "redacted_thinking":
					return badf("%s.cache_control: cache_control cannot be set for %s blocks", where, typ)
				case "text":
					if s, _ := m["text"].(string); s == "" {
						return badf("%s.cache_control: cache_control cannot be set for empty text blocks", where)
					}
				}
			}
			m = shallowWithout(m, "cache_control")
			blk = m
		}
	}
	canon, _ := json.Marshal(blk)
	b.add(tag, canon, anthropicBlockTokens(blk), bp)
	return nil
}

func shallowWithout(m map[string]any, key string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != key {
			out[k] = v
		}
	}
	return out
}

// buildAnthropicPrompt splits a Messages request into blocks in cache order
// (tools, system, messages), counts their tokens, validates every
// cache_control and chains the prefix hashes (seeded with the model). The
// token total is the request's input tokens.
func buildAnthropicPrompt(req *anthropicRequest) (*anthropicPrompt, error) {
	b := &promptBuilder{}
	b.prev = sha256.Sum256([]byte("anthropic\x00" + req.Model))
	for i, raw := range req.Tools {
		var t anthropicTool
		if err := json.Unmarshal(raw, &t); err != nil {
			return nil, badf("tools.%d: %v", i, err)
		}
		var v any
		_ = json.Unmarshal(raw, &v)
		var bp *breakpoint
		if m, ok := v.(map[string]any); ok {
			var err error
			if bp, err = parseCacheControl(m["cache_control"], fmt.Sprintf("tools.%d", i)); err != nil {
				return nil, err
			}
			v = shallowWithout(m, "cache_control")
		}
		canon, _ := json.Marshal(v)
		b.add("tool", canon, CountTokens(t.Name)+CountTokens(t.Description)+countJSON(t.InputSchema), bp)
	}
	if len(req.System) > 0 {
		var sys any
		if json.Unmarshal(req.System, &sys) == nil {
			for j, blk := range blocksOf(sys) {
				if err := b.addContentBlock("system", blk, fmt.Sprintf("system.%d", j)); err != nil {
					return nil, err
				}
			}
		}
	}
	for i, m := range req.Messages {
		var c any
		if json.Unmarshal(m.Content, &c) != nil {
			continue
		}
		for j, blk := range blocksOf(c) {
			tag := "msg\x00" + m.Role
			if j == 0 {
				tag += "\x00start"
			}
			if err := b.addContentBlock(tag, blk, fmt.Sprintf("messages.%d.content.%d", i, j)); err != nil {
				return nil, err
			}
		}
	}
	p := &b.p
	// A top-level cache_control marks the last block, unless it has its own.
	if len(req.CacheControl) > 0 && string(req.CacheControl) != "null" {
		var cc any
		_ = json.Unmarshal(req.CacheControl, &cc)
		bp, err := parseCacheControl(cc, "body")
		if err != nil {
			return nil, err
		}
		if n := len(p.blocks); n > 0 && p.blocks[n-1].bp == nil {
			p.blocks[n-1].bp = bp
			p.bps = append(p.bps, n-1)
		}
	}
	if len(p.bps) > MaxCacheBreakpoints {
		return nil, badf("A maximum of %d blocks with cache_control may be provided. Found %d.", MaxCacheBreakpoints, len(p.bps))
	}
	seen5m := false
	for _, i := range p.bps {
		switch p.blocks[i].bp.ttl {
		case CacheTTL5m:
			seen5m = true
		case CacheTTL1h:
			if seen5m {
				return nil, badf("a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. " +
					"Note that blocks are processed in the following order: `tools`, `system`, `messages`.")
			}
		}
	}
	return p, nil
}

// cumAt is the tokens up to and including block i (0 for i < 0).
func (p *anthropicPrompt) cumAt(i int) int {
	if i < 0 {
		return 0
	}
	return p.blocks[i].cum
}

// planAnthropic works out what p reads from and writes to c at now:
//
//   - every breakpoint looks for the longest live entry among the prefixes
//     ending at its block and at the CacheLookbackBlocks blocks before it;
//     the longest found over all breakpoints is read, and every entry found
//     is refreshed;
//   - every breakpoint whose prefix has at least minTokens tokens and no live
//     entry gets one, with the breakpoint's TTL; the tokens from the end of
//     the read prefix to the last such breakpoint are written
//     (cache_creation_input_tokens, split by the TTL of the breakpoint that
//     closes each stretch);
//   - the rest, after the last read or written point, is input_tokens.
//
// With caching off (c nil) every token is input. readsCount says whether
// cache reads count against the input limit.
func planAnthropic(c *promptCache, p *anthropicPrompt, minTokens int, readsCount bool, now time.Time) cachePlan {
	plan := cachePlan{}
	u := &plan.usage
	u.prompt = p.total
	if c == nil || len(p.bps) == 0 {
		u.input, u.counted = p.total, p.total
		return plan
	}
	read := -1
	for _, bp := range p.bps {
		for j := bp; j >= max(0, bp-CacheLookbackBlocks); j-- {
			if e := c.get(p.blocks[j].prefix, now); e != nil {
				plan.hits = append(plan.hits, e)
				read = max(read, j)
				break
			}
		}
	}
	last := -1 // the last breakpoint written
	for _, bp := range p.bps {
		if p.blocks[bp].cum < minTokens || c.get(p.blocks[bp].prefix, now) != nil {
			continue
		}
		plan.writes = append(plan.writes, cacheWrite{key: p.blocks[bp].prefix, ttl: p.blocks[bp].bp.ttl})
		last = bp
	}
	u.read = p.cumAt(read)
	if last > read {
		prev := read
		for _, bp := range p.bps {
			if bp <= read || bp > last {
				continue
			}
			n := p.cumAt(bp) - p.cumAt(prev)
			if p.blocks[bp].bp.ttl == CacheTTL1h {
				u.creation1h += n
			} else {
				u.creation5m += n
			}
			prev = bp
		}
		u.creation = u.creation5m + u.creation1h
	}
	u.input = p.total - u.read - u.creation
	u.counted = u.input + u.creation
	if readsCount {
		u.counted += u.read
	}
	return plan
}

// ---- OpenAI ----

// openAIPrompt is a chat completion prompt as OpenAI's automatic cache sees
// it: its token count and the hash of its first 1,024 + 128·k tokens for
// every k that fits.
type openAIPrompt struct {
	total       int
	checkpoints []cacheKey
}

// buildOpenAIPrompt walks the prompt's tokens (tools first, then messages,
// each message's role mixed into the hash but costing no token) and records
// a checkpoint every OpenAICacheIncrement tokens from OpenAICacheMinTokens.
func buildOpenAIPrompt(req *openAIRequest) *openAIPrompt {
	p := &openAIPrompt{}
	h := sha256.New()
	h.Write([]byte("openai\x00" + req.Model + "\x00"))
	var sum cacheKey
	tok := func(t string) {
		h.Write([]byte(t))
		h.Write([]byte{0})
		p.total++
		if n := p.total - OpenAICacheMinTokens; n >= 0 && n%OpenAICacheIncrement == 0 {
			h.Sum(sum[:0])
			p.checkpoints = append(p.checkpoints, sum)
		}
	}
	boundary := func(s string) {
		h.Write([]byte{1})
		h.Write([]byte(s))
		h.Write([]byte{1})
	}
	walkOpenAIPrompt(req, tok, boundary)
	return p
}

// planOpenAI finds the longest checkpoint of p that is cached; every
// checkpoint is written or refreshed on admission. Cached tokens count
// against the limits like any other (OpenAI: "caching does not affect rate
// limits").
func planOpenAI(c *promptCache, p *openAIPrompt, now time.Time) cachePlan {
	plan := cachePlan{}
	u := &plan.usage
	u.prompt, u.input, u.counted = p.total, p.total, p.total
	if c == nil {
		return plan
	}
	for k := len(p.checkpoints) - 1; k >= 0; k-- {
		if c.get(p.checkpoints[k], now) != nil {
			u.read = OpenAICacheMinTokens + k*OpenAICacheIncrement
			break
		}
	}
	for _, key := range p.checkpoints {
		if e := c.get(key, now); e != nil {
			plan.hits = append(plan.hits, e)
			continue
		}
		plan.writes = append(plan.writes, cacheWrite{key: key, ttl: OpenAICacheTTL})
	}
	return plan
}
