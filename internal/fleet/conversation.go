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
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

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

// agentsOpenAITool is agentsTool as a Chat Completions function.
var agentsOpenAITool = openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
	Name:        DefaultAgentsToolName,
	Description: openai.String(defaultAgentsToolDesc),
	Parameters: shared.FunctionParameters{
		"type":       "object",
		"properties": agentsTool.InputSchema.Properties,
		"required":   agentsTool.InputSchema.Required,
	},
})

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

// toolUseInput is the input of the agent's n-th tool call and its size in
// tokens as the fake API counts a tool_use block (name + input JSON).
func toolUseInput(n int) (map[string]any, int) {
	in := map[string]any{"command": "make test STEP=" + strconv.Itoa(n)}
	b, _ := json.Marshal(in)
	return in, tollgatetest.CountTokens(DefaultAgentsToolName) + tollgatetest.CountTokens(string(b))
}

// dialogue is a conversation's messages in one API's terms.
type dialogue interface {
	// send makes the call of the next turn, asking for a reply of reply
	// tokens, starting from c, and returns the reply's text when it
	// succeeded.
	send(ctx context.Context, c Call, reply int) (Call, string, bool)
	// add appends the model's reply text with its tool call (the agent's
	// n-th, with input), and the tool's result, with the cache
	// breakpoint on the result where the API takes breakpoints.
	add(text string, agent, n int, input map[string]any, result string)
}

// converse runs conversations until the run stops.
func (r *run) converse(ctx context.Context, agent int, rng *rand.Rand) {
	cc := r.cfg.Conversation
	system := SystemPrompt(r.cfg.Seed, cc.SystemPromptTokens)
	calls := 0 // tool calls made by this agent, for their ids
	for !r.stopped.Load() && ctx.Err() == nil {
		task := Prompt(rng, draw(rng, cc.MinTaskTokens, cc.MaxTaskTokens))
		var d dialogue
		if r.cfg.API == APIOpenAI {
			d = r.newOpenAIDialogue(system, task)
		} else {
			d = r.newAnthropicDialogue(system, task)
		}
		tokens := agentsToolTokens() + cc.SystemPromptTokens + tollgatetest.CountTokens(task)
		turns := draw(rng, cc.MinTurns, cc.MaxTurns)
		for turn := 0; turn < turns && !r.stopped.Load() && ctx.Err() == nil; {
			reply := draw(rng, cc.MinReplyTokens, cc.MaxReplyTokens)
			text, ok := "", false
			for !ok && !r.stopped.Load() && ctx.Err() == nil { // the same turn until it succeeds
				var c Call
				c, text, ok = d.send(ctx, Call{Agent: agent, PromptTokens: tokens, Turn: turn + 1}, reply)
				r.record(c)
			}
			if !ok {
				return
			}
			turn++
			calls++
			input, toolUseTokens := toolUseInput(calls)
			result := Prompt(rng, draw(rng, cc.MinToolResultTokens, cc.MaxToolResultTokens))
			grown := tokens + tollgatetest.CountTokens(text) + toolUseTokens + tollgatetest.CountTokens(result)
			if turn >= turns || grown > cc.MaxConversationTokens {
				break
			}
			d.add(text, agent, calls, input, result)
			tokens = grown
		}
	}
}

// anthropicDialogue is a conversation through the Messages API, with
// cache_control on the system prompt and on the newest block.
type anthropicDialogue struct {
	r      *run
	params anthropic.MessageNewParams
	newest *anthropic.CacheControlEphemeralParam // the breakpoint on the newest block
}

func (r *run) newAnthropicDialogue(system, task string) *anthropicDialogue {
	d := &anthropicDialogue{r: r, params: anthropic.MessageNewParams{
		Model:     anthropic.Model(r.cfg.Model),
		MaxTokens: int64(r.cfg.MaxTokens),
		Tools:     []anthropic.ToolUnionParam{{OfTool: &agentsTool}},
		System: []anthropic.TextBlockParam{{Text: system,
			CacheControl: anthropic.NewCacheControlEphemeralParam()}},
	}}
	first := anthropic.TextBlockParam{Text: task, CacheControl: anthropic.NewCacheControlEphemeralParam()}
	d.params.Messages = []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.ContentBlockParamUnion{OfText: &first})}
	d.newest = &first.CacheControl
	return d
}

func (d *anthropicDialogue) send(ctx context.Context, c Call, reply int) (Call, string, bool) {
	c, m := d.r.call(ctx, c, d.params, option.WithHeader(tollgatetest.OutputTokensHeader, strconv.Itoa(reply)))
	if m == nil {
		return c, "", false
	}
	return c, replyText(m), true
}

func (d *anthropicDialogue) add(text string, agent, n int, input map[string]any, result string) {
	id := fmt.Sprintf("toolu_%02d_%06d", agent, n)
	res := anthropic.NewToolResultBlock(id, result, false)
	*d.newest = anthropic.CacheControlEphemeralParam{} // the breakpoint moves to the newest block
	res.OfToolResult.CacheControl = anthropic.NewCacheControlEphemeralParam()
	d.newest = &res.OfToolResult.CacheControl
	d.params.Messages = append(d.params.Messages,
		anthropic.NewAssistantMessage(anthropic.NewTextBlock(text), anthropic.NewToolUseBlock(id, input, DefaultAgentsToolName)),
		anthropic.NewUserMessage(res))
}

// openAIDialogue is a conversation through Chat Completions, which caches
// prompt prefixes by itself.
type openAIDialogue struct {
	r      *run
	params openai.ChatCompletionNewParams
}

func (r *run) newOpenAIDialogue(system, task string) *openAIDialogue {
	return &openAIDialogue{r: r, params: openai.ChatCompletionNewParams{
		Model:               openai.ChatModel(r.cfg.Model),
		MaxCompletionTokens: openai.Int(int64(r.cfg.MaxTokens)),
		Tools:               []openai.ChatCompletionToolUnionParam{agentsOpenAITool},
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(system), openai.UserMessage(task)},
	}}
}

func (d *openAIDialogue) send(ctx context.Context, c Call, reply int) (Call, string, bool) {
	return d.r.callOpenAI(ctx, c, d.params, oaioption.WithHeader(tollgatetest.OutputTokensHeader, strconv.Itoa(reply)))
}

func (d *openAIDialogue) add(text string, agent, n int, input map[string]any, result string) {
	id := fmt.Sprintf("call_%02d_%06d", agent, n)
	args, _ := json.Marshal(input)
	call := openai.ChatCompletionMessageToolCallUnionParam{OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
		ID:       id,
		Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: DefaultAgentsToolName, Arguments: string(args)},
	}}
	asked := openai.ChatCompletionAssistantMessageParam{ToolCalls: []openai.ChatCompletionMessageToolCallUnionParam{call}}
	asked.Content.OfString = openai.String(text)
	d.params.Messages = append(d.params.Messages,
		openai.ChatCompletionMessageParamUnion{OfAssistant: &asked}, openai.ToolMessage(result, id))
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
