package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/proxy/ftp"
	"github.com/ftpalg/ftpalg/proxy/ftp/ftptest"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// sentinel is the command a vector test client sends after the vector; the
// scripted server stops recording when it arrives.
const sentinel = "SITE FTPALG-SENTINEL\r\n"

// fakeOK is what the scripted server answers to every command it receives.
const fakeOK = "200 scripted-server-ok\r\n"

// TestVectorsRelay plays every vector through a real Session on loopback: a
// scripted upstream server sends the reply vectors (or records what the
// proxy forwards of the command vectors) and a raw client checks what the
// proxy did against the vector's expected action.
func TestVectorsRelay(t *testing.T) {
	vs, err := ftptest.Load("ftp/testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Run(v.ID, func(t *testing.T) {
			switch v.Kind {
			case "reply":
				relayReplyVector(t, v)
			case "command":
				relayCommandVector(t, v)
			}
		})
	}
}

// relayRig is one proxy Server between a scripted server and a raw client.
type relayRig struct {
	t        *testing.T
	upstream net.Listener
	srvConn  chan net.Conn
	fw       *rulestest.Fake
	proxyLn  net.Listener
	cancel   context.CancelFunc
	done     chan error
}

func newRelayRig(t *testing.T, clientV6 bool) *relayRig {
	t.Helper()
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relayRig{t: t, upstream: up, srvConn: make(chan net.Conn, 1), fw: rulestest.NewFake(), done: make(chan error, 1)}
	go func() {
		c, err := up.Accept()
		if err != nil {
			close(r.srvConn)
			return
		}
		c.Write([]byte("220 scripted server ready\r\n"))
		r.srvConn <- c
	}()
	srv, err := NewServer(Config{Upstream: up.Addr().String(), Firewall: r.fw, DataAcceptTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	listen := "127.0.0.1:0"
	if clientV6 {
		listen = "[::1]:0"
	}
	r.proxyLn, err = net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- srv.Serve(ctx, r.proxyLn, 100*time.Millisecond) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
		up.Close()
		select {
		case c, ok := <-r.srvConn:
			if ok {
				c.Close()
			}
		default:
		}
	})
	return r
}

// dial connects a raw client, from addr when it is a loopback address this
// host can use, and reads the greeting.
func (r *relayRig) dial(from string) (net.Conn, *bufio.Reader, net.Conn) {
	r.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if a, err := netip.ParseAddr(from); err == nil && a.IsLoopback() && (a.Is4() == isV4Listener(r.proxyLn)) {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0))
	}
	c, err := d.Dial("tcp", r.proxyLn.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "220 ") {
		r.t.Fatalf("greeting %q, %v", greeting, err)
	}
	srv, ok := <-r.srvConn
	if !ok {
		r.t.Fatal("scripted server got no connection")
	}
	srv.SetDeadline(time.Now().Add(10 * time.Second))
	return c, br, srv
}

func isV4Listener(ln net.Listener) bool {
	return ln.Addr().(*net.TCPAddr).AddrPort().Addr().Is4()
}

// readWholeReply reads one reply from br, joining the chunks the reader
// splits long multi-line replies into.
func readWholeReply(br *bufio.Reader) (*ftp.Reply, error) {
	rr := ftp.NewReplyReader(ftp.NewReplyScanner(br))
	whole := &ftp.Reply{}
	for {
		r, err := rr.Next()
		if whole.Code == 0 {
			whole.Code = r.Code
		}
		whole.Lines = append(whole.Lines, r.Lines...)
		if err != nil || !r.More {
			return whole, err
		}
	}
}

