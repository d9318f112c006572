package fleet

import (
	"context"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate-go/tollgate/tollgatetest"
)

// agents is a small agents workload with limits far above what it uses.
func agents() Config {
	cfg := small()
	cfg.Workload = WorkloadAgents
	cfg.Agents = 3
	cfg.Duration = time.Second
	cfg.MaxTokens = 0 // the workload's default
	cfg.Conversation = Conversation{
		SystemPromptTokens: 1100, MinTaskTokens: 20, MaxTaskTokens: 40,
		MinReplyTokens: 5, MaxReplyTokens: 20, MinToolResultTokens: 10, MaxToolResultTokens: 50,
		MinTurns: 2, MaxTurns: 4,
	}
	return cfg
}

// byAgent splits the calls by agent, in the order they ended (an agent's
// calls are sequential).
func byAgent(calls []Call) map[int][]Call {
	m := map[int][]Call{}
	for _, c := range calls {
		m[c.Agent] = append(m[c.Agent], c)
	}
	return m
}

// Each turn reads what the previous one wrote (its whole prompt) and writes
// only the new blocks; the first turn of a conversation reads the shared
// tool + system prefix and writes the task. The fleet counts prompts as the
// server does, and the server's figures are what the result reports.
func TestAgentsConversationsAreCached(t *testing.T) {
	for _, stream := range []bool{false, true} {
		cfg := agents()
		cfg.Stream = stream
		res, err := Run(context.Background(), cfg, bare("a", 0))
		require.NoError(t, err)
		r := res[0]
		require.Zero(t, r.Failed)
		require.Positive(t, r.OK)
		conv := cfg.Conversation.withDefaults()
		shared := agentsToolTokens() + conv.SystemPromptTokens
		sumPrompt, sumIn, sumRead := 0, 0, 0
		conversations, cold := 0, 0
		firstEnd := time.Duration(math.MaxInt64)
		for _, c := range r.Calls {
			if c.OK {
				firstEnd = min(firstEnd, c.Start+c.Latency)
			}
		}
		for agent, calls := range byAgent(r.Calls) {
			var prev *Call
			for i := range calls {
				c := calls[i]
				if !c.OK {
					continue // cut off at the end
				}
				sumPrompt += c.PromptTokens
				sumIn += c.InputTokens
				sumRead += c.CacheReadTokens
				assert.Equal(t, c.PromptTokens, c.InputTokens+c.CacheReadTokens, "agent %d call %d: usage sums to the prompt", agent, i)
				assert.GreaterOrEqual(t, c.OutputTokens, conv.MinReplyTokens)
				assert.LessOrEqual(t, c.OutputTokens, conv.MaxReplyTokens, "the reply length the agent asked for")
				assert.Equal(t, c.InputTokens, c.CacheCreationTokens, "nothing after the last breakpoint")
				if c.Turn == 1 {
					conversations++
					if c.CacheReadTokens == 0 {
						// Sent before any response had begun: it writes the shared prefix.
						cold++
						assert.Equal(t, c.PromptTokens, c.CacheCreationTokens)
						assert.Less(t, c.Start, firstEnd, "agent %d: a call that found the cache empty was sent before any reply ended", agent)
					} else {
						assert.Equal(t, shared, c.CacheReadTokens, "agent %d: a first turn reads tool + system", agent)
					}
				} else {
					require.NotNil(t, prev, "agent %d: turn %d follows a turn", agent, c.Turn)
					assert.Equal(t, prev.Turn+1, c.Turn)
					assert.Equal(t, prev.PromptTokens, c.CacheReadTokens, "agent %d turn %d reads the previous prompt", agent, c.Turn)
					assert.Equal(t, c.PromptTokens-prev.PromptTokens, c.CacheCreationTokens)
					assert.LessOrEqual(t, c.Turn, conv.MaxTurns)
				}
				prev = &calls[i]
			}
		}
		assert.Greater(t, conversations, cfg.Agents, "conversations end and new ones start")
		assert.Positive(t, cold, "the calls sent before any response began found the cache empty")
		assert.Equal(t, r.Used.PromptTokens, sumPrompt, "stream %v", stream)
		assert.Equal(t, r.Used.InputTokens, sumIn, "the server counted input + creation")
		assert.Equal(t, r.Used.CacheReadInputTokens, sumRead)
		assert.InDelta(t, float64(sumRead)/float64(sumPrompt), r.CacheReadShare, 1e-9)
		assert.Greater(t, r.CacheReadShare, 0.5)
	}
}

