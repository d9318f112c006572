package tollgatetest

import (
	"cmp"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

type anthropicRequest struct {
	Model     string             `json:"model"`
	MaxTokens *int               `json:"max_tokens"`
	Messages  []anthropicMessage `json:"messages"`
	System    json.RawMessage    `json:"system"`
	Tools     []anthropicTool    `json:"tools"`
	Stream    bool               `json:"stream"`
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
	InputTokens              int `json:"input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	OutputTokens             int `json:"output_tokens"`
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

// parseAnthropic decodes and validates a Messages (or count_tokens) body.
func (x *exchange) parseAnthropic(needMaxTokens bool) (*anthropicRequest, bool) {
	var req anthropicRequest
	if !x.decode(&req) {
		return nil, false
	}
	switch {
	case req.Model == "":
		x.badRequest("model: Field required")
		return nil, false
	case len(req.Messages) == 0:
		x.badRequest("messages: Field required (at least one message)")
		return nil, false
	case needMaxTokens && req.MaxTokens == nil:
		x.badRequest("max_tokens: Field required")
		return nil, false
	case needMaxTokens && *req.MaxTokens < 1:
		x.badRequest("max_tokens: Input should be greater than or equal to 1")
		return nil, false
	}
	return &req, true
}

func (x *exchange) anthropicCountTokens() {
	if !x.postOnly() || !x.authorized() {
		return
	}
	req, ok := x.parseAnthropic(false)
	if !ok {
		return
	}
	if x.admit(cost{requestsOnly: true}) == nil {
		return
	}
	if !x.wait(x.s.cfg.Latency) {
		return
	}
	x.writeJSON(http.StatusOK, struct {
		InputTokens int `json:"input_tokens"`
	}{anthropicInputTokens(req)})
}

func (x *exchange) anthropicMessages() {
	if !x.postOnly() || !x.authorized() {
		return
	}
	req, ok := x.parseAnthropic(true)
	if !ok {
		return
	}
	cfg := &x.s.cfg
	in := anthropicInputTokens(req)
	maxTokens := *req.MaxTokens
	n, capped := cfg.replyLength(req.Model, maxTokens)
	stop := "end_turn"
	if capped {
		stop = "max_tokens"
	}
	need, take := x.outputCost(maxTokens)
	t := x.admit(cost{input: int64(in), outNeed: need, outTake: take})
	if t == nil {
		return
	}
	defer t.settle()

	msg := anthropicMessageBody{
		ID: "msg_" + randomID(24), Type: "message", Role: "assistant", Model: req.Model,
		Content:      []textBlock{},
		StopSequence: nil,
		Usage:        anthropicUsage{InputTokens: in},
	}
	if req.Stream {
		if !x.wait(cfg.Latency) {
			return
		}
		x.anthropicStream(t, &msg, n, stop)
		return
	}
	if !x.wait(cfg.Latency + time.Duration(n)*cfg.TimePerOutputToken) {
		return
	}
	msg.Content = append(msg.Content, textBlock{Type: "text", Text: GeneratedText(n)})
	msg.StopReason = &stop
	msg.Usage.OutputTokens = n
	x.s.countInput(in)
	if x.fault != nil && x.fault.DropMidBody {
		x.dropMidBody(msg)
		return
	}
	t.produce(n)
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

func (x *exchange) anthropicStream(t *ticket, msg *anthropicMessageBody, n int, stop string) {
	cfg := &x.s.cfg
	st := x.startStream()
	x.s.countInput(msg.Usage.InputTokens)

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
	md := messageDeltaEvent{Type: "message_delta",
		Usage: anthropicUsage{InputTokens: msg.Usage.InputTokens, OutputTokens: n}}
	md.Delta.StopReason = stop
	_ = st.send("content_block_stop", blockStopEvent{Type: "content_block_stop"}, 0) &&
		st.send("message_delta", md, 0) &&
		st.sendLast("message_stop", typeOnly{Type: "message_stop"}, t)
}
