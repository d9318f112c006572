package tollgatetest

import (
	"cmp"
	"encoding/json"
	"net/http"
	"time"
)

type openAIRequest struct {
	Model               string          `json:"model"`
	Messages            []openAIMessage `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Tools []openAITool `json:"tools"`
}

type openAIMessage struct {
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	ToolCalls []struct {
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type openAITool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

type openAIErrorObject struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   any    `json:"param"`
	Code    any    `json:"code"`
}

type openAIErrorBody struct {
	Error openAIErrorObject `json:"error"`
}

type openAIUsage struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	TotalTokens         int `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
		AudioTokens  int `json:"audio_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens          int `json:"reasoning_tokens"`
		AudioTokens              int `json:"audio_tokens"`
		AcceptedPredictionTokens int `json:"accepted_prediction_tokens"`
		RejectedPredictionTokens int `json:"rejected_prediction_tokens"`
	} `json:"completion_tokens_details"`
}

type chatMessage struct {
	Role        string  `json:"role"`
	Content     string  `json:"content"`
	Refusal     *string `json:"refusal"`
	Annotations []any   `json:"annotations"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             openAIUsage  `json:"usage"`
	ServiceTier       string       `json:"service_tier"`
	SystemFingerprint *string      `json:"system_fingerprint"`
}

type chunkDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chunkChoice struct {
	Index        int        `json:"index"`
	Delta        chunkDelta `json:"delta"`
	Logprobs     *struct{}  `json:"logprobs"`
	FinishReason *string    `json:"finish_reason"`
}

type chatChunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	ServiceTier       string          `json:"service_tier"`
	SystemFingerprint *string         `json:"system_fingerprint"`
	Choices           []chunkChoice   `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

func makeUsage(u promptUsage, out int) openAIUsage {
	usage := openAIUsage{PromptTokens: u.prompt, CompletionTokens: out, TotalTokens: u.prompt + out}
	usage.PromptTokensDetails.CachedTokens = u.read
	return usage
}

func (x *exchange) openAIChat() {
	if !x.postOnly() || !x.authorized() {
		return
	}
	var req openAIRequest
	if !x.decode(&req) {
		return
	}
	maxTokens := 0
	for _, p := range []*int{req.MaxCompletionTokens, req.MaxTokens} {
		if p != nil {
			maxTokens = *p
			break
		}
	}
	switch {
	case req.Model == "":
		x.badRequest("you must provide a model parameter")
		return
	case len(req.Messages) == 0:
		x.badRequest("[] is too short - 'messages'")
		return
	case (req.MaxCompletionTokens != nil || req.MaxTokens != nil) && maxTokens < 1:
		x.badRequest("max_tokens / max_completion_tokens must be at least 1")
		return
	}
	cfg := &x.s.cfg
	p := buildOpenAIPrompt(&req)
	n, capped := cfg.replyLength(req.Model, maxTokens, x.r.Header.Get(OutputTokensHeader))
	finish := "stop"
	if capped {
		finish = "length"
	}
	reservation := maxTokens
	if reservation == 0 {
		reservation = n
	}
	need, take := x.outputCost(reservation)
	var plan cachePlan
	t := x.admitPlanned(func(c *promptCache, now time.Time) cost {
		plan = planOpenAI(c, p, now)
		return cost{input: int64(plan.usage.counted), outNeed: need, outTake: take}
	}, &plan)
	if t == nil {
		return
	}
	defer t.settle()
	u := plan.usage

	id := "chatcmpl-" + randomID(29)
	created := cfg.now().Unix()
	if !x.begin(&plan) {
		return
	}
	if req.Stream {
		usage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		x.openAIStream(t, id, created, req.Model, u, n, finish, usage)
		return
	}
	if !x.generate(t, n) {
		return
	}
	body := chatCompletion{
		ID: id, Object: "chat.completion", Created: created, Model: req.Model,
		Choices: []chatChoice{{Message: chatMessage{Role: "assistant", Content: GeneratedText(n),
			Annotations: []any{}}, FinishReason: finish}},
		Usage:       makeUsage(u, n),
		ServiceTier: "default",
	}
	x.s.countInput(u)
	if x.fault != nil && x.fault.DropMidBody {
		x.dropMidBody(body)
		return
	}
	t.settle()
	x.writeJSON(http.StatusOK, body)
}

func (x *exchange) openAIStream(t *ticket, id string, created int64, model string, u promptUsage, n int, finish string, includeUsage bool) {
	cfg := &x.s.cfg
	st := x.startStream()
	x.s.countInput(u)
	chunk := func(choices []chunkChoice) chatChunk {
		c := chatChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
			ServiceTier: "default", Choices: choices}
		if includeUsage {
			c.Usage = json.RawMessage("null")
		}
		return c
	}
	empty := ""
	if !st.send("", chunk([]chunkChoice{{Delta: chunkDelta{Role: "assistant", Content: &empty}}}), 0) {
		return
	}
	deltas := chunks(n, cfg.chunkTokens())
	failing := x.fault != nil && (x.fault.MidStreamError || x.fault.DropMidBody)
	for i, c := range deltas {
		if failing && i == failAfter(len(deltas), x.fault.MidStreamDeltas) {
			break
		}
		k := c[1] - c[0]
		text := textRange(c[0], c[1])
		if !st.send("", chunk([]chunkChoice{{Delta: chunkDelta{Content: &text}}}),
			time.Duration(k)*cfg.TimePerOutputToken) {
			return
		}
		t.produce(k)
	}
	if failing {
		if x.fault.DropMidBody {
			panic(http.ErrAbortHandler)
		}
		errType := cmp.Or(x.fault.ErrorType, "server_error")
		msg := cmp.Or(x.fault.Message, "The server had an error while processing your request. Sorry about that!")
		st.sendLast("", openAIErrorBody{Error: openAIErrorObject{Message: msg, Type: errType}}, t)
		return
	}
	if !st.send("", chunk([]chunkChoice{{Delta: chunkDelta{}, FinishReason: &finish}}), 0) {
		return
	}
	if includeUsage {
		last := chunk([]chunkChoice{})
		last.Usage, _ = json.Marshal(makeUsage(u, n))
		if !st.send("", last, 0) {
			return
		}
	}
	st.sendLast("", "[DONE]", t)
}
