package proxy

// Test harness for the loopback integration tests: an in-process FTP server
// (internal/ftpd) that announces a private address it does not have, a tap
// between the proxy and that server that records every command line the
// server is sent (urgent byte included), the proxy Server with a fake
// firewall and a trace of its control lines, and a raw FTP client.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/ftpd"
	pftp "github.com/ftpalg/ftpalg/proxy/ftp"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// privateHost is what the test FTP server announces in its 227 replies: an
// RFC 1918 address that nothing here has, and that no test ever dials.
const privateHost = "10.0.0.5"

// ioTimeout bounds every single read, write, dial and accept of the tests,
// so a broken proxy fails a test instead of hanging it.
const ioTimeout = 30 * time.Second

var loopback = netip.MustParseAddr("127.0.0.1")

// env is one proxy in front of one upstream.
type env struct {
	ftpd *ftpd.Server // nil when the upstream is scripted
	tap  *tap         // nil when the upstream is scripted
	fw   *rulestest.Fake
	tr   *tracer
	logs *observer.ObservedLogs // everything the proxy logged at Info and above
	srv  *Server
	cfg  Config
	addr string // the proxy's control address

	cancel    context.CancelFunc
	serveDone chan struct{} // closed when Serve has returned
	serveErr  error         // what Serve returned, once serveDone is closed
}

// newEnv starts internal/ftpd (announcing privateHost), a tap in front of it
// and the proxy in front of the tap. mod adjusts the proxy's Config.
func newEnv(t *testing.T, mod ...func(*Config)) *env {
	t.Helper()
	return newEnvGrace(t, 5*time.Second, mod...)
}

// newEnvGrace is newEnv with the grace period Serve is given.
func newEnvGrace(t *testing.T, grace time.Duration, mod ...func(*Config)) *env {
	t.Helper()
	fs, err := ftpd.Start(ftpd.Options{Dir: servedDir, Listen: "127.0.0.1:0", PublicHost: privateHost})
	if err != nil {
		t.Fatalf("ftpd: %v", err)
	}
	t.Cleanup(func() {
		if err := fs.Close(); err != nil {
			t.Errorf("ftpd close: %v", err)
		}
	})
	tp := startTap(t, fs.Addr())
	e := startProxy(t, tp.addr(), grace, mod...)
	e.ftpd, e.tap = fs, tp
	return e
}

// startProxy runs a proxy for upstream until the test ends.
func startProxy(t *testing.T, upstream string, grace time.Duration, mod ...func(*Config)) *env {
	t.Helper()
	return startProxyAt(t, "127.0.0.1:0", upstream, grace, mod...)
}

// startProxyAt is startProxy listening on listen.
func startProxyAt(t *testing.T, listen, upstream string, grace time.Duration, mod ...func(*Config)) *env {
	t.Helper()
	e := &env{fw: rulestest.NewFake(), tr: &tracer{}, serveDone: make(chan struct{})}
	core, logs := observer.New(zap.InfoLevel)
	e.logs = logs
	test := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()
	e.cfg = Config{
		Upstream:          upstream,
		ConnectTimeout:    5 * time.Second,
		DataAcceptTimeout: 10 * time.Second,
		Firewall:          e.fw,
		Logger:            zap.New(zapcore.NewTee(test, core)),
		Trace:             e.tr.add,
	}
	for _, m := range mod {
		m(&e.cfg)
	}
	srv, err := NewServer(e.cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	e.srv = srv
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() {
		e.serveErr = srv.Serve(ctx, ln, grace)
		close(e.serveDone)
	}()
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// stop cancels Serve and waits for it to return. It may be called again.
func (e *env) stop() error {
	e.cancel()
	select {
	case <-e.serveDone:
		return e.serveErr
	case <-time.After(2 * time.Minute):
		// Serve and its sessions are stuck: goleak will report them.
		return fmt.Errorf("Serve did not return within 2 minutes of its context's end")
	}
}

// ---- trace ----

// tracer records the proxy's Trace events.
type tracer struct {
	mu  sync.Mutex
	evs []TraceEvent
}

func (tr *tracer) add(e TraceEvent) {
	tr.mu.Lock()
	tr.evs = append(tr.evs, e)
	tr.mu.Unlock()
}

// mark returns a position to pass to since.
func (tr *tracer) mark() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.evs)
}

// since returns the events recorded after mark.
func (tr *tracer) since(mark int) []TraceEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]TraceEvent(nil), tr.evs[mark:]...)
}

