//go:build linux

package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// ctlConn is a minimal FTP control client for tests that must stop between
// two commands: announce a data port with PASV/EPSV, then look at the
// firewall (or let a third party knock) before connecting. It runs in a
// test's own process; its sockets live in the namespace they were dialled
// from (see dial). Every read and write has a deadline.
type ctlConn struct {
	ns   *nstest.NS
	c    net.Conn
	r    *bufio.Reader
	mu   sync.Mutex
	tr   strings.Builder // transcript, "> CMD" and "< reply"
	wait time.Duration   // per-reply deadline
}

// dialCtl connects from ns to addr and reads the greeting.
func dialCtl(ns *nstest.NS, addr string, wait time.Duration) (*ctlConn, error) {
	return dialCtlFrom(ns, netip.Addr{}, addr, wait)
}

// loginPassive dials ftpalg's listen address from ns (from the address
// from; invalid: the one the kernel picks), logs in as srv's user and
// announces a passive data connection with mode; it returns the control
// connection, closed when the test ends (with its transcript if the test
// failed), and the announced address.
func loginPassive(t *testing.T, ns *nstest.NS, from netip.Addr, listen string, srv *Server, mode Mode) (*ctlConn, netip.AddrPort) {
	t.Helper()
	c, err := dialCtlFrom(ns, from, listen, 10*time.Second)
	if err != nil {
		t.Fatalf("control connection: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("--- control transcript ---\n%s", c.Transcript())
		}
	})
	if err := c.login(srv.User, srv.Pass); err != nil {
		t.Fatalf("login: %v", err)
	}
	announced, err := c.passive(mode)
	if err != nil {
		t.Fatalf("%s: %v", mode.Command(), err)
	}
	return c, announced
}

// dialCtlFrom is dialCtl from the address from (invalid: the one the
// kernel picks; with several addresses on a link, IPv6 picks the newest).
func dialCtlFrom(ns *nstest.NS, from netip.Addr, addr string, wait time.Duration) (*ctlConn, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	tc, err := ns.Dial(from, to, wait)
	if err != nil {
		return nil, err
	}
	c := net.Conn(tc)
	f := &ctlConn{ns: ns, c: c, r: bufio.NewReader(c), wait: wait}
	code, _, err := f.reply()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if code != 220 {
		c.Close()
		return nil, fmt.Errorf("greeting: code %d, want 220", code)
	}
	return f, nil
}

// dialData connects the data connection to addr from the control
// connection's namespace.
func (f *ctlConn) dialData(addr netip.AddrPort) (net.Conn, error) {
	return dial(f.ns, addr.String(), f.wait)
}

// Close closes the control connection without QUIT.
func (f *ctlConn) Close() error { return f.c.Close() }

// Transcript returns the exchange so far.
func (f *ctlConn) Transcript() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tr.String()
}

func (f *ctlConn) note(format string, args ...any) {
	f.mu.Lock()
	fmt.Fprintf(&f.tr, format+"\n", args...)
	f.mu.Unlock()
}

// reply reads one (possibly multi-line) reply and returns its code and
// last line.
func (f *ctlConn) reply() (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(f.wait))
	first, err := f.r.ReadString('\n')
	if err != nil {
		return 0, "", err
	}
	f.note("< %s", strings.TrimRight(first, "\r\n"))
	if len(first) < 4 {
		return 0, first, fmt.Errorf("short reply %q", first)
	}
	code, err := strconv.Atoi(first[:3])
	if err != nil {
		return 0, first, fmt.Errorf("bad reply %q", first)
	}
	last := first
	if first[3] == '-' {
		end := first[:3] + " "
		for !strings.HasPrefix(last, end) {
			if last, err = f.r.ReadString('\n'); err != nil {
				return 0, "", err
			}
			f.note("< %s", strings.TrimRight(last, "\r\n"))
		}
	}
	return code, strings.TrimRight(last, "\r\n"), nil
}

// cmd sends line and reads the reply.
func (f *ctlConn) cmd(line string) (int, string, error) {
	f.note("> %s", line)
	_ = f.c.SetWriteDeadline(time.Now().Add(f.wait))
	if _, err := io.WriteString(f.c, line+"\r\n"); err != nil {
		return 0, "", err
	}
	return f.reply()
}

// expect sends line and fails unless the reply code is one of want.
func (f *ctlConn) expect(line string, want ...int) (string, error) {
	code, text, err := f.cmd(line)
	if err != nil {
		return "", fmt.Errorf("%s: %w", strings.Fields(line)[0], err)
	}
	for _, w := range want {
		if code == w {
			return text, nil
		}
	}
	return text, fmt.Errorf("%s: reply %q, want %v", strings.Fields(line)[0], text, want)
}

// login sends USER and PASS (no PASS if USER already logged in) and
// switches to binary mode.
func (f *ctlConn) login(user, pass string) error {
	code, text, err := f.cmd("USER " + user)
	if err != nil {
		return fmt.Errorf("USER: %w", err)
	}
	switch code {
	case 230:
	case 331:
		if _, err := f.expect("PASS "+pass, 230); err != nil {
			return err
		}
	default:
		return fmt.Errorf("USER: reply %q", text)
	}
	_, err = f.expect("TYPE I", 200)
	return err
}

var (
	re227 = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	re229 = regexp.MustCompile(`\(\|\|\|(\d+)\|\)`)
)

