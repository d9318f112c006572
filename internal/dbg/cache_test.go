package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/tollgate-go/tollgate/internal/reqscan"
)

type grab struct{ bodies [][]byte }

func (g *grab) RoundTrip(req *http.Request) (*http.Response, error) {
	b, _ := io.ReadAll(req.Body)
	g.bodies = append(g.bodies, b)
	info := reqscan.Read(&http.Request{Method: "POST", Body: io.NopCloser(bytes.NewReader(b)), GetBody: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, ContentLength: int64(len(b)), Header: http.Header{}})
	for i, bl := range info.Blocks {
		fmt.Printf("  block %d prefix=%x bytes=%d bp=%v ttl=%v\n", i, bl.Prefix, bl.Bytes, bl.Breakpoint, bl.TTL)
	}
	fmt.Printf("prompt=%d body=%s...\n", info.PromptBytes, b[:min(300, len(b))])
	return &http.Response{StatusCode: 500, Body: io.NopCloser(bytes.NewReader(nil)), Header: http.Header{}}, nil
}

func TestBlocks(t *testing.T) {
	g := &grab{}
	c := anthropic.NewClient(option.WithHTTPClient(&http.Client{Transport: g}), option.WithAPIKey("x"), option.WithMaxRetries(0), option.WithBaseURL("http://x"))
	tool := anthropic.ToolParam{Name: "bash", InputSchema: anthropic.ToolInputSchemaParam{Properties: map[string]any{"cmd": map[string]any{"type": "string"}}}}
	for _, task := range []string{"task one", "task two"} {
		first := anthropic.TextBlockParam{Text: task, CacheControl: anthropic.NewCacheControlEphemeralParam()}
		_, _ = c.Messages.New(context.Background(), anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 10,
			Tools:    []anthropic.ToolUnionParam{{OfTool: &tool}},
			System:   []anthropic.TextBlockParam{{Text: "You are an agent.", CacheControl: anthropic.NewCacheControlEphemeralParam()}},
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.ContentBlockParamUnion{OfText: &first})}})
	}
}
