// Package redistest runs redis-server processes for tests.
//
// A test that needs a Redis calls Shared, which uses the server scripts/test
// starts (TOLLGATE_REDIS_ADDR) or else starts one of its own, or Start for a
// server of its own that it may stop and restart. Without a redis-server
// binary the test is skipped, or fails when TOLLGATE_REQUIRE_SERVICES=1 (as
// scripts/test sets it).
package redistest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// AddrEnv names the environment variable that points tests at a running
// Redis; scripts/redis.sh start prints it.
const AddrEnv = "TOLLGATE_REDIS_ADDR"

// readyTimeout bounds the wait for a started server to answer PING.
const readyTimeout = 4 * time.Second

// Server is a redis-server process with no persistence, listening on
// 127.0.0.1 only.
type Server struct {
	// Addr is host:port, the same across Restart.
	Addr string

	t      testing.TB
	path   string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
	log    *bytes.Buffer
}

// Start starts a fresh redis-server on a free port and waits until it
// answers PING; it is stopped when the test ends. Without a redis-server in
// PATH the test is skipped, or fails when TOLLGATE_REQUIRE_SERVICES=1.
func Start(t testing.TB) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server not installed; scripts/test installs it (scripts/redis.sh)")
	}
	s := &Server{t: t, path: path}
	t.Cleanup(s.Stop)
	// A free port may be taken between Listen and the server's bind; try again.
	for attempt := 0; ; attempt++ {
		s.Addr = freeAddr(t)
		if err = s.start(); err == nil {
			return s
		}
		if attempt == 2 {
			t.Fatalf("redistest: %v", err)
		}
	}
}

// Shared returns the address of a Redis for a test: TOLLGATE_REDIS_ADDR when
// it is set (the server scripts/test starts), else a server of the test's
// own (Start). Tests on a shared server must keep their keys apart: see
// Prefix.
func Shared(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(AddrEnv)
	if addr == "" {
		return Start(t).Addr
	}
	if err := ping(addr, time.Second); err != nil {
		unavailable(t, fmt.Sprintf("no Redis answers at %s=%s: %v; start one with: eval \"$(scripts/redis.sh start)\"", AddrEnv, addr, err))
	}
	return addr
}

// Prefix returns a key prefix of the test's own, unique across runs, so that
// tests sharing a server do not see each other's keys or an earlier run's.
func Prefix(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "test:" + t.Name() + ":" + hex.EncodeToString(b[:])
}

func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("TOLLGATE_REQUIRE_SERVICES") == "1" {
		t.Fatal("Redis is required (TOLLGATE_REQUIRE_SERVICES=1): " + why)
	}
	t.Skip("Redis not available: " + why)
}

// Stop kills the server and waits for it to exit. It does nothing when the
// server is not running.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
}

func (s *Server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on the same port, with no data, and waits
// until it answers PING; it stops it first if it is running.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	s.stop()
	s.mu.Unlock()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	host, port, _ := net.SplitHostPort(s.Addr)
	cmd := exec.Command(s.path, "--bind", host, "--port", port, "--save", "", "--appendonly", "no",
		"--protected-mode", "yes", "--daemonize", "no")
	log := new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited, s.log = cmd, exited, log
	deadline := time.Now().Add(readyTimeout)
	for {
		err := ping(s.Addr, 200*time.Millisecond)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("redis-server on %s exited at start: %s", s.Addr, lastLines(log.String(), 5))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("redis-server on %s not answering after %v: %v; its log: %s", s.Addr, readyTimeout, err, lastLines(log.String(), 5))
		}
	}
}

// ping sends PING to addr and waits for PONG.
func ping(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// freeAddr returns 127.0.0.1 and a port no one listens on just now.
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
