package fleet

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
)

// Call is what one agent's call came to.
type Call struct {
	Agent   int           `json:"agent"`
	Group   string        `json:"group,omitempty"` // the agent's group (Config.Groups)
	Start   time.Duration `json:"start_ns"`        // since the run started
	Latency time.Duration `json:"latency_ns"`      // until the reply (or stream) was read in full, or the error
	OK      bool          `json:"ok"`
	// Kind names why a call did not succeed: one of the Kind constants, or
	// a client's own (Target.Classify); empty for a success.
	Kind   string `json:"kind,omitempty"`
	Status int    `json:"status,omitempty"` // the HTTP status of the error, when there was one
	// Attempts is how many HTTP attempts the call sent, as the fleet's
	// transport counted them.
	Attempts     int `json:"attempts"`
	PromptTokens int `json:"prompt_tokens"` // the prompt's size under tollgatetest.CountTokens
	// Turn is the call's turn in its conversation, from 1 (the agents
	// workload); 0 for a one-shot call.
	Turn int `json:"turn,omitempty"`
	// InputTokens, CacheReadTokens, CacheCreationTokens and OutputTokens
	// are the usage the reply reported; InputTokens is input_tokens +
	// cache_creation_input_tokens, what the input-tokens limit counts on
	// most models.
	InputTokens         int `json:"input_tokens"`
	CacheReadTokens     int `json:"cache_read_tokens,omitempty"`
	CacheCreationTokens int `json:"cache_creation_tokens,omitempty"`
	OutputTokens        int `json:"output_tokens"`
}

// The kinds of unsuccessful calls the fleet tells apart by itself.
const (
	// KindCutOff is a call stopped by the end of the run: not a failure.
	KindCutOff      = "cut_off"
	KindRateLimited = "rate_limited" // the caller got a 429
	KindOverloaded  = "overloaded"   // the caller got a 529
	KindServerError = "server_error" // another 5xx
	KindClientError = "client_error" // another 4xx
	KindStream      = "stream_error" // the stream broke after it started
	KindTransport   = "transport"    // no response
)

// agent loops calls until the run stops: one after another, or at its
// group's pace.
func (r *run) agent(ctx context.Context, a agentSpec) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(a.n)+1))
	if a.group.Name != "" {
		ctx = context.WithValue(ctx, groupKey{}, a.group.Name)
	}
	if r.cfg.Workload == WorkloadAgents {
		r.converse(ctx, a.n, rng)
		return
	}
	next := r.start
	if every := a.group.Every; every > 0 {
		next = next.Add(every * time.Duration(a.slot) / time.Duration(a.group.Agents))
	}
	for !r.stopped.Load() && ctx.Err() == nil {
		if every := a.group.Every; every > 0 {
			if !r.sleepUntil(ctx, next) {
				return
			}
			next = next.Add(every)
			if now := time.Now(); next.Before(now) {
				next = now
			}
		}
		size := r.cfg.MinPromptTokens + rng.IntN(r.cfg.MaxPromptTokens-r.cfg.MinPromptTokens+1)
		prompt := Prompt(rng, size)
		c := Call{Agent: a.n, Group: a.group.Name, PromptTokens: countWords(prompt)}
		if r.cfg.API == APIOpenAI {
			c, _, _ = r.callOpenAI(ctx, c, openai.ChatCompletionNewParams{
				Model:               openai.ChatModel(r.cfg.Model),
				MaxCompletionTokens: openai.Int(int64(r.cfg.MaxTokens)),
				Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
			})
		} else {
			params := anthropic.MessageNewParams{
				Model:     anthropic.Model(r.cfg.Model),
				MaxTokens: int64(r.cfg.MaxTokens),
				Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(prompt))},
			}
			c, _ = r.call(ctx, c, params)
		}
		r.record(c)
	}
}

