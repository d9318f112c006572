package redistest

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestStartStopRestart(t *testing.T) {
	s := Start(t)
	if err := ping(s.Addr, time.Second); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	s.Stop()
	if err := ping(s.Addr, time.Second); err == nil {
		t.Fatal("after Stop: PING still answered")
	}
	s.Stop() // a second Stop does nothing
	s.Restart()
	if err := ping(s.Addr, time.Second); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
}

func TestSharedUsesEnv(t *testing.T) {
	s := Start(t)
	t.Setenv(AddrEnv, s.Addr)
	if got := Shared(t); got != s.Addr {
		t.Fatalf("Shared = %q, want %s's %q", got, AddrEnv, s.Addr)
	}
}

func TestPrefixIsFresh(t *testing.T) {
	a, b := Prefix(t), Prefix(t)
	if a == b || !strings.Contains(a, t.Name()) {
		t.Fatalf("Prefix gave %q and %q; want two distinct prefixes naming the test", a, b)
	}
}

// recorder is a testing.TB that records how a helper ended the test.
type recorder struct {
	testing.TB
	how, msg string
}

func (r *recorder) Helper()           {}
func (r *recorder) Cleanup(func())    {}
func (r *recorder) Skip(args ...any)  { r.end("skip", args) }
func (r *recorder) Fatal(args ...any) { r.end("fatal", args) }
func (r *recorder) end(how string, args []any) {
	r.how, r.msg = how, fmt.Sprint(args...)
	runtime.Goexit()
}

// run calls f with a recorder on a goroutine of its own, as the helper may
// end it with Goexit.
func run(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv(AddrEnv, "")
	for _, require := range []string{"", "1"} {
		t.Setenv("TOLLGATE_REQUIRE_SERVICES", require)
		r := run(t, func(tb testing.TB) { Shared(tb) })
		want := map[string]string{"": "skip", "1": "fatal"}[require]
		if r.how != want || !strings.Contains(r.msg, "redis-server not installed; scripts/test installs it") {
			t.Errorf("TOLLGATE_REQUIRE_SERVICES=%q: the test ended with %s %q; want %s with the reason", require, r.how, r.msg, want)
		}
	}
}