// sessionOf returns the session that traced line from the client.
func (tr *tracer) sessionOf(t testing.TB, line string) uint64 {
	t.Helper()
	for _, ev := range tr.since(0) {
		if ev.Dir == ClientToProxy && ev.Line == line {
			return ev.Session
		}
	}
	t.Fatalf("no session sent %q", line)
	return 0
}

// linesOf returns the lines of evs in direction dir.
func linesOf(evs []TraceEvent, dir Direction) []TraceEvent {
	var out []TraceEvent
	for _, ev := range evs {
		if ev.Dir == dir {
			out = append(out, ev)
		}
	}
	return out
}

// ---- tap ----

// tapLine is a command line as the upstream server receives it.
type tapLine struct {
	raw    string
	urgent int // index in raw of the byte that arrived as TCP urgent data, or -1
}

// tap relays control connections from the proxy to the FTP server and
// records each command line the server is sent. It reads with the proxy's
// urgent-aware controlConn and writes the urgent byte as urgent again, so
// the server sees the stream exactly as the proxy sent it.
type tap struct {
	ln net.Listener
	up string

	mu     sync.Mutex
	lines  []tapLine
	hook   func(tapLine)
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func startTap(t *testing.T, upstream string) *tap {
	t.Helper()
	return startTapAt(t, "127.0.0.1:0", upstream)
}

// startTapAt is startTap listening on listen.
func startTapAt(t *testing.T, listen, upstream string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, up: upstream}
	tp.wg.Add(1)
	go tp.serve()
	t.Cleanup(tp.close)
	return tp
}

func (tp *tap) addr() string { return tp.ln.Addr().String() }

func (tp *tap) serve() {
	defer tp.wg.Done()
	for {
		in, err := tp.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", tp.up, ioTimeout)
		if err != nil {
			in.Close()
			continue
		}
		tp.mu.Lock()
		if tp.closed {
			tp.mu.Unlock()
			in.Close()
			out.Close()
			return
		}
		tp.conns = append(tp.conns, in, out)
		tp.wg.Add(2)
		tp.mu.Unlock()
		go tp.commands(in.(*net.TCPConn), out.(*net.TCPConn))
		go tp.replies(in, out)
	}
}

func (tp *tap) commands(in, out *net.TCPConn) {
	defer tp.wg.Done()
	defer in.Close()
	defer out.Close()
	cin, err := newControlConn(in)
	if err != nil {
		return
	}
	cout, err := newControlConn(out)
	if err != nil {
		return
	}
	sc := pftp.NewCommandScanner(cin)
	for {
		l, err := sc.Next()
		if err != nil {
			return
		}
		tl := tapLine{raw: string(l.Raw), urgent: l.Urgent}
		tp.mu.Lock()
		tp.lines = append(tp.lines, tl)
		hook := tp.hook
		tp.mu.Unlock()
		if hook != nil {
			hook(tl)
		}
		if err := cout.writeUrgent(l.Raw, l.Urgent); err != nil {
			return
		}
	}
}

func (tp *tap) replies(in, out net.Conn) {
	defer tp.wg.Done()
	io.Copy(in, out)
	in.Close()
	out.Close()
}

// setHook makes h see each line before the server does.
func (tp *tap) setHook(h func(tapLine)) {
	tp.mu.Lock()
	tp.hook = h
	tp.mu.Unlock()
}

// seen returns the command lines the server has been sent, in order.
func (tp *tap) seen() []tapLine {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]tapLine(nil), tp.lines...)
}

func (tp *tap) close() {
	tp.mu.Lock()
	tp.closed = true
	for _, c := range tp.conns {
		c.Close()
	}
	tp.mu.Unlock()
	tp.ln.Close()
	tp.wg.Wait()
}

// ---- raw client ----

// ctl is a raw FTP control connection. It speaks active mode, which
// jlaffaye/ftp cannot, and lets a test see every reply.
type ctl struct {
	c  *net.TCPConn
	tp *textproto.Conn
	// dataTLS, when set, makes download and upload speak TLS on their
	// data connections, as the TLS client (tls_test.go).
	dataTLS *tls.Config
}

// dialCtl connects to addr, from the address from when it is not empty.
// The connection is closed when the test ends.
func dialCtl(t testing.TB, addr, from string) *ctl {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &ctl{c: c.(*net.TCPConn), tp: textproto.NewConn(c)}
}

// read reads one reply, multi-line replies joined with "\n".
func (c *ctl) read() (int, string, error) {
	c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	return c.tp.ReadResponse(0)
}

