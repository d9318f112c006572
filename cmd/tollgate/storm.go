package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/tollgate-go/tollgate"
	"github.com/tollgate-go/tollgate/tollgatetest"
)

// The storms bench-storm knows.
const (
	stormMidStream = "midstream" // 200, message_start, then event: error overloaded_error
	storm529       = "529"       // 529 overloaded_error at the headers
)

// bench-storm's defaults: the scenario.
const (
	defaultStormAgents = 8
	defaultStorm       = 3 * time.Second
	defaultStormBefore = 2 * time.Second
	defaultStormAfter  = 6 * time.Second
)

func benchStorm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench-storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agents := fs.Int("agents", defaultStormAgents, "agents, each streaming one call after another")
	storm := fs.Duration("storm", defaultStorm, "how long the storm lasts")
	before := fs.Duration("before", defaultStormBefore, "calls before the storm")
	after := fs.Duration("after", defaultStormAfter, "calls after the storm")
	kinds := fs.String("kinds", stormMidStream+","+storm529, "storms to run, each through every client: "+stormMidStream+", "+storm529)
	clients := fs.String("clients", "sdk,tollgate", "clients: sdk (the official SDK alone, its 2 retries), tollgate")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: tollgate bench-storm [flags]

Streams calls from a few agents into a fake Anthropic API that, for a few
seconds, answers every request with an overload: either a 529 at the headers,
or a 200 whose stream sends message_start and then an overloaded_error event.
Each client and each storm gets its own fake API, side by side. It counts the
streams the server started during the storm (each one an overloaded request
sent into it) and checks that every call started after the storm succeeds.

flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usageError{err}
	}
	switch {
	case *agents < 1 || *agents > 1000:
		return usagef("--agents must be between 1 and 1000, not %d", *agents)
	case *storm <= 0 || *before < 0 || *after <= 0:
		return usagef("--storm and --after must be positive, --before not negative")
	}
	var runs []stormRun
	for kind := range strings.SplitSeq(*kinds, ",") {
		if kind != stormMidStream && kind != storm529 {
			return usagef("unknown storm %q (known: %s, %s)", kind, stormMidStream, storm529)
		}
		for client := range strings.SplitSeq(*clients, ",") {
			if client != "sdk" && client != "tollgate" {
				return usagef("unknown client %q (known: sdk, tollgate)", client)
			}
			runs = append(runs, stormRun{kind: kind, client: client})
		}
	}
	fmt.Fprintf(stdout, "tollgate bench-storm: %d agents streaming, %s of calls, a %s storm, %s of calls after it\n\n",
		*agents, *before, *storm, *after)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Go(func() { runs[i].run(ctx, *agents, *before, *storm, *after) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return errInterrupted
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "storm\tclient\tstreams started during the storm\tcalls started after it\tof which failed\tcalls OK\t")
	for i := range runs {
		r := &runs[i]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t\n", r.kind, r.client, r.during.Load(), r.afterCalls.Load(), r.afterFailed.Load(), r.ok.Load())
	}
	return tw.Flush()
}

// A stormRun is one client through one storm, against a fake API of its own.
type stormRun struct {
	kind, client string

	during      atomic.Int64 // requests the server received during the storm
	afterCalls  atomic.Int64 // calls started after the storm
	afterFailed atomic.Int64 // of which failed
	ok          atomic.Int64
}

func (r *stormRun) run(ctx context.Context, agents int, before, storm, after time.Duration) {
	api := tollgatetest.NewHandler(tollgatetest.Config{OutputTokens: 40, StreamChunkTokens: 4,
		Latency: 50 * time.Millisecond, StreamEventDelay: 5 * time.Millisecond})
	defer api.Close()
	start := time.Now()
	stormStart, stormEnd := start.Add(before), start.Add(before+storm)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if now := time.Now(); !now.Before(stormStart) && now.Before(stormEnd) {
			r.during.Add(1)
			_, _ = io.Copy(io.Discard, req.Body)
			overload(w, r.kind)
			return
		}
		api.ServeHTTP(w, req)
	}))
	defer srv.Close()

	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	opts := []option.RequestOption{option.WithBaseURL(srv.URL), option.WithAPIKey("storm")}
	if r.client == "tollgate" {
		hc.Transport = tollgate.New(hc.Transport)
		opts = append(opts, option.WithMaxRetries(0))
	}
	client := anthropic.NewClient(append(opts, option.WithHTTPClient(hc))...)
	end := stormEnd.Add(after)
	var wg sync.WaitGroup
	for range agents {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				began := time.Now()
				err := streamOnce(ctx, client)
				if !began.Before(stormEnd) {
					r.afterCalls.Add(1)
					if err != nil {
						r.afterFailed.Add(1)
					}
				}
				if err == nil {
					r.ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
}

// streamOnce streams one call to its end.
func streamOnce(ctx context.Context, client anthropic.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream := client.Messages.NewStreaming(ctx, anthropic.MessageNewParams{
		Model:     "claude-sonnet-5",
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say something."))},
	})
	for stream.Next() {
	}
	return errors.Join(stream.Err(), stream.Close())
}

// overload answers as an overloaded API does.
func overload(w http.ResponseWriter, kind string) {
	const errorData = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
	if kind == storm529 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(529)
		_, _ = io.WriteString(w, errorData)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_storm\","+
		"\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-5\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n")
	_, _ = io.WriteString(w, "event: error\ndata: "+errorData+"\n\n")
}
