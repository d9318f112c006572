package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// Workload is what the agents send.
type Workload string

const (
	// WorkloadOneShot (the default, also "") is one call after another,
	// each a single user message of a size drawn from [MinPromptTokens,
	// MaxPromptTokens], with no caching.
	WorkloadOneShot Workload = "oneshot"

	// WorkloadAgents is a coding-agent fleet: multi-turn conversations with
	// tool calls and prompt caching, as Conversation describes.
	WorkloadAgents Workload = "agents"
)

// Defaults of the agents workload, for the zero fields of a Conversation.
const (
	DefaultSystemPromptTokens  = 6000
	DefaultMinTaskTokens       = 200
	DefaultMaxTaskTokens       = 800
	DefaultMinReplyTokens      = 100
	DefaultMaxReplyTokens      = 600
	DefaultMinToolResultTokens = 300
	DefaultMaxToolResultTokens = 2000
	DefaultMinTurns            = 8
	DefaultMaxTurns            = 20
	DefaultConversationTokens  = 100_000
	DefaultAgentsMaxTokens     = 8192
	DefaultAgentsToolName      = "bash"
	defaultAgentsToolDesc      = "Run a shell command in the repository and return what it printed."
)

// Conversation shapes the agents workload. Every agent runs conversations
// one after another. A conversation is, in cache order: one tool definition
// (bash), a system prompt of SystemPromptTokens tokens that every agent
// shares (drawn once from the run's seed), and a task message; then, turn
// after turn, the model's reply as the API returned it, followed by a call
// of the tool (an assistant turn of a text block and a tool_use block of a
// dozen tokens), and the tool's result (a user turn of one tool_result
// block). cache_control sits on the system prompt and on the newest block
// (the task, then each tool_result), as agent harnesses place it. Each
// turn's reply length is drawn by the agent and asked of the fake API with
// tollgatetest.OutputTokensHeader, so every client's agents send the same
// conversations. A conversation ends after its number of turns, or before
// a turn would take its prompt past MaxConversationTokens; a failed call
// is recorded and the same turn is sent again (the run going on). Zero
// fields take the defaults (DefaultSystemPromptTokens and friends).
type Conversation struct {
	// SystemPromptTokens is the shared system prompt's size (6,000).
	SystemPromptTokens int
	// Task sizes are drawn from [MinTaskTokens, MaxTaskTokens] (200–800).
	MinTaskTokens, MaxTaskTokens int
	// Reply lengths are drawn per turn from [MinReplyTokens,
	// MaxReplyTokens] (100–600).
	MinReplyTokens, MaxReplyTokens int
	// Tool results are drawn from [MinToolResultTokens,
	// MaxToolResultTokens] (300–2,000).
	MinToolResultTokens, MaxToolResultTokens int
	// A conversation's turns are drawn from [MinTurns, MaxTurns] (8–20).
	MinTurns, MaxTurns int
	// MaxConversationTokens caps a conversation's prompt (100,000).
	MaxConversationTokens int
}

func (c Conversation) withDefaults() Conversation {
	or := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	or(&c.SystemPromptTokens, DefaultSystemPromptTokens)
	or(&c.MinTaskTokens, DefaultMinTaskTokens)
	or(&c.MaxTaskTokens, DefaultMaxTaskTokens)
	or(&c.MinReplyTokens, DefaultMinReplyTokens)
	or(&c.MaxReplyTokens, DefaultMaxReplyTokens)
	or(&c.MinToolResultTokens, DefaultMinToolResultTokens)
	or(&c.MaxToolResultTokens, DefaultMaxToolResultTokens)
	or(&c.MinTurns, DefaultMinTurns)
	or(&c.MaxTurns, DefaultMaxTurns)
	or(&c.MaxConversationTokens, DefaultConversationTokens)
	return c
}

func (c Conversation) validate() error {
	for _, r := range []struct {
		name   string
		lo, hi int
	}{
		{"task sizes", c.MinTaskTokens, c.MaxTaskTokens},
		{"reply lengths", c.MinReplyTokens, c.MaxReplyTokens},
		{"tool result sizes", c.MinToolResultTokens, c.MaxToolResultTokens},
		{"turns", c.MinTurns, c.MaxTurns},
	} {
		if r.lo > r.hi {
			return fmt.Errorf("fleet: conversation %s: min %d > max %d", r.name, r.lo, r.hi)
		}
	}
	if first := c.FirstPromptTokens(); first > c.MaxConversationTokens {
		return fmt.Errorf("fleet: a conversation's first prompt (up to %d tokens) exceeds MaxConversationTokens %d", first, c.MaxConversationTokens)
	}
	return nil
}

// FirstPromptTokens is the largest first prompt of a conversation: the tool
// definition, the system prompt and the largest task. With a cold cache,
// that is what the input-tokens limit must admit in one go.
func (c Conversation) FirstPromptTokens() int {
	c = c.withDefaults()
	return agentsToolTokens() + c.SystemPromptTokens + c.MaxTaskTokens
}

// agentsTool is the one tool the agents offer.
var agentsTool = anthropic.ToolParam{
	Name:        DefaultAgentsToolName,
	Description: anthropic.String(defaultAgentsToolDesc),
	InputSchema: anthropic.ToolInputSchemaParam{
		Properties: map[string]any{"command": map[string]any{"type": "string", "description": "the command line"}},
		Required:   []string{"command"},
	},
}