// Two clients with the same seed send the same conversations.
func TestAgentsSameSeedSameConversations(t *testing.T) {
	cfg := agents()
	res, err := Run(context.Background(), cfg, bare("a", 0), bare("b", 0))
	require.NoError(t, err)
	a, b := byAgent(res[0].Calls)[1], byAgent(res[1].Calls)[1]
	n := min(len(a), len(b))
	require.Greater(t, n, 2)
	for i := range n {
		if a[i].OK && b[i].OK {
			assert.Equal(t, [3]int{a[i].Turn, a[i].PromptTokens, a[i].OutputTokens}, [3]int{b[i].Turn, b[i].PromptTokens, b[i].OutputTokens}, "call %d", i)
		}
	}
}

// A conversation ends before a turn would take it past
// MaxConversationTokens.
func TestAgentsConversationTokenCap(t *testing.T) {
	cfg := agents()
	cfg.Conversation.MaxTurns, cfg.Conversation.MinTurns = 50, 50
	cfg.Conversation.MaxConversationTokens = 1400
	res, err := Run(context.Background(), cfg, bare("a", 0))
	require.NoError(t, err)
	maxTurn := 0
	for _, c := range res[0].Calls {
		assert.LessOrEqual(t, c.PromptTokens, 1400)
		maxTurn = max(maxTurn, c.Turn)
	}
	assert.Less(t, maxTurn, 50, "the cap, not the turns, ended the conversations")
	assert.Greater(t, maxTurn, 1)
}

// A failed call is recorded and the same turn is sent again.
func TestAgentsRetryTheTurnAfterAFailure(t *testing.T) {
	cfg := agents()
	cfg.Agents = 1
	cfg.Server.FaultFunc = func(_ *http.Request, n int) *tollgatetest.Fault {
		if n%3 == 2 {
			return &tollgatetest.Fault{Status: 529}
		}
		return nil
	}
	res, err := Run(context.Background(), cfg, bare("a", 0))
	require.NoError(t, err)
	calls := res[0].Calls
	require.Positive(t, res[0].Failed)
	for i, c := range calls[:len(calls)-1] {
		if c.OK || c.Kind == KindCutOff {
			continue
		}
		assert.Equal(t, KindOverloaded, c.Kind)
		next := calls[i+1]
		assert.Equal(t, c.Turn, next.Turn, "call %d: the same turn again", i)
		assert.Equal(t, c.PromptTokens, next.PromptTokens)
	}
}

func TestAgentsConfigErrors(t *testing.T) {
	cfg := agents()
	cfg.Workload = "chatty"
	_, err := Run(context.Background(), cfg, bare("a", 0))
	assert.ErrorContains(t, err, `unknown workload "chatty"`)
	cfg = agents()
	cfg.Conversation.MinTurns, cfg.Conversation.MaxTurns = 5, 3
	_, err = Run(context.Background(), cfg, bare("a", 0))
	assert.ErrorContains(t, err, "turns: min 5 > max 3")
	cfg = agents()
	cfg.Conversation.MaxConversationTokens = 1000
	_, err = Run(context.Background(), cfg, bare("a", 0))
	assert.ErrorContains(t, err, "exceeds MaxConversationTokens")
	assert.Equal(t, agentsToolTokens()+DefaultSystemPromptTokens+DefaultMaxTaskTokens, Conversation{}.FirstPromptTokens())
	assert.Equal(t, DefaultAgentsMaxTokens, agents().withDefaults().MaxTokens)
}

