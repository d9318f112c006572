package tollgatetest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// blk is a content block of a raw request body.
type blk map[string]any

// text is a text block of n tokens of word w; cc, when given, adds
// cache_control: "" for the default TTL, "5m" or "1h" for that one.
func text(w string, n int, cc ...string) blk {
	b := blk{"type": "text", "text": strings.TrimSpace(strings.Repeat(w+" ", n))}
	if len(cc) > 0 {
		b["cache_control"] = cacheControl(cc[0])
	}
	return b
}

func cacheControl(ttl string) map[string]any {
	c := map[string]any{"type": "ephemeral"}
	if ttl != "" {
		c["ttl"] = ttl
	}
	return c
}

type turn struct {
	role   string
	blocks []blk
}

func user(bs ...blk) turn      { return turn{"user", bs} }
func assistant(bs ...blk) turn { return turn{"assistant", bs} }

// req is a Messages body for model with a system prompt (nil: none) and the
// turns; extra fields are merged in.
func req(model string, system []blk, turns []turn, extra map[string]any) string {
	m := map[string]any{"model": model, "max_tokens": 10}
	if system != nil {
		m["system"] = system
	}
	var msgs []map[string]any
	for _, t := range turns {
		msgs = append(msgs, map[string]any{"role": t.role, "content": t.blocks})
	}
	m["messages"] = msgs
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

type usage struct {
	InputTokens              int `json:"input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	CacheCreation            struct {
		Ephemeral5m int `json:"ephemeral_5m_input_tokens"`
		Ephemeral1h int `json:"ephemeral_1h_input_tokens"`
	} `json:"cache_creation"`
	OutputTokens int `json:"output_tokens"`
}

func (u usage) prompt() int {
	return u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens
}

// send posts a Messages body and returns its usage (zero unless 200).
func send(t *testing.T, rc *rawClient, body string) (int, usage, string) {
	t.Helper()
	resp, out := rc.post("/v1/messages", body)
	var m struct {
		Usage usage `json:"usage"`
	}
	if resp.StatusCode == 200 {
		require.NoError(t, json.Unmarshal([]byte(out), &m), out)
	}
	return resp.StatusCode, m.Usage, out
}

// counted is what count_tokens says of a Messages body.
func counted(t *testing.T, rc *rawClient, body string) int {
	t.Helper()
	resp, out := rc.post("/v1/messages/count_tokens", body)
	require.Equal(t, 200, resp.StatusCode, out)
	var c struct {
		InputTokens int `json:"input_tokens"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &c))
	return c.InputTokens
}

const sonnet = "claude-sonnet-5"

// A system prompt with a breakpoint is written once, then read; the usage
// fields sum to the prompt; Stats counts reads and writes apart from the
// input the limit counts.
func TestCacheWriteThenRead(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokens: 1})
	rc := raw(t, srv)
	body := req(sonnet, []blk{text("sys", 1200, "")}, []turn{user(text("q", 10))}, nil)

	code, u, out := send(t, rc, body)
	require.Equal(t, 200, code, out)
	assert.Equal(t, usage{InputTokens: 10, CacheCreationInputTokens: 1200, OutputTokens: 1}, zero1h5m(u))
	assert.Equal(t, 1200, u.CacheCreation.Ephemeral5m)
	assert.Equal(t, counted(t, rc, body), u.prompt())

	clock.Advance(time.Minute)
	code, u, _ = send(t, rc, body)
	require.Equal(t, 200, code)
	assert.Equal(t, usage{InputTokens: 10, CacheReadInputTokens: 1200, OutputTokens: 1}, zero1h5m(u))

	st := srv.Stats()
	assert.Equal(t, 1200+10+10, st.InputTokens, "input + creation; reads do not count")
	assert.Equal(t, 1200, st.CacheCreationInputTokens)
	assert.Equal(t, 1200, st.CacheReadInputTokens)
	assert.Equal(t, 2*1210, st.PromptTokens)
	require.Len(t, st.Timeline, 2)
	assert.Equal(t, tollgatetest.Second{Start: t0, Requests: 2, OK: 2, InputTokens: 1210,
		CacheCreationInputTokens: 1200, PromptTokens: 1210, OutputTokens: 1, Admitted: 1, AdmittedInputTokens: 1210},
		st.Timeline[0], "the count_tokens call is a request too, not an admission of the messages limits")
	assert.Equal(t, tollgatetest.Second{Start: t0.Add(time.Minute), Requests: 1, OK: 1, InputTokens: 10,
		CacheReadInputTokens: 1200, PromptTokens: 1210, OutputTokens: 1, Admitted: 1, AdmittedInputTokens: 10}, st.Timeline[1])
	assert.Equal(t, 1, srv.CacheEntries())
}

