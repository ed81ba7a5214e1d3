//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
)

// Messages of a reload, as cmd/ftpalg logs them (run.go: msgReloaded,
// msgReloadRejected).
const (
	logReloaded       = "configuration reloaded"
	logReloadRejected = "configuration reload rejected, the running configuration stays"
)

const (
	reloadFile     = "reload.bin" // 1 GiB, sparse
	reloadFileSize = 1 << 30
	// reloadHeldAt is how much of reloadFile the client reads before it
	// stops reading until the reload is done.
	reloadHeldAt = 64 << 20
)

// TestConfigReload runs ftpalg with --config and reloads the file with
// SIGHUP while a 1 GiB RETR runs (held by its client after 64 MiB): the
// reload lowers max-sessions, adds a listen address and a front end, and
// turns on debug logs. The transfer completes with every byte; a session
// on the new address works and one more session than the new limit gets
// 421; the new front end serves; debug lines appear. Then a broken file
// is rejected with an error naming the key and its line, and the running
// configuration keeps serving.
func TestConfigReload(t *testing.T) {
	requirePrereqs(t, reqVsftpd)
	requireProxy(t)
	topo := NewTopology(t, TopoOptions{})
	srv := StartServer(t, topo, Vsftpd, ServerOptions{SparseFiles: map[string]int64{reloadFile: reloadFileSize}})
	listen2 := FrontClientIP4 + ":2121"
	extra := FrontClientIP4 + ":2122"
	conf := func(level string, maxSessions int, listen []string, withExtra bool) string {
		s := fmt.Sprintf(`log-format: json
log-level: %s
frontends:
  - name: public
    listen: [%s]
    upstream: %s
    advertise: %s
    data-ports: %s
    max-sessions: %d
`, level, strings.Join(listen, ", "), proxyUpstream4, FrontClientIP4, proxyDataPorts4, maxSessions)
		if withExtra {
			s += fmt.Sprintf(`  - name: extra
    listen: %s
    upstream: %s
    advertise: %s
    data-ports: 51000-51099
`, extra, proxyUpstream4, FrontClientIP4)
		}
		return s
	}
	path := filepath.Join(t.TempDir(), "ftpalg.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(conf("info", 10, []string{proxyListen4}, false))
	p := startConfigProxy(t, topo, path, proxyListen4)
	start := p.LogSize()

	// The long transfer, held after its first 64 MiB until the reload is
	// done.
	type result struct {
		n   int64
		err error
	}
	paused, resume := make(chan struct{}), make(chan struct{})
	res := make(chan result, 1)
	go func() {
		n, err := heldRetr(topo, srv, proxyListen4, paused, resume)
		res <- result{n, err}
	}()
	resumed := false
	defer func() {
		if !resumed {
			close(resume)
		}
	}()
	select {
	case <-paused:
	case r := <-res:
		t.Fatalf("the transfer ended before the reload: %d bytes, %v", r.n, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("the transfer did not get its first 64 MiB in 60s")
	}
	if n := countLevel(p.LogSince(start), "debug"); n > 0 {
		t.Errorf("%d debug lines at log-level info", n)
	}

	// The reload: debug logs, max-sessions 10 → 2, a second listen
	// address, a new front end.
	off := p.LogSize()
	write(conf("debug", 2, []string{proxyListen4, listen2}, true))
	e := sighup(t, p, off)
	if e.str("msg") != logReloaded {
		t.Fatalf("reload: %v", e)
	}
	t.Logf("reloaded: %v", e["changes"])

	// A session on the new address (the running transfer is the other
	// one the limit allows), with a download.
	a, err := dialCtl(topo.Client, listen2, 30*time.Second)
	if err != nil {
		t.Fatalf("new listen address %s: %v", listen2, err)
	}
	defer a.Close()
	if err := smallRetr(a, srv); err != nil {
		t.Errorf("session on the new address %s: %v\n%s", listen2, err, a.Transcript())
	}
	// One more than max-sessions 2.
	if line, err := greeting(topo, proxyListen4); err != nil || !strings.HasPrefix(line, "421 ") {
		t.Errorf("third session: greeting %q, %v; want 421 (max-sessions 2)", line, err)
	}
	if err := a.quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	// The new front end.
	x, err := dialCtl(topo.Client, extra, 30*time.Second)
	if err != nil {
		t.Fatalf("new front end %s: %v", extra, err)
	}
	if err := smallRetr(x, srv); err != nil {
		t.Errorf("session on the new front end %s: %v\n%s", extra, err, x.Transcript())
	}
	x.quit()
	if n := countLevel(p.LogSince(off), "debug"); n == 0 {
		t.Errorf("no debug line after the reload to log-level debug")
	}

	// The held transfer completes with every byte.
	close(resume)
	resumed = true
	select {
	case r := <-res:
		if r.err != nil || r.n != reloadFileSize {
			t.Errorf("transfer across the reload: %d bytes, %v; want %d", r.n, r.err, reloadFileSize)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("the transfer did not complete in 5 minutes")
	}
	if e := bigTransfer(p.LogSince(start)); e == nil {
		t.Errorf("no %q line for the 1 GiB transfer", proxy.MsgTransferFinished)
	} else {
		t.Logf("the 1 GiB transfer: path %s, %v bytes to the client in %vs", e.str("path"), e["bytes_to_client"], e["duration"])
	}

	// A broken file is rejected; the running configuration serves on.
	off = p.LogSize()
	write("log-level: info\nfrontends:\n  - name: public\n    listen: " + proxyListen4 + "\n    upstream: " + proxyUpstream4 + "\n    max-sesions: 1\n")
	e = sighup(t, p, off)
	if e.str("msg") != logReloadRejected || e.str("level") != "error" || !strings.Contains(e.str("error"), `ftpalg.yaml:6: frontend "public": unknown key "max-sesions"`) {
		t.Errorf("reload of a broken file: %v", e)
	}
	for _, addr := range []string{proxyListen4, listen2, extra} {
		c, err := dialCtl(topo.Client, addr, 30*time.Second)
		if err != nil {
			t.Errorf("after the rejected reload, %s: %v", addr, err)
			continue
		}
		if err := smallRetr(c, srv); err != nil {
			t.Errorf("after the rejected reload, %s: %v\n%s", addr, err, c.Transcript())
		}
		c.quit()
	}
	if n := countLevel(p.LogSince(off), "debug"); n == 0 {
		t.Errorf("no debug line after the rejected reload: the log level is debug still")
	}
}

// startConfigProxy runs `ftpalg run --config path` in the front namespace
// and waits until a client gets the greeting on addr; StartProxy's
// cleanup.
func startConfigProxy(t *testing.T, topo *Topology, path, addr string) *Proxy {
	t.Helper()
	requireProxy(t)
	logPath := filepath.Join(t.TempDir(), "ftpalg.log")
	args := []string{proxyBinary, "run", "--config", path}
	p := &Proxy{Proc: nstest.Start(t, topo.Front, "ftpalg", logPath, clientEnv(os.TempDir()), args...), Listen: addr}
	t.Logf("started (pid %d): %s", p.PID(), strings.Join(args, " "))
	t.Cleanup(func() {
		if err := p.Stop(5 * time.Second); err != nil {
			t.Errorf("ftpalg: %v", err)
		}
		if t.Failed() {
			conf, _ := os.ReadFile(path)
			t.Logf("--- %s ---\n%s\n--- ftpalg log (%s) ---\n%s", path, conf, logPath, nstest.Tail(p.Log(), 120))
		}
	})
	if err := waitBanner(topo.Client, addr, 15*time.Second, p.Alive); err != nil {
		t.Fatalf("ftpalg not serving: %v", err)
	}
	return p
}

// sighup sends SIGHUP to the proxy and returns its log line about the
// reload, written after offset off.
func sighup(t *testing.T, p *Proxy, off int64) proxyLogEntry {
	t.Helper()
	if err := syscall.Kill(p.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, e := range parseProxyLog(p.LogSince(off)) {
			if m := e.str("msg"); m == logReloaded || m == logReloadRejected {
				return e
			}
		}
		if err := p.Alive(); err != nil {
			t.Fatalf("after SIGHUP: %v", err)
		}
	}
	t.Fatalf("no reload logged after SIGHUP:\n%s", nstest.Tail(p.LogSince(off), 40))
	return nil
}

// heldRetr downloads reloadFile through addr: it reads reloadHeldAt
// bytes, closes paused, waits for resume, reads the rest and the 226. It
// returns the bytes read.
func heldRetr(topo *Topology, srv *Server, addr string, paused chan<- struct{}, resume <-chan struct{}) (int64, error) {
	c, err := dialCtl(topo.Client, addr, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.login(srv.User, srv.Pass); err != nil {
		return 0, err
	}
	at, err := c.passive(EPSV)
	if err != nil {
		return 0, err
	}
	dc, err := c.dialData(at)
	if err != nil {
		return 0, fmt.Errorf("data connection to %s: %w", at, err)
	}
	defer dc.Close()
	if _, err := c.expect("RETR "+reloadFile, 125, 150); err != nil {
		return 0, err
	}
	dc.SetReadDeadline(time.Now().Add(time.Minute))
	n, err := io.CopyN(io.Discard, dc, reloadHeldAt)
	close(paused)
	if err != nil {
		return n, fmt.Errorf("first %d bytes: %w", reloadHeldAt, err)
	}
	<-resume
	dc.SetReadDeadline(time.Now().Add(5 * time.Minute))
	m, err := io.Copy(io.Discard, dc)
	n += m
	if err != nil {
		return n, fmt.Errorf("data: %w", err)
	}
	dc.Close()
	if code, text, err := c.reply(); err != nil || code != 226 {
		return n, fmt.Errorf("end of RETR: reply %q, %v; want 226\n%s", text, err, c.Transcript())
	}
	return n, c.quit()
}

// smallRetr logs in on c and downloads small.bin, checking its SHA-256.
func smallRetr(c *ctlConn, srv *Server) error {
	if err := c.login(srv.User, srv.Pass); err != nil {
		return err
	}
	at, err := c.passive(EPSV)
	if err != nil {
		return err
	}
	dc, err := c.dialData(at)
	if err != nil {
		return fmt.Errorf("data connection to %s: %w", at, err)
	}
	n, sum, err := c.retr(dc, "small.bin")
	if err != nil {
		return err
	}
	if want := srv.Files["small.bin"]; n != want.Size || sum != want.SHA256 {
		return fmt.Errorf("small.bin: %d bytes, sha256 %s; want %d, %s", n, short(sum), want.Size, short(want.SHA256))
	}
	return nil
}

// greeting connects from the client namespace to addr and returns the
// first line it gets.
func greeting(topo *Topology, addr string) (string, error) {
	c, err := dial(topo.Client, addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// bigTransfer returns the log line of the finished transfer of
// reloadFile: the one that carried at least reloadHeldAt bytes (or, on the
// kernel path without conntrack accounting, was not counted).
func bigTransfer(log string) proxyLogEntry {
	for _, e := range parseProxyLog(log) {
		if e.str("msg") != proxy.MsgTransferFinished {
			continue
		}
		if n, _ := e["bytes_to_client"].(float64); n >= reloadHeldAt || e.str("counted") != "" {
			return e
		}
	}
	return nil
}

// countLevel counts the JSON log lines of level in log.
func countLevel(log, level string) int {
	n := 0
	for _, e := range parseProxyLog(log) {
		if e.str("level") == level {
			n++
		}
	}
	return n
}
