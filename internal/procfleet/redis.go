package procfleet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RedisStats is what a fleet's processes asked of Redis, from the growth of
// the server's INFO commandstats over the run.
//
// A round trip is a command a client sent: a script run (EVALSHA, or EVAL
// when the server did not have the script yet; each one round trip however
// many commands the script runs inside Redis), a connection's set-up
// (HELLO, CLIENT SETINFO, …), or any other command the workers' Redis
// clients counted sending. The commands the scripts run inside Redis (TIME,
// HMGET, HSET, PEXPIRE, …) are no round trips; nor are the INFO commands
// procfleet sends to read the counters and the PING each worker sends once
// to check that Redis answers, which are left out altogether.
type RedisStats struct {
	Addr string `json:"addr"`
	// Shared reports that another fleet of the same Run used the same
	// Redis: the server's counts then cover both.
	Shared bool `json:"shared,omitempty"`
	// Commands is the growth of the calls of each command that was a round
	// trip, by the server's name for it (e.g. "evalsha", "client|setinfo");
	// InScripts that of the commands the scripts ran inside Redis.
	Commands  map[string]int64 `json:"commands"`
	InScripts map[string]int64 `json:"in_scripts"`
	// ScriptRuns counts EVAL, EVALSHA and the other ways to run a script;
	// Setup the commands that set connections up.
	ScriptRuns int64 `json:"script_runs"`
	Setup      int64 `json:"connection_setup"`
	// RoundTrips sums Commands.
	RoundTrips int64 `json:"round_trips"`
	// PerOK is RoundTrips per request the server admitted and served;
	// PerAttempt per HTTP attempt the workers sent (429s included).
	PerOK      float64 `json:"round_trips_per_ok"`
	PerAttempt float64 `json:"round_trips_per_attempt"`
	// Client is what the workers' Redis clients counted sending, by name,
	// summed; ClientErrors the commands that failed (but for NOSCRIPT).
	Client       map[string]int64 `json:"client_commands"`
	ClientErrors int64            `json:"client_errors"`
	// Store sums what the workers' tollgates asked of their stores.
	Store StoreCalls `json:"store_calls"`
}

// isScriptRun reports whether a command (by the server's name) runs a
// script or function.
func isScriptRun(name string) bool {
	switch name {
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		return true
	}
	return false
}

// isSetup reports whether a command sets a connection up.
func isSetup(name string) bool {
	return name == "hello" || name == "auth" || name == "select" || name == "readonly" || strings.HasPrefix(name, "client|")
}

func redisStats(addr string, before, after map[string]int64, r Result) *RedisStats {
	s := &RedisStats{Addr: addr, Commands: map[string]int64{}, InScripts: map[string]int64{}, Client: map[string]int64{}}
	for _, w := range r.Workers {
		for name, n := range w.RedisCommands {
			s.Client[name] += n
		}
		s.ClientErrors += w.RedisErrors
		if w.StoreCalls != nil {
			s.Store.Add(*w.StoreCalls)
		}
	}
	for name, n := range after {
		d := n - before[name]
		if name == "info" || name == "ping" || d <= 0 {
			continue
		}
		switch {
		case isScriptRun(name):
			s.ScriptRuns += d
			s.Commands[name] = d
		case isSetup(name):
			s.Setup += d
			s.Commands[name] = d
		default:
			// Another command: a round trip as often as a client sent it,
			// else run by a script.
			if top := min(d, s.Client[name]); top > 0 {
				s.Commands[name] = top
				d -= top
			}
			if d > 0 {
				s.InScripts[name] = d
			}
		}
	}
	for _, n := range s.Commands {
		s.RoundTrips += n
	}
	if r.Used.Requests > 0 {
		s.PerOK = float64(s.RoundTrips) / float64(r.Used.Requests)
	}
	if r.Attempts > 0 {
		s.PerAttempt = float64(s.RoundTrips) / float64(r.Attempts)
	}
	return s
}

// CommandStats returns how many times the Redis at addr has run each
// command since it started (INFO commandstats), by the server's name for it.
// It sends the INFO on a connection of its own, and nothing else.
func CommandStats(ctx context.Context, addr string) (map[string]int64, error) {
	reply, err := command(ctx, addr, "INFO", "commandstats")
	if err != nil {
		return nil, fmt.Errorf("redis %s: INFO commandstats: %w", addr, err)
	}
	stats := map[string]int64{}
	for line := range strings.SplitSeq(reply, "\n") {
		// cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,rejected_calls=0,failed_calls=0
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for f := range strings.SplitSeq(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("redis %s: INFO commandstats: %q: %w", addr, line, err)
				}
				stats[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return stats, nil
}

// command sends one command on a connection of its own and returns its
// reply, which must be a simple or bulk string.
func command(ctx context.Context, addr string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(deadline)
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", errors.New(line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("unexpected reply %q", line)
		}
		body := make([]byte, n+2)
		if _, err := io.ReadFull(r, body); err != nil {
			return "", err
		}
		return string(body[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// Ping checks that a Redis answers at addr.
func Ping(ctx context.Context, addr string) error {
	reply, err := command(ctx, addr, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// ErrNoRedisServer is StartRedis's error when there is no redis-server in
// PATH.
var ErrNoRedisServer = errors.New("redis-server is not installed (not found in PATH)")

// RedisServer is a redis-server that StartRedis started: on 127.0.0.1, no
// persistence.
type RedisServer struct {
	Addr string

	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
	log    bytes.Buffer // its output, for errors
	logMu  sync.Mutex
}

// StartRedis starts a redis-server of this process's own on a free port of
// 127.0.0.1, with no persistence, and waits until it answers. Stop it with
// Stop; on Linux it is also stopped when this process dies.
func StartRedis(ctx context.Context) (*RedisServer, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNoRedisServer
	}
	// A free port may be taken between finding it and the server's bind:
	// try another.
	for attempt := 0; ; attempt++ {
		s, err := startRedis(ctx, path)
		if err == nil || attempt == 2 || ctx.Err() != nil {
			return s, err
		}
	}
}

func startRedis(ctx context.Context, path string) (*RedisServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	_ = l.Close()
	return startRedisOn(ctx, path, port)
}

// Restart stops the server and starts a fresh one, empty, on the same
// address: a Redis that went down and came back without persistence.
func (s *RedisServer) Restart(ctx context.Context) (*RedisServer, error) {
	s.Stop()
	_, port, _ := net.SplitHostPort(s.Addr)
	return startRedisOn(ctx, s.cmd.Path, port)
}

func startRedisOn(ctx context.Context, path, port string) (*RedisServer, error) {
	s := &RedisServer{Addr: "127.0.0.1:" + port, exited: make(chan struct{})}
	s.cmd = exec.Command(path, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--protected-mode", "yes", "--daemonize", "no")
	w := &lineWriter{line: func(b []byte) {
		s.logMu.Lock()
		defer s.logMu.Unlock()
		s.log.Write(b)
		s.log.WriteByte('\n')
	}}
	s.cmd.Stdout, s.cmd.Stderr = w, w
	setProcAttr(s.cmd)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	go func() {
		_ = s.cmd.Wait()
		w.flush()
		close(s.exited)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := Ping(ctx, s.Addr)
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("redis-server on %s exited at start: %s", s.Addr, s.logTail())
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("redis-server on %s not answering after 5s: %v; its log: %s", s.Addr, err, s.logTail())
		}
	}
}

// Stop kills the server and waits for it to exit.
func (s *RedisServer) Stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
}

func (s *RedisServer) logTail() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	lines := strings.Split(strings.TrimSpace(s.log.String()), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], "\n")
}