// zero1h5m drops the by-TTL breakdown, checked apart.
func zero1h5m(u usage) usage {
	u.CacheCreation.Ephemeral5m, u.CacheCreation.Ephemeral1h = 0, 0
	return u
}

// A breakpoint writes only a prefix of at least the model's minimum.
func TestCacheMinimumLength(t *testing.T) {
	for _, tc := range []struct {
		model   string
		tokens  int
		written bool
	}{
		{"claude-sonnet-5", 1023, false},
		{"claude-sonnet-5", 1024, true},
		{"claude-opus-4-1", 1024, true},
		{"claude-haiku-4-5", 2047, false},
		{"claude-haiku-4-5", 2048, true},
		{"claude-3-5-haiku-20241022", 1500, false},
	} {
		srv := newServer(t, tollgatetest.Config{OutputTokens: 1})
		rc := raw(t, srv)
		// The breakpoint's prefix is the system block and the first user block.
		body := req(tc.model, []blk{text("sys", tc.tokens-1)}, []turn{user(text("q", 1, ""), text("tail", 5))}, nil)
		code, u, out := send(t, rc, body)
		require.Equal(t, 200, code, out)
		code, u2, _ := send(t, rc, body)
		require.Equal(t, 200, code)
		if tc.written {
			assert.Equal(t, tc.tokens, u.CacheCreationInputTokens, "%+v", tc)
			assert.Equal(t, 5, u.InputTokens, "%+v", tc)
			assert.Equal(t, tc.tokens, u2.CacheReadInputTokens, "%+v", tc)
		} else {
			assert.Zero(t, u.CacheCreationInputTokens+u2.CacheCreationInputTokens+u2.CacheReadInputTokens, "%+v", tc)
			assert.Equal(t, tc.tokens+5, u2.InputTokens, "%+v", tc)
		}
	}
	assert.Equal(t, 1024, tollgatetest.DefaultMinCacheableTokens("claude-sonnet-5"))
	assert.Equal(t, 2048, tollgatetest.DefaultMinCacheableTokens("Claude-Haiku-4-5"))

	srv := newServer(t, tollgatetest.Config{OutputTokens: 1, MinCacheableTokens: func(string) int { return 10 }})
	body := req(sonnet, []blk{text("sys", 20, "")}, []turn{user(text("q", 1))}, nil)
	_, u, _ := send(t, raw(t, srv), body)
	assert.Equal(t, 20, u.CacheCreationInputTokens, "Config.MinCacheableTokens")
}

// An agent's conversation: a breakpoint on the system prompt and one on the
// newest block; each turn reads what the previous one wrote and writes its
// own new blocks, leaving no uncached input.
func TestCacheConversationReadsThePreviousTurn(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokens: 1})
	rc := raw(t, srv)
	system := []blk{text("sys", 2000, "")}
	task := text("task", 300)
	// The turns as they grow; the last block of each request carries the breakpoint.
	withBP := func(b blk) blk {
		c := blk{}
		for k, v := range b {
			c[k] = v
		}
		c["cache_control"] = cacheControl("")
		return c
	}
	reply1, result1 := text("reply", 200), blk{"type": "tool_result", "tool_use_id": "t1", "content": strings.Repeat("out ", 700)}
	toolUse1 := blk{"type": "tool_use", "id": "t1", "name": "bash", "input": map[string]any{"cmd": "ls"}}
	toolUseTokens := tollgatetest.CountTokens("bash") + tollgatetest.CountTokens(`{"cmd":"ls"}`)

	code, u, out := send(t, rc, req(sonnet, system, []turn{user(withBP(task))}, nil))
	require.Equal(t, 200, code, out)
	assert.Equal(t, usage{CacheCreationInputTokens: 2300, OutputTokens: 1}, zero1h5m(u), "system and task written")

	clock.Advance(20 * time.Second)
	code, u, _ = send(t, rc, req(sonnet, system, []turn{user(task), assistant(reply1, toolUse1), user(withBP(result1))}, nil))
	require.Equal(t, 200, code)
	assert.Equal(t, 2300, u.CacheReadInputTokens, "the previous turn's prefix, 3 blocks back")
	assert.Equal(t, 200+toolUseTokens+700, u.CacheCreationInputTokens)
	assert.Zero(t, u.InputTokens)

	// Another agent with the same system prompt and another task reads the
	// system prompt only.
	code, u, _ = send(t, rc, req(sonnet, system, []turn{user(withBP(text("other", 100)))}, nil))
	require.Equal(t, 200, code)
	assert.Equal(t, usage{CacheReadInputTokens: 2000, CacheCreationInputTokens: 100, OutputTokens: 1}, zero1h5m(u))
}