// passive sends PASV, EPSV or LPSV and returns the announced data address
// (for EPSV: the control connection's peer and the announced port).
func (f *ctlConn) passive(mode Mode) (netip.AddrPort, error) {
	switch mode {
	case LPSV:
		text, err := f.expect("LPSV", 228)
		if err != nil {
			return netip.AddrPort{}, err
		}
		ap, err := ftp.ParseLPSV(text)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("unparsable 228 reply %q: %w", text, err)
		}
		return ap, nil
	case PASV:
		text, err := f.expect("PASV", 227)
		if err != nil {
			return netip.AddrPort{}, err
		}
		m := re227.FindStringSubmatch(text)
		if m == nil {
			return netip.AddrPort{}, fmt.Errorf("unparsable 227 reply %q", text)
		}
		var b [6]byte
		for i := range b {
			n, err := strconv.Atoi(m[i+1])
			if err != nil || n > 255 {
				return netip.AddrPort{}, fmt.Errorf("unparsable 227 reply %q", text)
			}
			b[i] = byte(n)
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5])), nil
	case EPSV:
		text, err := f.expect("EPSV", 229)
		if err != nil {
			return netip.AddrPort{}, err
		}
		m := re229.FindStringSubmatch(text)
		if m == nil {
			return netip.AddrPort{}, fmt.Errorf("unparsable 229 reply %q", text)
		}
		port, err := strconv.ParseUint(m[1], 10, 16)
		if err != nil || port == 0 {
			return netip.AddrPort{}, fmt.Errorf("unparsable 229 reply %q", text)
		}
		peer := f.c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		return netip.AddrPortFrom(peer, uint16(port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("passive: mode %s is not passive", mode)
}

// active announces ap with PORT, EPRT or LPRT (the client listens there)
// and requires the 200.
func (f *ctlConn) active(mode Mode, ap netip.AddrPort) error {
	var line string
	switch mode {
	case PORT:
		line = "PORT " + ftp.FormatPORT(ap)
	case EPRT:
		line = "EPRT " + ftp.FormatEPRT(ap)
	case LPRT:
		line = "LPRT " + ftp.FormatLPRT(ap)
	default:
		return fmt.Errorf("active: mode %s is not active", mode)
	}
	_, err := f.expect(line, 200)
	return err
}

// retr downloads remote over the already connected data connection dc
// (the caller connected it after PASV/EPSV) and returns size and SHA-256.
func (f *ctlConn) retr(dc net.Conn, remote string) (int64, string, error) {
	defer dc.Close()
	if _, err := f.expect("RETR "+remote, 125, 150); err != nil {
		return 0, "", err
	}
	_ = dc.SetReadDeadline(time.Now().Add(f.wait))
	h := sha256.New()
	n, err := io.Copy(h, dc)
	if err != nil {
		return n, "", fmt.Errorf("data: %w", err)
	}
	// Close at EOF, as real clients do: proftpd waits for the peer to
	// close the data connection (up to its TimeoutLinger) before it sends
	// 226.
	dc.Close()
	if code, text, err := f.reply(); err != nil || code != 226 {
		return n, "", fmt.Errorf("end of RETR: reply %q, err %v, want 226", text, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// quit says goodbye and closes the connection.
func (f *ctlConn) quit() error {
	defer f.c.Close()
	_, err := f.expect("QUIT", 221)
	return err
}

// knock tries a TCP connect from ns to addr with a short timeout and
// classifies the outcome: "connected", "timeout" (no answer to the SYN:
// dropped by a firewall), "refused" (RST: the port is reachable but
// nobody listens) or "error: ...".
func knock(ns *nstest.NS, addr netip.AddrPort, timeout time.Duration) (string, net.Conn) {
	return knockFrom(ns, netip.Addr{}, addr, timeout)
}

// knockFrom is knock from the source address from (invalid: any).
func knockFrom(ns *nstest.NS, from netip.Addr, addr netip.AddrPort, timeout time.Duration) (string, net.Conn) {
	c, err := ns.Dial(from, addr, timeout)
	switch {
	case err == nil:
		return "connected", c
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", nil
	case errors.Is(err, syscall.ECONNRESET):
		return "reset", nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", nil
	}
	return "error: " + err.Error(), nil
}

// dial opens a TCP connection from inside ns to addr (HOST:PORT).
func dial(ns *nstest.NS, addr string, timeout time.Duration) (net.Conn, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	c, err := ns.Dial(netip.Addr{}, to, timeout)
	if err != nil {
		return nil, err // not a nil *net.TCPConn in a non-nil net.Conn
	}
	return c, nil
}

// waitBanner polls addr from inside ns until something answers with an
// FTP 220 greeting, the deadline passes, or alive reports the serving
// process died.
func waitBanner(ns *nstest.NS, addr string, deadline time.Duration, alive func() error) error {
	return waitGreeting(ns, addr, deadline, alive, "", nil)
}

// waitGreeting is waitBanner over start (nil: plain), which makes the
// connection the greeting is read from (implicit TLS: the handshake);
// what names it in the error.
func waitGreeting(ns *nstest.NS, addr string, deadline time.Duration, alive func() error, what string, start func(net.Conn) (net.Conn, error)) error {
	end := time.Now().Add(deadline)
	var last error
	for time.Now().Before(end) {
		if err := alive(); err != nil {
			return err
		}
		c, err := dial(ns, addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			if start != nil {
				c, err = start(c)
			}
			var line string
			if err == nil {
				if line, err = bufio.NewReader(c).ReadString('\n'); err != nil {
					err = fmt.Errorf("connected but no greeting: %w", err)
				}
			}
			if err == nil && strings.HasPrefix(line, "220") {
				// Be polite: say goodbye so servers do not log errors.
				_, _ = c.Write([]byte("QUIT\r\n"))
				c.Close()
				return nil
			}
			c.Close()
			if err == nil {
				err = fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
			}
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s (%sfrom netns %s) not ready after %v: %v", addr, what, ns.Name, deadline, last)
}