// bareOpenAI is bare for Chat Completions: openai-go with retries off.
func bareOpenAI(name string) Client {
	return Client{Name: name, New: func(env Env) (*Target, error) {
		c := openai.NewClient(oaioption.WithBaseURL(env.BaseURL+"/v1"), oaioption.WithAPIKey(env.APIKey),
			oaioption.WithHTTPClient(&http.Client{Transport: env.Transport}), oaioption.WithMaxRetries(0))
		return &Target{OpenAI: &c}, nil
	}}
}

// Through Chat Completions, a conversation is a system message, the task,
// then per turn the assistant's text with its tool call and the tool's
// message; the API caches prefixes by itself, in steps of 128 tokens from
// 1,024 on, so each turn reads the previous prompt but for its last step,
// and nothing is written as cache creation (every prompt token counts).
func TestAgentsOpenAIConversationsAreCached(t *testing.T) {
	for _, stream := range []bool{false, true} {
		cfg := agents()
		cfg.API, cfg.Stream = APIOpenAI, stream
		res, err := Run(context.Background(), cfg, bareOpenAI("a"))
		require.NoError(t, err)
		r := res[0]
		require.Zero(t, r.Failed, "stream %v: the API took every message", stream)
		require.Positive(t, r.OK)
		conv := cfg.Conversation.withDefaults()
		later := 0
		for agent, calls := range byAgent(r.Calls) {
			var prev *Call
			for i := range calls {
				c := calls[i]
				if !c.OK {
					continue // cut off at the end
				}
				assert.GreaterOrEqual(t, c.OutputTokens, conv.MinReplyTokens)
				assert.LessOrEqual(t, c.OutputTokens, conv.MaxReplyTokens, "the reply length the agent asked for")
				assert.Zero(t, c.CacheCreationTokens)
				assert.Equal(t, c.PromptTokens, c.InputTokens, "agent %d call %d: the fleet counts the prompt as the server does", agent, i)
				if c.Turn > 1 {
					later++
					require.NotNil(t, prev, "agent %d: turn %d follows a turn", agent, c.Turn)
					assert.Equal(t, prev.Turn+1, c.Turn)
					assert.Greater(t, c.InputTokens, prev.InputTokens, "agent %d turn %d: the prompt grew", agent, c.Turn)
					assert.LessOrEqual(t, c.CacheReadTokens, prev.InputTokens, "agent %d turn %d", agent, c.Turn)
					assert.Greater(t, c.CacheReadTokens, prev.InputTokens-tollgatetest.OpenAICacheIncrement,
						"agent %d turn %d reads the previous prompt but for its last step", agent, c.Turn)
				}
				prev = &calls[i]
			}
		}
		assert.Positive(t, later, "stream %v: conversations went past their first turn", stream)
		assert.Equal(t, r.Used.PromptTokens, r.Used.InputTokens, "stream %v: cached tokens count as input", stream)
		assert.Greater(t, r.CacheReadShare, 0.5)
	}
}

// Each API's tool calls carry ids in its own form: toolu_… for Anthropic,
// call_… for OpenAI, and the tool's result names the same id.
func TestDialoguesNameToolCallsAsTheirAPIDoes(t *testing.T) {
	r := &run{}
	input := map[string]any{"command": "ls"}

	oa := r.newOpenAIDialogue("system", "task")
	oa.add("text", 3, 7, input, "result")
	asked, answered := oa.params.Messages[2].OfAssistant, oa.params.Messages[3].OfTool
	require.NotNil(t, asked)
	require.NotNil(t, answered)
	assert.Equal(t, "call_03_000007", asked.ToolCalls[0].OfFunction.ID)
	assert.Equal(t, "call_03_000007", answered.ToolCallID)

	an := r.newAnthropicDialogue("system", "task")
	an.add("text", 3, 7, input, "result")
	require.NotNil(t, an.params.Messages[1].OfAssistant)
	require.NotNil(t, an.params.Messages[2].OfUser)
	use := an.params.Messages[1].OfAssistant.Content[1].OfToolUse
	res := an.params.Messages[2].OfUser.Content[0].OfToolResult
	require.NotNil(t, use)
	require.NotNil(t, res)
	assert.Equal(t, "toolu_03_000007", use.ID)
	assert.Equal(t, "toolu_03_000007", res.ToolUseID)
}