// A breakpoint looks back CacheLookbackBlocks blocks for an earlier entry,
// no further.
func TestCacheLookbackWindow(t *testing.T) {
	for _, tc := range []struct {
		after int // blocks between the cached one and the breakpoint's, the breakpoint's included
		found bool
	}{
		{0, true}, {1, true}, {tollgatetest.CacheLookbackBlocks, true}, {tollgatetest.CacheLookbackBlocks + 1, false},
	} {
		srv := newServer(t, tollgatetest.Config{OutputTokens: 1})
		rc := raw(t, srv)
		code, _, out := send(t, rc, req(sonnet, nil, []turn{user(text("base", 1100, ""))}, nil))
		require.Equal(t, 200, code, out)
		blocks := []blk{text("base", 1100)}
		for i := range tc.after {
			b := text("more", 1)
			if i == tc.after-1 {
				b["cache_control"] = cacheControl("")
			}
			blocks = append(blocks, b)
		}
		if tc.after == 0 {
			blocks[0]["cache_control"] = cacheControl("")
		}
		code, u, _ := send(t, rc, req(sonnet, nil, []turn{user(blocks...)}, nil))
		require.Equal(t, 200, code)
		if tc.found {
			assert.Equal(t, 1100, u.CacheReadInputTokens, "%+v", tc)
			assert.Equal(t, tc.after, u.CacheCreationInputTokens, "%+v", tc)
		} else {
			assert.Zero(t, u.CacheReadInputTokens, "%+v", tc)
			assert.Equal(t, 1100+tc.after, u.CacheCreationInputTokens, "%+v", tc)
		}
	}
}

// Entries live for their TTL from their last write or read, on Config.Now.
func TestCacheTTL(t *testing.T) {
	for _, tc := range []struct {
		ttl  string
		life time.Duration
	}{{"", 5 * time.Minute}, {"5m", 5 * time.Minute}, {"1h", time.Hour}} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, OutputTokens: 1})
		rc := raw(t, srv)
		body := req(sonnet, []blk{text("sys", 1500, tc.ttl)}, []turn{user(text("q", 3))}, nil)
		read := func() int {
			code, u, out := send(t, rc, body)
			require.Equal(t, 200, code, out)
			return u.CacheReadInputTokens
		}
		assert.Zero(t, read(), "written")
		clock.Advance(tc.life - time.Second)
		assert.Equal(t, 1500, read(), "%s: still there a second before it expires; the hit refreshes it", tc.ttl)
		clock.Advance(tc.life - time.Second)
		assert.Equal(t, 1500, read(), "%s: alive again thanks to the refresh", tc.ttl)
		clock.Advance(tc.life)
		assert.Equal(t, 0, srv.CacheEntries(), "%s: expired", tc.ttl)
		assert.Zero(t, read(), "%s: expired, written again", tc.ttl)
		assert.Equal(t, 1, srv.CacheEntries())
	}
}

// The creation tokens are split by the TTL of the breakpoint that closes
// each stretch; a 1h breakpoint must not follow a 5m one.
func TestCacheCreationByTTL(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 1})
	rc := raw(t, srv)
	code, u, out := send(t, rc, req(sonnet, []blk{text("sys", 1500, "1h")}, []turn{user(text("task", 400, "5m"), text("q", 2))}, nil))
	require.Equal(t, 200, code, out)
	assert.Equal(t, 1500, u.CacheCreation.Ephemeral1h)
	assert.Equal(t, 400, u.CacheCreation.Ephemeral5m)
	assert.Equal(t, 1900, u.CacheCreationInputTokens)
	assert.Equal(t, 2, u.InputTokens)
}