// sleepUntil waits until t, or until the run stops; it reports whether t
// came first.
func (r *run) sleepUntil(ctx context.Context, t time.Time) bool {
	for !r.stopped.Load() {
		d := time.Until(t)
		if d <= 0 {
			return true
		}
		timer := time.NewTimer(min(d, 100*time.Millisecond)) // looks at stopped now and then
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
	return false
}

// call makes one call with params and says what came of it, starting from
// c (its agent, prompt size and turn), and returns the reply when it
// succeeded. opts are added to the call's request options.
func (r *run) call(ctx context.Context, c Call, params anthropic.MessageNewParams, opts ...option.RequestOption) (Call, *anthropic.Message) {
	var attempts atomic.Int32
	ctx = context.WithValue(ctx, attemptsKey{}, &attempts)
	t0 := time.Now()
	c.Start = t0.Sub(r.start)
	if c.Group == "" {
		c.Group = GroupOf(ctx)
	}
	var reply *anthropic.Message
	do := func(ctx context.Context) error {
		if r.cfg.Stream {
			m, err := r.stream(ctx, params, opts)
			reply = m
			return err
		}
		m, err := r.target.Client.Messages.New(ctx, params, opts...)
		reply = m
		return err
	}
	err := r.wrap(ctx, do)
	c.Latency = time.Since(t0)
	c.Attempts = int(attempts.Load())
	if err == nil && reply != nil {
		u := reply.Usage
		c.OK = true
		c.InputTokens = int(u.InputTokens + u.CacheCreationInputTokens)
		c.CacheReadTokens = int(u.CacheReadInputTokens)
		c.CacheCreationTokens = int(u.CacheCreationInputTokens)
		c.OutputTokens = int(u.OutputTokens)
		return c, reply
	}
	c.Kind, c.Status = r.classify(ctx, err)
	return c, nil
}

// stream makes a streaming call and reads every event into the message.
func (r *run) stream(ctx context.Context, params anthropic.MessageNewParams, opts []option.RequestOption) (*anthropic.Message, error) {
	s := r.target.Client.Messages.NewStreaming(ctx, params, opts...)
	defer s.Close()
	var msg anthropic.Message
	events := 0
	for s.Next() {
		events++
		if err := msg.Accumulate(s.Current()); err != nil {
			return nil, &streamError{err}
		}
	}
	if err := s.Err(); err != nil {
		if events > 0 {
			return nil, &streamError{err}
		}
		return nil, err
	}
	return &msg, nil
}

// callOpenAI makes one Chat Completions call with params through the
// OpenAI SDK (streamed with its usage in the last chunk when the fleet
// streams), starting from c, and returns the reply's text when it
// succeeded. opts are added to the call's request options.
func (r *run) callOpenAI(ctx context.Context, c Call, params openai.ChatCompletionNewParams, opts ...oaioption.RequestOption) (Call, string, bool) {
	var attempts atomic.Int32
	ctx = context.WithValue(ctx, attemptsKey{}, &attempts)
	t0 := time.Now()
	c.Start = t0.Sub(r.start)
	if c.Group == "" {
		c.Group = GroupOf(ctx)
	}
	var reply openai.ChatCompletion
	do := func(ctx context.Context) error {
		client := r.target.OpenAI
		if !r.cfg.Stream {
			cc, err := client.Chat.Completions.New(ctx, params, opts...)
			if err == nil {
				reply = *cc
			}
			return err
		}
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		s := client.Chat.Completions.NewStreaming(ctx, params, opts...)
		defer s.Close()
		var acc openai.ChatCompletionAccumulator
		chunks := 0
		for s.Next() {
			chunks++
			acc.AddChunk(s.Current())
		}
		if err := s.Err(); err != nil {
			if chunks > 0 {
				return &streamError{err}
			}
			return err
		}
		reply = acc.ChatCompletion
		return nil
	}
	err := r.wrap(ctx, do)
	c.Latency = time.Since(t0)
	c.Attempts = int(attempts.Load())
	if err == nil {
		u := reply.Usage
		c.OK = true
		c.InputTokens = int(u.PromptTokens)
		c.CacheReadTokens = int(u.PromptTokensDetails.CachedTokens)
		c.OutputTokens = int(u.CompletionTokens)
		text := ""
		if len(reply.Choices) > 0 {
			text = reply.Choices[0].Message.Content
		}
		return c, text, true
	}
	c.Kind, c.Status = r.classify(ctx, err)
	return c, "", false
}

// streamError is an error after the first event of a stream.
type streamError struct{ err error }

func (e *streamError) Error() string { return "stream: " + e.err.Error() }
func (e *streamError) Unwrap() error { return e.err }

func (r *run) classify(ctx context.Context, err error) (kind string, status int) {
	var apiErr *anthropic.Error
	var oaiErr *openai.Error
	switch {
	case errors.As(err, &apiErr):
		status = apiErr.StatusCode
	case errors.As(err, &oaiErr):
		status = oaiErr.StatusCode
	}
	if errors.Is(err, errStopped) || (ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		return KindCutOff, status
	}
	if r.target.Classify != nil {
		if k := r.target.Classify(err); k != "" {
			return k, status
		}
	}
	var se *streamError
	switch {
	case errors.As(err, &se):
		return KindStream, status
	case status == http.StatusTooManyRequests:
		return KindRateLimited, status
	case status == 529:
		return KindOverloaded, status
	case status >= 500:
		return KindServerError, status
	case status >= 400:
		return KindClientError, status
	}
	return KindTransport, status
}

// Prompt returns a prompt of exactly size tokens under
// tollgatetest.CountTokens: size words drawn from rng, one token each.
func Prompt(rng *rand.Rand, size int) string {
	var b strings.Builder
	b.Grow(size * 8)
	for i := range size {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.String()
}

func countWords(s string) int { return len(strings.Fields(s)) }

// words are letters only, so each is one token to tollgatetest.
var words = strings.Fields(`the of and to in is was for that on with as by at from his her an
be this are or had which not but were have one all their there been has when who they will more
no if out so said what up its about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go came
right used take three rate limit token bucket request response header retry budget breaker stream
model agent queue pace wait minute second window burst refill capacity admit reserve settle usage`)

// ReplyLengths returns a tollgatetest OutputTokensFunc drawing lengths
// uniformly from [lo, hi] with a generator of its own, seeded with seed:
// the reply lengths of a run's fake API.
func ReplyLengths(seed uint64, lo, hi int) func(string, int) int {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 0x7265706c79))
	return func(string, int) int {
		mu.Lock()
		defer mu.Unlock()
		return lo + rng.IntN(hi-lo+1)
	}
}

// attemptsKey carries a call's attempt counter in its context.
type attemptsKey struct{}

func countAttempt(ctx context.Context) {
	if n, ok := ctx.Value(attemptsKey{}).(*atomic.Int32); ok {
		n.Add(1)
	}
}

// wrap runs do through the target's Wrap, if it has one.
func (r *run) wrap(ctx context.Context, do func(context.Context) error) error {
	if r.target.Wrap != nil {
		return r.target.Wrap(ctx, do)
	}
	return do(ctx)
}
