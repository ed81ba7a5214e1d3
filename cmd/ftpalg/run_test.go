package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestRunReload runs ftpalg in-process on loopback (no firewall, spliced
// data) with a configuration file and reloads it: new listen addresses
// and front ends serve, a lowered limit applies to the next session, a
// reload that cannot bind one new address changes nothing, removed
// addresses and front ends stop accepting, and a broken file is rejected
// while the running configuration goes on serving.
func TestRunReload(t *testing.T) {
	up := fakeUpstream(t)
	p := freePorts(t, 5)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", p[i]) }
	path := filepath.Join(t.TempDir(), "ftpalg.yaml")
	conf := func(level string, maxA int, listenA []string, b bool) string {
		s := fmt.Sprintf("firewall: none\ndata-path: splice\nlog-level: %s\nmetrics-listen: %s\nshutdown-grace: 2s\n"+
			"frontends:\n  - name: a\n    listen: [%s]\n    upstream: %s\n    data-ports: 0\n    max-sessions: %d\n",
			level, addr(4), strings.Join(listenA, ", "), up, maxA)
		if b {
			s += fmt.Sprintf("  - name: b\n    listen: %s\n    upstream: %s\n    data-ports: 0\n", addr(2), up)
		}
		return s
	}
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(conf("info", 5, []string{addr(0)}, false))
	rc, err := loadConfig(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	level := zap.NewAtomicLevelAt(rc.logLevel)
	core, logs := observer.New(level)
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, zap.New(core), level, rc, hup) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("run did not return after its context ended")
		}
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("log: %s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	reload := func(content string) observer.LoggedEntry {
		t.Helper()
		n := logs.Len()
		write(content)
		hup <- syscall.SIGHUP
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			for _, e := range logs.All()[n:] {
				if e.Message == msgReloaded || e.Message == msgReloadRejected {
					return e
				}
			}
		}
		t.Fatalf("no reload logged")
		return observer.LoggedEntry{}
	}

	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := get(addr(4), "/readyz"); err == nil {
			break
		} else if time.Now().After(end) {
			t.Fatalf("not ready: %v", err)
		}
	}
	quit(greet(t, addr(0), "220"))

	// A new listen address, a new front end, debug logs, a lower limit.
	e := reload(conf("debug", 1, []string{addr(0), addr(1)}, true))
	if e.Message != msgReloaded {
		t.Fatalf("reload: %s %v", e.Message, e.ContextMap())
	}
	t.Logf("reloaded: %v", e.ContextMap()["changes"])
	if level.Level() != zapcore.DebugLevel {
		t.Errorf("log level %v, want debug", level.Level())
	}
	held := greet(t, addr(1), "220") // the only session front end a may have now
	greet(t, addr(0), "421")         // one more
	quit(greet(t, addr(2), "220"))   // front end b has its own limit
	if err := get(addr(4), "/readyz"); err != nil {
		t.Errorf("/readyz: %v", err)
	}
	quit(held)

	// One address cannot be bound: nothing changes, not even the address
	// that could be closed or the front end that could be removed.
	busy, err := net.Listen("tcp", addr(3))
	if err != nil {
		t.Fatal(err)
	}
	e = reload(conf("info", 1, []string{addr(1), addr(3)}, false))
	busy.Close()
	if e.Message != msgReloadRejected || e.Level != zapcore.ErrorLevel || !strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "address already in use") {
		t.Errorf("reload with a busy address: %s %s %v", e.Level, e.Message, e.ContextMap())
	}
	if level.Level() != zapcore.DebugLevel {
		t.Errorf("log level %v after a rejected reload, want debug still", level.Level())
	}
	quit(greet(t, addr(0), "220"))
	quit(greet(t, addr(2), "220"))

	// Closing an address and removing a front end.
	e = reload(conf("info", 1, []string{addr(1)}, false))
	if e.Message != msgReloaded {
		t.Fatalf("reload: %s %v", e.Message, e.ContextMap())
	}
	refused(t, addr(0))
	refused(t, addr(2))
	quit(greet(t, addr(1), "220"))

	// A broken file: rejected, the running configuration serves on.
	e = reload("frontends:\n  - name: a\n    listen: [" + addr(1) + "\n")
	if e.Message != msgReloadRejected || e.Level != zapcore.ErrorLevel || !strings.Contains(fmt.Sprint(e.ContextMap()["error"]), path) {
		t.Errorf("reload of a broken file: %s %s %v", e.Level, e.Message, e.ContextMap())
	}
	quit(greet(t, addr(1), "220"))
	if err := get(addr(4), "/readyz"); err != nil {
		t.Errorf("/readyz: %v", err)
	}
}

// fakeUpstream is an FTP server that only greets and says goodbye.
func fakeUpstream(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 upstream ready\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(strings.ToUpper(line), "QUIT") {
						io.WriteString(c, "221 bye\r\n")
						return
					}
					io.WriteString(c, "502 not here\r\n")
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// freePorts returns n ports of 127.0.0.1 nobody listens on now.
func freePorts(t *testing.T, n int) []int {
	var out []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out
}

// greet connects to addr and wants a first reply with code; it returns
// the connection (closed when the test ends). A 421 where 220 is wanted
// is tried again for a while: a session that just ended may still count.
func greet(t *testing.T, addr, code string) net.Conn {
	t.Helper()
	end := time.Now().Add(3 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && strings.HasPrefix(line, code+" ") {
			return c
		}
		c.Close()
		if code != "220" || !strings.HasPrefix(line, "421 ") || time.Now().After(end) {
			t.Fatalf("%s: greeting %q, %v; want %s", addr, line, err, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quit ends a session politely.
func quit(c net.Conn) {
	io.WriteString(c, "QUIT\r\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
}

// refused waits until connecting to addr is refused.
func refused(t *testing.T, addr string) {
	t.Helper()
	var err error
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, time.Second); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
			continue
		}
		c.Close()
	}
	t.Errorf("%s still accepts connections (last: %v)", addr, err)
}

// get wants 200 from the metrics server's path.
func get(addr, path string) error {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return nil
}