// cache_control is validated as the API does, with 400 invalid_request_error.
func TestCacheControlValidation(t *testing.T) {
	five := make([]blk, 5)
	for i := range five {
		five[i] = text("b", 1, "")
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"five breakpoints", req(sonnet, nil, []turn{user(five...)}, nil), "A maximum of 4 blocks with cache_control may be provided. Found 5."},
		{"four plus a top-level one", req(sonnet, nil, []turn{user(five[:4]...), user(text("x", 1))},
			map[string]any{"cache_control": cacheControl("")}), "Found 5."},
		{"type", req(sonnet, nil, []turn{user(blk{"type": "text", "text": "a", "cache_control": map[string]any{"type": "persistent"}})}, nil),
			"messages.0.content.0.cache_control.type: Input should be 'ephemeral'"},
		{"ttl", req(sonnet, nil, []turn{user(blk{"type": "text", "text": "a", "cache_control": map[string]any{"type": "ephemeral", "ttl": "10m"}})}, nil),
			"cache_control.ttl: Input should be '5m' or '1h'"},
		{"ttl type", req(sonnet, nil, []turn{user(blk{"type": "text", "text": "a", "cache_control": map[string]any{"type": "ephemeral", "ttl": 300}})}, nil),
			"cache_control.ttl"},
		{"not an object", req(sonnet, nil, []turn{user(blk{"type": "text", "text": "a", "cache_control": "ephemeral"})}, nil),
			"cache_control: Input should be a valid dictionary"},
		{"1h after 5m", req(sonnet, []blk{text("s", 1, "5m")}, []turn{user(text("a", 1, "1h"))}, nil), "must not come after"},
		{"empty text", req(sonnet, nil, []turn{user(blk{"type": "text", "text": "", "cache_control": cacheControl("")})}, nil), "empty text blocks"},
		{"thinking", req(sonnet, nil, []turn{user(text("a", 1)), assistant(blk{"type": "thinking", "thinking": "hm", "signature": "x",
			"cache_control": cacheControl("")})}, nil), "thinking blocks"},
		{"tool", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"t","input_schema":{},"cache_control":{"type":"x"}}]}`,
			"tools.0.cache_control.type"},
		{"top level", req(sonnet, nil, []turn{user(text("a", 1))}, map[string]any{"cache_control": map[string]any{"type": "ephemeral", "ttl": "1d"}}),
			"body.cache_control.ttl"},
	} {
		srv := newServer(t, tollgatetest.Config{RequestsPerMinute: 10})
		rc := raw(t, srv)
		for _, path := range []string{"/v1/messages", "/v1/messages/count_tokens"} {
			resp, body := rc.post(path, tc.body)
			assert.Equal(t, 400, resp.StatusCode, "%s %s: %s", tc.name, path, body)
			assert.Contains(t, body, `"type":"invalid_request_error"`, tc.name)
			assert.Contains(t, body, tc.want, tc.name)
		}
		assert.Equal(t, 10, srv.Limits().Requests.Remaining, "%s: a 400 costs nothing", tc.name)
	}

	// Four breakpoints, 5m after 1h, null cache_control: all fine.
	srv := newServer(t, tollgatetest.Config{})
	rc := raw(t, srv)
	ok := req(sonnet, []blk{text("s", 1, "1h")}, []turn{user(text("a", 1, "1h"), text("b", 1, "5m"), text("c", 1, ""),
		blk{"type": "text", "text": "d", "cache_control": nil})}, nil)
	code, _, out := send(t, rc, ok)
	assert.Equal(t, 200, code, out)
}

// The cache key is the content: where the breakpoints sit, and whether a
// content is a string or a text block, does not change it; any other change
// before the breakpoint does; models have caches of their own.
func TestCacheKey(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 1})
	rc := raw(t, srv)
	sys := text("sys", 1200)
	write := req(sonnet, []blk{sys}, []turn{user(text("q", 5, ""))}, nil)
	code, u, out := send(t, rc, write)
	require.Equal(t, 200, code, out)
	require.Equal(t, 1205, u.CacheCreationInputTokens)

	for _, tc := range []struct {
		name string
		body string
		read int
	}{
		{"same", write, 1205},
		{"string content, top-level cache_control",
			`{"model":"` + sonnet + `","max_tokens":5,"system":[{"type":"text","text":` + quote(sys["text"].(string)) + `}],` +
				`"messages":[{"role":"user","content":"q q q q q"}],"cache_control":{"type":"ephemeral"}}`, 1205},
		{"string system", `{"model":"` + sonnet + `","max_tokens":5,"system":` + quote(sys["text"].(string)) +
			`,"messages":[{"role":"user","content":[{"type":"text","text":"q q q q q","cache_control":{"type":"ephemeral"}}]}]}`, 1205},
		{"another role", req(sonnet, []blk{sys}, []turn{assistant(text("q", 5, ""))}, nil), 0},
		{"another model", req("claude-opus-4-1", []blk{sys}, []turn{user(text("q", 5, ""))}, nil), 0},
		{"a change before", req(sonnet, []blk{text("sys", 1201)}, []turn{user(text("q", 5, ""))}, nil), 0},
		{"a tool before", req(sonnet, []blk{sys}, []turn{user(text("q", 5, ""))},
			map[string]any{"tools": []any{map[string]any{"name": "t", "input_schema": map[string]any{}}}}), 0},
	} {
		code, u, out := send(t, rc, tc.body)
		require.Equal(t, 200, code, "%s: %s", tc.name, out)
		assert.Equal(t, tc.read, u.CacheReadInputTokens, tc.name)
	}
}

// Only input + cache creation count against the input limit, except for
// the models whose cache reads count (Haiku 3.5, or as configured).
func TestCacheReadsAndTheInputLimit(t *testing.T) {
	for _, tc := range []struct {
		model      string
		countReads func(string) bool
		admitted   bool
	}{
		{sonnet, nil, true},
		{"claude-3-5-haiku-20241022", nil, false},
		{"claude-haiku-3-5", nil, false},
		{"claude-haiku-4-5", nil, true},
		{sonnet, func(string) bool { return true }, false},
	} {
		clock := tollgatetest.NewClock(t0)
		srv := newServer(t, tollgatetest.Config{Now: clock.Now, InputTokensPerMinute: 3000, OutputTokens: 1,
			CacheReadsCountAsInput: tc.countReads, ExactRemaining: true})
		rc := raw(t, srv)
		body := req(tc.model, []blk{text("sys", 2500, "")}, []turn{user(text("q", 10))}, nil)
		code, _, out := send(t, rc, body)
		require.Equal(t, 200, code, out)
		require.Equal(t, 490, srv.Limits().InputTokens.Remaining)
		resp, out := rc.post("/v1/messages", body)
		if tc.admitted {
			require.Equal(t, 200, resp.StatusCode, "%+v: %s", tc, out)
			assert.Equal(t, "480", resp.Header.Get("anthropic-ratelimit-input-tokens-remaining"), "%+v: only the 10 uncached", tc)
			assert.Equal(t, 10+2510, srv.Stats().InputTokens, tc.model)
		} else {
			require.Equal(t, 429, resp.StatusCode, "%+v: 2,510 needed, 490 left", tc)
			assert.Contains(t, out, "needs 2510")
		}
	}
	assert.True(t, tollgatetest.DefaultCacheReadsCountAsInput("claude-3-5-haiku-latest"))
	assert.False(t, tollgatetest.DefaultCacheReadsCountAsInput("claude-sonnet-5"))

	// A 429 neither reads nor writes.
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, InputTokensPerMinute: 1000, OutputTokens: 1})
	rc := raw(t, srv)
	body := req(sonnet, []blk{text("sys", 1100, "")}, []turn{user(text("q", 1))}, nil)
	resp, _ := rc.post("/v1/messages", body)
	require.Equal(t, 429, resp.StatusCode)
	assert.Zero(t, srv.CacheEntries())
	assert.Zero(t, srv.Stats().CacheCreationInputTokens)
}

// With caching off, cache_control is still checked but nothing is cached.
func TestNoPromptCaching(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{NoPromptCaching: true, OutputTokens: 1})
	rc := raw(t, srv)
	body := req(sonnet, []blk{text("sys", 1200, "")}, []turn{user(text("q", 10))}, nil)
	for range 2 {
		code, u, out := send(t, rc, body)
		require.Equal(t, 200, code, out)
		assert.Equal(t, usage{InputTokens: 1210, OutputTokens: 1}, zero1h5m(u))
	}
	assert.Zero(t, srv.CacheEntries())
	resp, _ := rc.post("/v1/messages", req(sonnet, nil, []turn{user(text("a", 1, "2h"))}, nil))
	assert.Equal(t, 400, resp.StatusCode)
	st := srv.Stats()
	assert.Equal(t, 2420, st.InputTokens)
	assert.Equal(t, 2420, st.PromptTokens)
}

// The cache holds at most CacheMaxEntries entries; the least recently
// written or read goes first.
func TestCacheMaxEntries(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, CacheMaxEntries: 2, OutputTokens: 1})
	rc := raw(t, srv)
	body := func(w string) string { return req(sonnet, []blk{text(w, 1100, "")}, []turn{user(text("q", 1))}, nil) }
	read := func(w string) int {
		code, u, out := send(t, rc, body(w))
		require.Equal(t, 200, code, out)
		return u.CacheReadInputTokens
	}
	assert.Zero(t, read("a"))
	assert.Zero(t, read("b"))
	assert.Equal(t, 1100, read("a"), "a is now the most recently used")
	assert.Zero(t, read("c"), "c pushes b out")
	assert.Equal(t, 2, srv.CacheEntries())
	assert.Equal(t, 1100, read("a"))
	assert.Equal(t, 1100, read("c"))
	assert.Zero(t, read("b"), "b was dropped")
}

// An entry is usable as soon as the response that wrote it has begun: a
// request that arrives while that response is still streaming reads it.
func TestCacheUsableOnceTheWriterHasBegun(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 5, StreamChunkTokens: 1, StreamEventDelay: time.Hour})
	body := req(sonnet, []blk{text("sys", 1100, "")}, []turn{user(text("q", 1))}, map[string]any{"stream": true})
	hreq, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	resp, err := httpClient(t).Do(hreq)
	require.NoError(t, err)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "event: message_start\n", line, "the writer's stream has begun, and is held there")

	_, u, _ := send(t, raw(t, srv), strings.Replace(body, `"stream":true`, `"stream":false`, 1))
	assert.Equal(t, 1100, u.CacheReadInputTokens)
	require.NoError(t, resp.Body.Close())
}

// An entry is not usable before the response that wrote it has begun
// (Anthropic: "a cache entry only becomes available after the first
// response begins"): a request admitted meanwhile with the same prefix
// writes it too, and is counted for all of it.
func TestCacheNotUsableBeforeTheWriterHasBegun(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{Latency: time.Hour}) // no response begins
	body := req(sonnet, []blk{text("sys", 1100, "")}, []turn{user(text("q", 1))}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := httpClient(t)
	admitted := func() (n, input int) {
		for _, sec := range srv.Stats().Timeline {
			n, input = n+sec.Admitted, input+sec.AdmittedInputTokens
		}
		return n, input
	}
	done := make(chan error, 2)
	var first int
	for i := 1; i <= 2; i++ {
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/messages", strings.NewReader(body))
		require.NoError(t, err)
		go func() {
			resp, err := c.Do(hreq)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		require.Eventually(t, func() bool { n, _ := admitted(); return n == i }, 5*time.Second, time.Millisecond)
		assert.Zero(t, srv.CacheEntries(), "what call %d wrote is not ready: its response has not begun", i)
		if i == 1 {
			_, first = admitted()
		}
	}
	_, input := admitted()
	require.Greater(t, first, 1100)
	assert.Equal(t, 2*first, input, "the second call read nothing: both are counted the whole prompt")
	cancel()
	for range 2 {
		assert.Error(t, <-done)
	}
	require.Eventually(t, func() bool { return srv.Stats().InFlight == 0 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, srv.CacheEntries(), "a writer that never began leaves nothing to read")
}

// Streams report the cache counts in message_start and message_delta; the
// SDK reads them.
func TestCacheUsageInStreamsAndTheSDK(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 3})
	client := anthropicClient(t, srv)
	params := anthropic.MessageNewParams{
		Model: sonnet, MaxTokens: 100,
		System:   []anthropic.TextBlockParam{{Text: text("sys", 1500)["text"].(string), CacheControl: anthropic.NewCacheControlEphemeralParam()}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hello there"))},
	}
	m, err := client.Messages.New(context.Background(), params)
	require.NoError(t, err)
	assert.Equal(t, int64(1500), m.Usage.CacheCreationInputTokens)
	assert.Equal(t, int64(1500), m.Usage.CacheCreation.Ephemeral5mInputTokens)
	assert.Equal(t, int64(2), m.Usage.InputTokens)

	stream := client.Messages.NewStreaming(context.Background(), params)
	var acc anthropic.Message
	for stream.Next() {
		require.NoError(t, acc.Accumulate(stream.Current()))
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	assert.Equal(t, int64(1500), acc.Usage.CacheReadInputTokens)
	assert.Zero(t, acc.Usage.CacheCreationInputTokens)
	assert.Equal(t, int64(2), acc.Usage.InputTokens)
	assert.Equal(t, int64(3), acc.Usage.OutputTokens)

	// The raw message_delta repeats the counts (the same content as the
	// SDK's, so the same prefix).
	_, body := raw(t, srv).post("/v1/messages", req(sonnet, []blk{text("sys", 1500, "")}, []turn{user(text("q", 2))},
		map[string]any{"stream": true}))
	assert.Contains(t, body, `"type":"message_delta"`)
	assert.Contains(t, body, `"usage":{"input_tokens":2,"cache_creation_input_tokens":0,"cache_read_input_tokens":1500,"output_tokens":3}`)
}

// OpenAI caches prompts of 1,024 tokens or more automatically, in 128-token
// steps of a prefix seen before; cached tokens still count against the
// limits.
func TestOpenAIAutomaticCaching(t *testing.T) {
	clock := tollgatetest.NewClock(t0)
	srv := newServer(t, tollgatetest.Config{Now: clock.Now, TokensPerMinute: 100_000, OutputTokens: 1})
	rc := raw(t, srv)
	type oaiUsage struct {
		PromptTokens        int `json:"prompt_tokens"`
		PromptTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	}
	post := func(body string) oaiUsage {
		t.Helper()
		resp, out := rc.post("/v1/chat/completions", body)
		require.Equal(t, 200, resp.StatusCode, out)
		var c struct {
			Usage oaiUsage `json:"usage"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &c))
		return c.Usage
	}
	msgs := func(parts ...string) string {
		var ms []map[string]any
		for i := 0; i+1 < len(parts); i += 2 {
			ms = append(ms, map[string]any{"role": parts[i], "content": parts[i+1]})
		}
		b, _ := json.Marshal(map[string]any{"model": "gpt-4o", "messages": ms})
		return string(b)
	}
	long := strings.Repeat("ctx ", 1300)
	for _, tc := range []struct {
		name         string
		body         string
		prompt, read int
	}{
		{"first", msgs("system", long, "user", "one two"), 1302, 0},
		{"again: 1,280 of 1,302 in steps of 128", msgs("system", long, "user", "one two"), 1302, 1280},
		{"another question: the shared prefix", msgs("system", long, "user", "three"), 1301, 1280},
		{"a prefix of 1,200 tokens", msgs("system", strings.Repeat("ctx ", 1200), "user", "x"), 1201, 1152},
		{"another role", msgs("user", long, "user", "one two"), 1302, 0},
		{"short prompts are never cached", msgs("user", "a b c"), 3, 0},
	} {
		u := post(tc.body)
		assert.Equal(t, tc.prompt, u.PromptTokens, tc.name)
		assert.Equal(t, tc.read, u.PromptTokensDetails.CachedTokens, tc.name)
	}
	st := srv.Stats()
	all := 1302*3 + 1301 + 1201 + 3
	assert.Equal(t, all, st.InputTokens, "cached tokens count against the limit")
	assert.Equal(t, all, st.PromptTokens)
	assert.Equal(t, 1280*2+1152, st.CacheReadInputTokens)
	assert.Zero(t, st.CacheCreationInputTokens)
	assert.Equal(t, 100_000-all-6, srv.Limits().Tokens.Remaining)

	clock.Advance(tollgatetest.OpenAICacheTTL)
	assert.Zero(t, post(msgs("system", long, "user", "one two")).PromptTokensDetails.CachedTokens, "expired")
}

// OpenAI's prompt tokens, walked token by token for the cache, are counted
// as CountTokens counts them.
func TestOpenAIPromptTokensMatchCountTokens(t *testing.T) {
	srv := newServer(t, tollgatetest.Config{OutputTokens: 1})
	rc := raw(t, srv)
	for _, s := range []string{"", "a", "Hello, world!", "input_schema", "héllo wörld 42", "日本語 テキスト", "x = y + 1;",
		"ends with space ", "--", "a1b2 c3", "\t\n", "ü", "emoji 😀 ok", "{\"k\":[1,2.5e3]}"} {
		resp, body := rc.post("/v1/chat/completions", chat(s, ""))
		require.Equal(t, 200, resp.StatusCode, body)
		assert.Contains(t, body, `"prompt_tokens":`+itoa(tollgatetest.CountTokens(s))+`,`, "%q", s)
	}
}