// expect reads one reply and fails unless its code is code.
func (c *ctl) expect(t testing.TB, code int) string {
	t.Helper()
	got, msg, err := c.read()
	if err != nil {
		t.Fatalf("want a %d reply: %v", code, err)
	}
	if got != code {
		t.Fatalf("want a %d reply, got %d %s", code, got, msg)
	}
	return msg
}

// send writes one command line.
func (c *ctl) send(t testing.TB, format string, args ...any) {
	t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := c.tp.PrintfLine(format, args...); err != nil {
		t.Fatalf("send %q: %v", fmt.Sprintf(format, args...), err)
	}
}

// sendRaw writes b as it is.
func (c *ctl) sendRaw(t testing.TB, b []byte) {
	t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// sendOOB writes b with MSG_OOB: its last byte becomes TCP urgent data.
func (c *ctl) sendOOB(t testing.TB, b []byte) {
	t.Helper()
	if err := sendOOB(c.c, b); err != nil {
		t.Fatalf("send urgent: %v", err)
	}
}

// cmd sends a command and expects the reply code.
func (c *ctl) cmd(t testing.TB, code int, format string, args ...any) string {
	t.Helper()
	c.send(t, format, args...)
	return c.expect(t, code)
}

// expectEOF fails unless the proxy has closed the connection (after
// whatever replies are still to be read, which fail the test).
func (c *ctl) expectEOF(t testing.TB) {
	t.Helper()
	c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := c.tp.ReadLine()
	if err == nil {
		t.Fatalf("want the connection closed, got %q", line)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("want the connection closed, still open after %s", ioTimeout)
	}
}

// login reads the greeting and logs in with binary type.
func (c *ctl) login(t testing.TB, user string) {
	t.Helper()
	c.expect(t, 220)
	c.cmd(t, 331, "USER %s", user)
	c.cmd(t, 230, "PASS secret")
	c.cmd(t, 200, "TYPE I")
}

var (
	re227 = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	re229 = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
)

// parse227 returns the address of a 227 reply text.
func parse227(text string) (netip.AddrPort, bool) {
	m := re227.FindStringSubmatch(text)
	if m == nil {
		return netip.AddrPort{}, false
	}
	var n [6]byte
	for i := range n {
		v, err := strconv.Atoi(m[i+1])
		if err != nil || v > 255 {
			return netip.AddrPort{}, false
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5])), true
}

// parse229 returns the port of a 229 reply text.
func parse229(text string) (uint16, bool) {
	m := re229.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	p, err := strconv.ParseUint(m[1], 10, 16)
	return uint16(p), err == nil
}

// passive sends PASV or EPSV and returns the announced port, which must be
// on the proxy's address.
func (c *ctl) passive(t testing.TB, mode string) uint16 {
	t.Helper()
	switch mode {
	case "PASV":
		msg := c.cmd(t, 227, "PASV")
		ap, ok := parse227(msg)
		if !ok || ap.Addr() != loopback {
			t.Fatalf("227 %s: want an address on %s", msg, loopback)
		}
		return ap.Port()
	case "EPSV":
		msg := c.cmd(t, 229, "EPSV")
		p, ok := parse229(msg)
		if !ok {
			t.Fatalf("229 %s: no port", msg)
		}
		return p
	}
	t.Fatalf("not a passive mode: %s", mode)
	return 0
}

// announce listens on 127.0.0.1 and announces the listener with PORT or
// EPRT. The listener is closed when the test ends.
func (c *ctl) announce(t testing.TB, mode string) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := ln.Addr().(*net.TCPAddr).Port
	switch mode {
	case "PORT":
		c.cmd(t, 200, "PORT 127,0,0,1,%d,%d", p>>8, p&0xff)
	case "EPRT":
		c.cmd(t, 200, "EPRT |1|127.0.0.1|%d|", p)
	default:
		t.Fatalf("not an active mode: %s", mode)
	}
	return ln
}