// agentsToolTokens is the tool definition's size as the fake API counts it:
// name, description and the JSON of its input schema.
func agentsToolTokens() int {
	schema, _ := json.Marshal(agentsTool.InputSchema)
	return tollgatetest.CountTokens(agentsTool.Name) + tollgatetest.CountTokens(defaultAgentsToolDesc) + tollgatetest.CountTokens(string(schema))
}

// SystemPrompt returns the system prompt every agent of a run shares: size
// tokens drawn from a generator seeded with seed alone.
func SystemPrompt(seed uint64, size int) string {
	return Prompt(rand.New(rand.NewPCG(seed, 0x73797374656d)), size)
}

// conversation is one agent's conversation in progress.
type conversation struct {
	params   anthropic.MessageNewParams
	tokens   int                                   // the prompt's size
	newest   *anthropic.CacheControlEphemeralParam // the breakpoint on the newest block
	turn     int                                   // turns answered so far
	turns    int                                   // turns it will have
	maxToken int
}

// toolUseInput is the input of the agent's n-th tool call and its size in
// tokens as the fake API counts a tool_use block (name + input JSON).
func toolUseInput(n int) (map[string]any, int) {
	in := map[string]any{"command": "make test STEP=" + strconv.Itoa(n)}
	b, _ := json.Marshal(in)
	return in, tollgatetest.CountTokens(DefaultAgentsToolName) + tollgatetest.CountTokens(string(b))
}

// converse runs conversations until the run stops.
func (r *run) converse(ctx context.Context, agent int, rng *rand.Rand) {
	cc := r.cfg.Conversation
	system := SystemPrompt(r.cfg.Seed, cc.SystemPromptTokens)
	calls := 0 // tool calls made by this agent, for their ids
	for !r.stopped.Load() && ctx.Err() == nil {
		task := Prompt(rng, draw(rng, cc.MinTaskTokens, cc.MaxTaskTokens))
		cv := &conversation{
			params: anthropic.MessageNewParams{
				Model:     anthropic.Model(r.cfg.Model),
				MaxTokens: int64(r.cfg.MaxTokens),
				Tools:     []anthropic.ToolUnionParam{{OfTool: &agentsTool}},
				System: []anthropic.TextBlockParam{{Text: system,
					CacheControl: anthropic.NewCacheControlEphemeralParam()}},
			},
			tokens:   agentsToolTokens() + cc.SystemPromptTokens,
			turns:    draw(rng, cc.MinTurns, cc.MaxTurns),
			maxToken: cc.MaxConversationTokens,
		}
		first := anthropic.TextBlockParam{Text: task, CacheControl: anthropic.NewCacheControlEphemeralParam()}
		cv.params.Messages = []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.ContentBlockParamUnion{OfText: &first})}
		cv.newest = &first.CacheControl
		cv.tokens += tollgatetest.CountTokens(task)

		for cv.turn < cv.turns && !r.stopped.Load() && ctx.Err() == nil {
			reply := draw(rng, cc.MinReplyTokens, cc.MaxReplyTokens)
			var m *anthropic.Message
			for m == nil && !r.stopped.Load() && ctx.Err() == nil { // the same turn until it succeeds
				var c Call
				c, m = r.call(ctx, Call{Agent: agent, PromptTokens: cv.tokens, Turn: cv.turn + 1}, cv.params,
					option.WithHeader(tollgatetest.OutputTokensHeader, strconv.Itoa(reply)))
				r.record(c)
			}
			if m == nil {
				return
			}
			cv.turn++
			calls++
			text := replyText(m)
			input, toolUseTokens := toolUseInput(calls)
			result := Prompt(rng, draw(rng, cc.MinToolResultTokens, cc.MaxToolResultTokens))
			grown := cv.tokens + tollgatetest.CountTokens(text) + toolUseTokens + tollgatetest.CountTokens(result)
			if cv.turn >= cv.turns || grown > cv.maxToken {
				break
			}
			id := fmt.Sprintf("toolu_%02d_%06d", agent, calls)
			res := anthropic.NewToolResultBlock(id, result, false)
			*cv.newest = anthropic.CacheControlEphemeralParam{} // the breakpoint moves to the newest block
			res.OfToolResult.CacheControl = anthropic.NewCacheControlEphemeralParam()
			cv.newest = &res.OfToolResult.CacheControl
			cv.params.Messages = append(cv.params.Messages,
				anthropic.NewAssistantMessage(anthropic.NewTextBlock(text), anthropic.NewToolUseBlock(id, input, DefaultAgentsToolName)),
				anthropic.NewUserMessage(res))
			cv.tokens = grown
		}
	}
}

// replyText is the text of a reply's text blocks.
func replyText(m *anthropic.Message) string {
	var b strings.Builder
	for _, blk := range m.Content {
		if blk.Type == "text" {
			b.WriteString(blk.Text)
		}
	}
	return b.String()
}

// draw returns a number drawn uniformly from [lo, hi].
func draw(rng *rand.Rand, lo, hi int) int { return lo + rng.IntN(hi-lo+1) }