// completeReplies reports whether raw consists of whole replies only.
func completeReplies(raw []byte) bool {
	rr := ftp.NewReplyReader(ftp.NewReplyScanner(bytes.NewReader(raw)))
	for {
		_, err := rr.Next()
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func requestFor(v ftptest.Vector) string {
	if v.Context.Request != "" {
		return v.Context.Request
	}
	if v.Expect.Code != nil {
		switch *v.Expect.Code {
		case ftp.CodePASV:
			return "PASV"
		case ftp.CodeEPSV:
			return "EPSV"
		case ftp.CodeLPSV:
			return "LPSV"
		}
	}
	return "NOOP"
}

func relayReplyVector(t *testing.T, v ftptest.Vector) {
	// Replies are played over IPv4 on both sides, also those captured over
	// IPv6: the relay forwards a same-family request unchanged, so the
	// server's reply bytes meet the same decision either way (over IPv6 a
	// PASV would be answered by the proxy itself and never reach the
	// server; TestTranslation covers that).
	r := newRelayRig(t, false)
	client, br, srv := r.dial("127.0.0.1")
	req := requestFor(v)
	if c := ftp.ParseCommand([]byte(req)); c.Active() && c.Arg == "" {
		// A reply to an active-mode command: announce a real address so
		// the proxy forwards (a rewritten) command.
		req += " " + map[ftp.Kind]string{ftp.KindPORT: "127,0,0,1,195,80", ftp.KindEPRT: "|1|127.0.0.1|50000|",
			ftp.KindLPRT: "4,4,127,0,0,1,2,195,80"}[c.Kind]
	}
	if _, err := client.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	sbr := bufio.NewReader(srv)
	got, err := sbr.ReadString('\n')
	if c := ftp.ParseCommand([]byte(req)); err != nil ||
		c.Active() && ftp.ParseCommand([]byte(strings.TrimSpace(got))).Verb != c.Verb ||
		!c.Active() && got != req+"\r\n" {
		t.Fatalf("server got %q, %v; want %q", got, err, req)
	}
	for _, chunk := range v.RawChunks() {
		if _, err := srv.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	raw := v.Raw()
	if !completeReplies(raw) {
		// The vector ends inside a line or a multi-line reply: end the
		// stream there, as the server that sent it would have to.
		srv.(*net.TCPConn).CloseWrite()
	}
	action := ""
	switch {
	case v.Expect.Action == "close" || (v.Allows("close") && len(raw) > ftp.MaxLine):
		srv.Close() // the proxy must close on its own; this only avoids a hang
		rest, _ := io.ReadAll(br)
		if len(rest) > 0 && !bytes.HasPrefix(rest, []byte("421 ")) {
			t.Fatalf("want the session closed (optionally after a 421), got %q", clip(rest))
		}
		return
	case v.Expect.Action == "pass-through" || ftp.ParseCommand([]byte(req)).Kind == ftp.KindOther:
		buf := make([]byte, len(raw))
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatalf("reading relayed reply: %v (got %q)", err, clip(buf))
		}
		action = "pass-through"
		if !bytes.Equal(buf, raw) {
			t.Fatalf("relayed %q, want the server's bytes %q unchanged", clip(buf), clip(raw))
		}
		// Only the active-mode request itself may have opened one.
		if n := len(r.fw.Pinholes()); n != 0 && !ftp.ParseCommand([]byte(req)).Active() {
			t.Fatalf("pass-through opened %d pinholes", n)
		}
	default:
		rep, err := readWholeReply(br)
		if err != nil && len(rep.Lines) == 0 {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				action = "close"
				break
			}
			t.Fatalf("reading reply: %v", err)
		}
		action = classifyPassive(t, r, req, rep, raw)
	}
	if !v.Allows(action) {
		t.Fatalf("action %s, want %s (acceptable %v)", action, v.Expect.Action, v.Expect.Acceptable)
	}
}

// classifyPassive tells what the proxy did with a reply to a passive
// request: rewrite (a reply in the client's form announcing a proxy port
// behind a pinhole), no-pinhole (unchanged, or a 425), or something wrong.
func classifyPassive(t *testing.T, r *relayRig, req string, rep *ftp.Reply, raw []byte) string {
	t.Helper()
	if bytes.Equal(rep.Raw(), raw) {
		if len(r.fw.Pinholes()) != 0 {
			t.Fatal("unchanged reply but a pinhole is open")
		}
		return "no-pinhole"
	}
	if rep.Code == 425 {
		if len(r.fw.Pinholes()) != 0 {
			t.Fatal("425 but a pinhole is open")
		}
		return "no-pinhole"
	}
	if ftp.ParseCommand([]byte(req)).Kind == ftp.KindEPSVAll && rep.Code == 200 {
		// The proxy honoured EPSV ALL itself, whatever the server said.
		if len(r.fw.Pinholes()) != 0 {
			t.Fatal("EPSV ALL answered 200 but a pinhole is open")
		}
		return "no-pinhole"
	}
	kind := ftp.ParseCommand([]byte(req)).Kind
	want := map[ftp.Kind]int{ftp.KindPASV: ftp.CodePASV, ftp.KindEPSV: ftp.CodeEPSV, ftp.KindLPSV: ftp.CodeLPSV}[kind]
	if rep.Code != want {
		t.Fatalf("client got %d %q, want a %d for %s", rep.Code, clip(rep.Raw()), want, req)
	}
	ap, ok, err := ftp.ParsePassiveReply(rep)
	if !ok || err != nil {
		t.Fatalf("proxy's own reply %q does not parse: %v", rep.Raw(), err)
	}
	if ap.Addr().IsValid() && ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("client was given %s, not the proxy's address", ap.Addr())
	}
	holes := r.fw.Pinholes()
	if len(holes) != 1 || holes[0].Local.Port() != ap.Port() || holes[0].Peer != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("pinholes %v, want exactly one from 127.0.0.1 to port %d", holes, ap.Port())
	}
	return "rewrite"
}