// open runs cmd on a new data connection in mode (PASV, EPSV, PORT or
// EPRT), after REST rest when rest > 0, and returns the data connection
// once the server's 150 has come.
func (c *ctl) open(t testing.TB, mode, cmd string, rest int64) *net.TCPConn {
	t.Helper()
	var dc *net.TCPConn
	switch mode {
	case "PASV", "EPSV":
		port := c.passive(t, mode)
		if rest > 0 {
			c.cmd(t, 350, "REST %d", rest)
		}
		c.send(t, "%s", cmd)
		conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
		if err != nil {
			t.Fatalf("data connection: %v", err)
		}
		dc = conn.(*net.TCPConn)
		c.expectPrelim(t)
	default:
		ln := c.announce(t, mode)
		if rest > 0 {
			c.cmd(t, 350, "REST %d", rest)
		}
		c.send(t, "%s", cmd)
		c.expectPrelim(t)
		ln.SetDeadline(time.Now().Add(ioTimeout))
		conn, err := ln.AcceptTCP()
		if err != nil {
			t.Fatalf("data connection: %v", err)
		}
		ln.Close()
		dc = conn
	}
	t.Cleanup(func() { dc.Close() })
	dc.SetDeadline(time.Now().Add(ioTimeout))
	return dc
}

func (c *ctl) expectPrelim(t testing.TB) {
	t.Helper()
	code, msg, err := c.read()
	if err != nil {
		t.Fatalf("want 150: %v", err)
	}
	if code != 150 && code != 125 {
		t.Fatalf("want 150, got %d %s", code, msg)
	}
}

// download runs cmd in mode, after REST rest when rest > 0, and copies the
// data to w.
func (c *ctl) download(t testing.TB, mode, cmd string, rest int64, w io.Writer) {
	t.Helper()
	dc := c.secure(t, c.open(t, mode, cmd, rest))
	if _, err := io.Copy(w, dc); err != nil {
		t.Fatalf("%s: reading data: %v", cmd, err)
	}
	dc.Close()
	c.expect(t, 226)
}

// upload runs cmd in mode and sends r's content.
func (c *ctl) upload(t testing.TB, mode, cmd string, r io.Reader) {
	t.Helper()
	dc := c.secure(t, c.open(t, mode, cmd, 0))
	if _, err := io.Copy(dc, r); err != nil {
		t.Fatalf("%s: writing data: %v", cmd, err)
	}
	dc.Close()
	c.expect(t, 226)
}

// ---- jlaffaye/ftp client ----

// dialLog records where a jlaffaye/ftp client connected.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialLog) last() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.addrs) == 0 {
		return ""
	}
	return d.addrs[len(d.addrs)-1]
}

// dialFTP logs in through the proxy with jlaffaye/ftp, in EPSV mode or
// (epsv false) PASV mode. The client trusts the address in 227 replies, so
// the address it connects to is the one the proxy announced; it may only
// connect to 127.0.0.1.
func dialFTP(t testing.TB, addr string, epsv bool) (*ftp.ServerConn, *dialLog) {
	t.Helper()
	log := &dialLog{}
	dial := func(network, address string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		if host != "127.0.0.1" {
			return nil, fmt.Errorf("test client: refusing to connect to %s", address)
		}
		log.mu.Lock()
		log.addrs = append(log.addrs, address)
		log.mu.Unlock()
		c, err := net.DialTimeout(network, address, ioTimeout)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		return c, nil
	}
	c, err := ftp.Dial(addr, ftp.DialWithDialFunc(dial), ftp.DialWithDisabledEPSV(!epsv),
		ftp.DialWithDisabledMLSD(true), ftp.DialWithTrustPasvIP(true))
	if err != nil {
		t.Fatalf("ftp dial: %v", err)
	}
	t.Cleanup(func() { c.Quit() })
	if err := c.Login("tester", "secret"); err != nil {
		t.Fatalf("login: %v", err)
	}
	return c, log
}

// ---- misc ----

// fileSum returns the SHA-256 of a file in the served directory.
func fileSum(t testing.TB, name string) [32]byte {
	t.Helper()
	f, err := os.Open(filepath.Join(servedDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// removeServed deletes an uploaded file when the test ends.
func removeServed(t testing.TB, name string) {
	t.Cleanup(func() { os.Remove(filepath.Join(servedDir, name)) })
}

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ownListeners returns the ports of the TCP sockets of this process that
// are listening on IPv4.
func ownListeners(t testing.TB) map[uint16]bool {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	data, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[uint16]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err == nil {
			ports[uint16(p)] = true
		}
	}
	return ports
}

// sendOOB writes b with MSG_OOB, as BSD ftp and Python's ftplib do for
// ABOR: the last byte of b becomes TCP urgent data.
func sendOOB(c *net.TCPConn, b []byte) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		var n int
		n, serr = unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_OOB)
		if serr == nil && n != len(b) {
			serr = fmt.Errorf("short urgent write: %d of %d bytes", n, len(b))
		}
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	return err
}
