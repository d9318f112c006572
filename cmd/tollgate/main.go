// Command tollgate runs tollgate against a fleet of agents on a fake,
// rate-limited Anthropic API, next to the usual alternatives.
//
//	tollgate demo  [flags]   the bare SDK and tollgate side by side, live (about a minute)
//	tollgate bench [flags]   every client side by side, a table of what each got (2 minutes)
//	tollgate bench-shared [flags]
//	                         one fleet split across processes, sharing its budget through
//	                         Redis or not, side by side (2 minutes)
//	tollgate bench-storm [flags]
//	                         a few seconds of overload: what each client sends into it
//	tollgate proxy [flags]   an HTTP proxy that puts tollgate in front of any client
//	                         that takes a base URL (Python, TypeScript, Claude Code),
//	                         with a live status page and Prometheus metrics
//	tollgate bench-proxy [flags]
//	                         16 agents of the TypeScript SDK through the proxy, and
//	                         its overhead next to direct calls
//
// The demo and benches run against fake APIs listening on 127.0.0.1, in this
// process (bench-shared re-executes this program for its processes, and
// starts a redis-server unless given one; bench-proxy runs node); nothing
// leaves the machine unless demo is given --upstream. The proxy forwards to
// the real APIs (--anthropic-upstream, --openai-upstream). Run a subcommand
// with -h for its flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tollgate-go/tollgate/internal/procfleet"
)

func main() {
	// A process of bench-shared's runs as a worker and exits here.
	procfleet.MaybeRunWorker()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1   // the run could not be done
	exitUsage       = 2   // bad command line
	exitInterrupted = 130 // stopped by SIGINT/SIGTERM, after printing what was measured
)

const usage = `usage: tollgate <command> [flags]

commands:
  demo    run the same fleet through the bare SDK and through tollgate, side by side,
          against an embedded fake API with tier-1-like limits (about a minute)
  bench   run the fleet through every client (sdk, queue4, retryablehttp, failsafe,
          tollgate) side by side and print what each got out of the same limits
  bench-shared
          split one fleet across processes (4 × 8 agents) that share their budget
          through Redis, next to the same fleet with a budget per process
  bench-storm
          stream from 8 agents into a few seconds of overload (529s, or 200s whose
          stream fails with overloaded_error) and count what each client sent into it
  proxy   serve the Anthropic and OpenAI APIs through tollgate on 127.0.0.1:8787 for
          any client that takes a base URL, with /status and /metrics
  bench-proxy
          drive the proxy with 16 agents of the official TypeScript SDK (node) against
          tier-1 limits, and measure its overhead next to direct calls

Run 'tollgate <command> -h' for the flags of a command.
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "demo":
		err = demo(ctx, args[1:], stdout, stderr)
	case "bench":
		err = bench(ctx, args[1:], stdout, stderr)
	case "bench-shared":
		err = benchShared(ctx, args[1:], stdout, stderr)
	case "bench-storm":
		err = benchStorm(ctx, args[1:], stdout, stderr)
	case "proxy":
		err = proxyCommand(ctx, args[1:], stdout, stderr)
	case "bench-proxy":
		err = benchProxy(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "tollgate: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tollgate %s: %v\nRun 'tollgate %s -h' for usage.\n", args[0], ue.err, args[0])
		return exitUsage
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "tollgate %s: %v\n", args[0], err)
		return exitError
	}
}

// usageError is a bad command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

var (
	// errHelp is -h: the usage was printed, nothing else to do.
	errHelp = errors.New("help requested")
	// errInterrupted is a run stopped by a signal, whose results were printed.
	errInterrupted = errors.New("interrupted")
)
