package tollgatetest

import (
	"cmp"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

type anthropicRequest struct {
	Model        string             `json:"model"`
	MaxTokens    *int               `json:"max_tokens"`
	Messages     []anthropicMessage `json:"messages"`
	System       json.RawMessage    `json:"system"`
	Tools        []json.RawMessage  `json:"tools"`
	Stream       bool               `json:"stream"`
	CacheControl json.RawMessage    `json:"cache_control"`
}

type anthropicMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type anthropicTool struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"`
}

type anthropicUsage struct {
	InputTokens              int            `json:"input_tokens"`
	CacheCreationInputTokens int            `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int            `json:"cache_read_input_tokens"`
	CacheCreation            *cacheCreation `json:"cache_creation,omitempty"`
	OutputTokens             int            `json:"output_tokens"`
}

type cacheCreation struct {
	Ephemeral5m int `json:"ephemeral_5m_input_tokens"`
	Ephemeral1h int `json:"ephemeral_1h_input_tokens"`
}

// anthropicUsageOf is the usage object of a reply with prompt usage u and
// out output tokens.
func anthropicUsageOf(u promptUsage, out int) anthropicUsage {
	return anthropicUsage{
		InputTokens:              u.input,
		CacheCreationInputTokens: u.creation,
		CacheReadInputTokens:     u.read,
		CacheCreation:            &cacheCreation{Ephemeral5m: u.creation5m, Ephemeral1h: u.creation1h},
		OutputTokens:             out,
	}
}

type textBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type typeOnly struct {
	Type string `json:"type"`
}

type messageStartEvent struct {
	Type    string               `json:"type"`
	Message anthropicMessageBody `json:"message"`
}

type blockStartEvent struct {
	Type         string    `json:"type"`
	Index        int       `json:"index"`
	ContentBlock textBlock `json:"content_block"`
}

type blockDeltaEvent struct {
	Type  string    `json:"type"`
	Index int       `json:"index"`
	Delta textBlock `json:"delta"`
}

type blockStopEvent struct {
	Type  string `json:"type"`
	Index int    `json:"index"`
}

type messageDeltaEvent struct {
	Type  string `json:"type"`
	Delta struct {
		StopReason   string  `json:"stop_reason"`
		StopSequence *string `json:"stop_sequence"`
	} `json:"delta"`
	Usage anthropicUsage `json:"usage"`
}

type anthropicErrorObject struct {
	Type    string         `json:"type"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

type anthropicErrorBody struct {
	Type      string               `json:"type"`
	Error     anthropicErrorObject `json:"error"`
	RequestID string               `json:"request_id,omitempty"`
}

type anthropicMessageBody struct {
	ID           string         `json:"id"`
	Type         string         `json:"type"`
	Role         string         `json:"role"`
	Model        string         `json:"model"`
	Content      []textBlock    `json:"content"`
	StopReason   *string        `json:"stop_reason"`
	StopSequence *string        `json:"stop_sequence"`
	Usage        anthropicUsage `json:"usage"`
}

// parseAnthropic decodes and validates a Messages (or count_tokens) body,
// cache_control included, and splits its prompt into blocks.
func (x *exchange) parseAnthropic(needMaxTokens bool) (*anthropicRequest, *anthropicPrompt, bool) {
	var req anthropicRequest
	if !x.decode(&req) {
		return nil, nil, false
	}
	switch {
	case req.Model == "":
		x.badRequest("model: Field required")
		return nil, nil, false
	case len(req.Messages) == 0:
		x.badRequest("messages: Field required (at least one message)")
		return nil, nil, false
	case needMaxTokens && req.MaxTokens == nil:
		x.badRequest("max_tokens: Field required")
		return nil, nil, false
	case needMaxTokens && *req.MaxTokens < 1:
		x.badRequest("max_tokens: Input should be greater than or equal to 1")
		return nil, nil, false
	}
	p, err := buildAnthropicPrompt(&req)
	if err != nil {
		x.badRequest(err.Error())
		return nil, nil, false
	}
	return &req, p, true
}

func (x *exchange) anthropicCountTokens() {
	if !x.postOnly() || !x.authorized() {
		return
	}
	_, p, ok := x.parseAnthropic(false)
	if !ok {
		return
	}
	if x.admit(cost{countTokens: true}) == nil {
		return
	}
	if !x.wait(x.s.cfg.Latency) {
		return
	}
	x.writeJSON(http.StatusOK, struct {
		InputTokens int `json:"input_tokens"`
	}{p.total})
}

func (x *exchange) anthropicMessages() {
	if !x.postOnly() || !x.authorized() {
		return
	}
	req, p, ok := x.parseAnthropic(true)
	if !ok {
		return
	}
	cfg := &x.s.cfg
	maxTokens := *req.MaxTokens
	n, capped := cfg.replyLength(req.Model, maxTokens, x.r.Header.Get(OutputTokensHeader))
	stop := "end_turn"
	if capped {
		stop = "max_tokens"
	}
	need, take := x.outputCost(maxTokens)
	minTokens, readsCount := cfg.minCacheable(req.Model), cfg.readsCount(req.Model)
	var plan cachePlan
	t := x.admitPlanned(func(c *promptCache, now time.Time) cost {
		plan = planAnthropic(c, p, minTokens, readsCount, now)
		return cost{input: int64(plan.usage.counted), outNeed: need, outTake: take}
	}, &plan)
	if t == nil {
		return
	}
	defer t.settle()
	u := plan.usage

	msg := anthropicMessageBody{
		ID: "msg_" + randomID(24), Type: "message", Role: "assistant", Model: req.Model,
		Content:      []textBlock{},
		StopSequence: nil,
		Usage:        anthropicUsageOf(u, 0),
	}
	if !x.begin(&plan) {
		return
	}
	if req.Stream {
		x.anthropicStream(t, &msg, u, n, stop)
		return
	}
	if !x.generate(t, n) {
		return
	}
	msg.Content = append(msg.Content, textBlock{Type: "text", Text: GeneratedText(n)})
	msg.StopReason = &stop
	msg.Usage.OutputTokens = n
	x.s.countInput(u)
	if x.fault != nil && x.fault.DropMidBody {
		x.dropMidBody(msg)
		return
	}
	t.settle()
	x.writeJSON(http.StatusOK, msg)
}

// dropMidBody sends the headers and half of the JSON body v, then aborts.
func (x *exchange) dropMidBody(v any) {
	b, _ := json.Marshal(v)
	x.setHeaders()
	h := x.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	x.w.WriteHeader(http.StatusOK)
	_, _ = x.w.Write(b[:len(b)/2])
	_ = http.NewResponseController(x.w).Flush()
	if x.fault.BodyDelay > 0 {
		x.wait(x.fault.BodyDelay)
	}
	panic(http.ErrAbortHandler)
}

func (x *exchange) anthropicStream(t *ticket, msg *anthropicMessageBody, u promptUsage, n int, stop string) {
	cfg := &x.s.cfg
	st := x.startStream()
	x.s.countInput(u)

	start := *msg
	start.Usage.OutputTokens = 1
	if !st.send("message_start", messageStartEvent{Type: "message_start", Message: start}, 0) ||
		!st.send("content_block_start", blockStartEvent{Type: "content_block_start", ContentBlock: textBlock{Type: "text"}}, 0) ||
		!st.send("ping", typeOnly{Type: "ping"}, 0) {
		return
	}
	deltas := chunks(n, cfg.chunkTokens())
	failing := x.fault != nil && (x.fault.MidStreamError || x.fault.DropMidBody)
	for i, c := range deltas {
		if failing && i == failAfter(len(deltas), x.fault.MidStreamDeltas) {
			break
		}
		k := c[1] - c[0]
		if !st.send("content_block_delta", blockDeltaEvent{Type: "content_block_delta",
			Delta: textBlock{Type: "text_delta", Text: textRange(c[0], c[1])}},
			time.Duration(k)*cfg.TimePerOutputToken) {
			return
		}
		t.produce(k)
	}
	if failing {
		if x.fault.DropMidBody {
			panic(http.ErrAbortHandler)
		}
		errType := cmp.Or(x.fault.ErrorType, "overloaded_error")
		msgText := cmp.Or(x.fault.Message, "Overloaded")
		st.sendLast("error", anthropicErrorBody{Type: "error",
			Error: anthropicErrorObject{Type: errType, Message: msgText}}, t)
		return
	}
	md := messageDeltaEvent{Type: "message_delta", Usage: anthropicUsageOf(u, n)}
	md.Usage.CacheCreation = nil
	md.Delta.StopReason = stop
	_ = st.send("content_block_stop", blockStopEvent{Type: "content_block_stop"}, 0) &&
		st.send("message_delta", md, 0) &&
		st.sendLast("message_stop", typeOnly{Type: "message_stop"}, t)
}