func relayCommandVector(t *testing.T, v ftptest.Vector) {
	from := v.Context.ClientAddr
	if from == "" {
		from = "127.0.0.1"
	}
	a, _ := netip.ParseAddr(from)
	r := newRelayRig(t, a.IsValid() && a.Is6() && !a.Is4In6())
	client, br, srv := r.dial(from)

	// The scripted server answers every line and records what arrives
	// before the sentinel.
	recorded := make(chan []byte, 1)
	go func() {
		var got []byte
		sbr := bufio.NewReader(srv)
		for {
			line, err := sbr.ReadBytes('\n')
			if string(line) == sentinel || err != nil {
				recorded <- got
				if err == nil {
					srv.Write([]byte(fakeOK))
				}
				return
			}
			got = append(got, line...)
			srv.Write([]byte(fakeOK))
		}
	}()
	var epsvAllReplies int
	if v.Context.EPSVAll {
		client.Write([]byte("EPSV ALL\r\n"))
		epsvAllReplies = 1
	}
	for _, chunk := range v.RawChunks() {
		if _, err := client.Write(chunk); err != nil {
			break // the proxy may have closed already
		}
	}
	if !bytes.HasSuffix(v.Raw(), []byte("\r\n")) {
		// Only CRLF ends a command line: end the vector's last line, as
		// the client that sent it would have to, before the sentinel.
		client.Write([]byte("\r\n"))
	}
	client.Write([]byte(sentinel))
	var replies []*ftp.Reply
	rr := ftp.NewReplyReader(ftp.NewReplyScanner(br))
	closed := false
	for {
		rep, err := rr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
				closed = true
				break
			}
			t.Fatalf("reading replies: %v", err)
		}
		replies = append(replies, rep)
		if bytes.Equal(rep.Raw(), []byte(fakeOK)) && len(replies) > epsvAllReplies && sentinelAnswered(replies, epsvAllReplies) {
			break
		}
	}
	var forwarded []byte
	if !closed {
		forwarded = <-recorded
	} else {
		srv.Close()
		forwarded = <-recorded
	}
	if v.Context.EPSVAll {
		forwarded = bytes.TrimPrefix(forwarded, []byte("EPSV ALL\r\n"))
		replies = replies[1:]
	}
	action := classifyCommand(t, r, v, forwarded, replies, closed)
	if !v.Allows(action) {
		t.Fatalf("action %s, want %s (acceptable %v); server got %q, client got %q",
			action, v.Expect.Action, v.Expect.Acceptable, clip(forwarded), clip(joinReplies(replies)))
	}
}

// sentinelAnswered reports whether the last reply answers the sentinel:
// every command line the client sent has been answered by then, because
// the proxy keeps replies in command order.
func sentinelAnswered(replies []*ftp.Reply, skip int) bool {
	return len(replies) > skip && bytes.Equal(replies[len(replies)-1].Raw(), []byte(fakeOK))
}

func classifyCommand(t *testing.T, r *relayRig, v ftptest.Vector, forwarded []byte, replies []*ftp.Reply, closed bool) string {
	t.Helper()
	raw := v.Raw()
	proxyReplied := false
	for _, rep := range replies {
		if !bytes.Equal(rep.Raw(), []byte(fakeOK)) && rep.Code >= 500 {
			proxyReplied = true
		}
	}
	// Whatever the vector, no active-mode command may reach the server with
	// an address other than the proxy's own.
	fwdLines := splitLines(forwarded)
	for _, l := range fwdLines {
		if c := ftp.ParseCommand([]byte(strings.TrimRight(l, "\r\n"))); c.Active() {
			if ap, err := ftp.ParseActive(c); err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") {
				t.Fatalf("server got %q: an active-mode command that is not the proxy's own", l)
			}
		}
	}
	// The action is judged on the vector's first line, as its expected
	// parse is; later lines of a pipelined vector are judged on their own
	// by the check above.
	vecLines := splitLines(raw)
	single := len(vecLines) == 1
	switch {
	case closed && len(forwarded) == 0 && !proxyReplied:
		return "close"
	case len(fwdLines) > 0 && fwdLines[0] == vecLines[0]:
		if single && len(r.fw.Pinholes()) != 0 {
			t.Fatal("command passed through but a pinhole is open")
		}
		return "pass-through"
	case proxyReplied && (len(fwdLines) == 0 || len(vecLines) > 1 && fwdLines[0] == vecLines[1]):
		if closed && len(forwarded) == 0 {
			return "close"
		}
		return "reject"
	}
	// Rewritten: an active-mode line for the proxy's own address and port,
	// with a pinhole for the server.
	line := strings.TrimSuffix(fwdLines[0], "\r\n")
	c := ftp.ParseCommand([]byte(line))
	ap, err := ftp.ParseActive(c)
	if err != nil {
		t.Fatalf("server got %q, neither the original nor a valid rewrite: %v", line, err)
	}
	holes := r.fw.Pinholes()
	if len(holes) != 1 || holes[0].Local.Port() != ap.Port() || holes[0].Peer != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("server got %q with pinholes %v: not the proxy's own address behind one pinhole", line, holes)
	}
	return "rewrite"
}

// splitLines splits b after each LF, keeping the terminators.
func splitLines(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, string(b))
			break
		}
		out = append(out, string(b[:i+1]))
		b = b[i+1:]
	}
	return out
}

func joinReplies(rs []*ftp.Reply) []byte {
	var b []byte
	for _, r := range rs {
		b = append(b, r.Raw()...)
	}
	return b
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

func clip(b []byte) string {
	s := fmt.Sprintf("%q", b)
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
