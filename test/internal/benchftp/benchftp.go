// Package benchftp is the small FTP client both benchmarks (test/bench and
// test/bench/gateway) drive every path with, so direct, proxied and routed
// runs use exactly the same client code.
package benchftp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// Client is a minimal FTP client: net/textproto on the control channel,
// EPSV for the measured transfers.
type Client struct {
	conn net.Conn
	tp   *textproto.Conn
	host string // host of the control connection; data connections go there
	// local is the address the data connections are dialed from (nil:
	// the kernel chooses), Dialer.Source.
	local *net.TCPAddr
	// dataTLS is the TLS configuration of the data connections of an
	// FTPS session (tls.go), nil for plain FTP.
	dataTLS *tls.Config
}

// stepError tells which step of a session failed, for the error counts.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func StepErr(step string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{step: step, err: err}
}

// Dialer opens control connections. The zero Dialer is what Dial and
// Open use.
type Dialer struct {
	// KeepAlive is the control connection's TCP keepalive period, as in
	// net.Dialer: 0 is Go's default (15 s), negative turns it off (for
	// idle sessions whose keepalive should come from the proxy alone).
	KeepAlive time.Duration
	// TLS, when set, makes the session FTPS (tls.go): AUTH TLS after the
	// greeting, PBSZ 0 and PROT P, and every data connection TLS,
	// resuming the control connection's session.
	TLS *tls.Config
	// Source, when valid, is the client's own address: the control
	// connection and the passive data connections are dialed from it (any
	// port), as from one of several client hosts behind a balancer that
	// hashes the source address.
	Source netip.Addr
}

// localAddr is the address to dial from (nil: any).
func (d Dialer) localAddr() *net.TCPAddr {
	if !d.Source.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(d.Source, 0))
}

// Dial connects, sets deadline on the control connection and reads the
// greeting.
func Dial(addr string, deadline time.Time) (*Client, error) { return Dialer{}.Dial(addr, deadline) }

// Open dials addr and logs in anonymously (see Dial and Login).
func Open(addr string, deadline time.Time) (*Client, error) { return Dialer{}.Open(addr, deadline) }

// Dial is the package's Dial with d's settings.
func (d Dialer) Dial(addr string, deadline time.Time) (*Client, error) {
	local := d.localAddr()
	nd := net.Dialer{Deadline: deadline, KeepAlive: d.KeepAlive}
	if local != nil {
		nd.LocalAddr = local
	}
	conn, err := nd.Dial("tcp", addr)
	if err != nil {
		return nil, StepErr("connect", err)
	}
	conn.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(addr)
	c := &Client{conn: conn, tp: textproto.NewConn(conn), host: host, local: local}
	if _, _, err := c.tp.ReadResponse(2); err != nil {
		conn.Close()
		return nil, StepErr("greeting", err)
	}
	if d.TLS != nil {
		if err := c.startTLS(d.TLS, deadline); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// Open is the package's Open with d's settings.
func (d Dialer) Open(addr string, deadline time.Time) (*Client, error) {
	c, err := d.Dial(addr, deadline)
	if err != nil {
		return nil, err
	}
	if err := c.Login(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) Close() error { return c.tp.Close() }

// NoDeadline lifts the control connection's deadline, for a session that
// is to stay idle.
func (c *Client) NoDeadline() { c.conn.SetDeadline(time.Time{}) }

// Cmd sends one command and reads its reply, which must start with the
// digit want (1..5; 0 accepts anything).
func (c *Client) Cmd(want int, format string, args ...any) (int, string, error) {
	if err := c.Send(format, args...); err != nil {
		return 0, "", err
	}
	return c.Reply(want)
}

// Send sends one command line without reading a reply.
func (c *Client) Send(format string, args ...any) error { return c.tp.PrintfLine(format, args...) }

// Reply reads one reply, which must start with the digit want (1..5; 0
// accepts anything).
func (c *Client) Reply(want int) (int, string, error) { return c.tp.ReadResponse(want) }

// Conn is the control connection, for deadlines and raw writes.
func (c *Client) Conn() net.Conn { return c.conn }

// Login logs in anonymously.
func (c *Client) Login() error {
	code, _, err := c.Cmd(0, "USER anonymous")
	if err != nil {
		return StepErr("USER", err)
	}
	switch code {
	case 230:
		return nil
	case 331:
		if _, _, err := c.Cmd(2, "PASS bench@example.org"); err != nil {
			return StepErr("PASS", err)
		}
		return nil
	default:
		return StepErr("USER", fmt.Errorf("unexpected reply %d", code))
	}
}

// Binary switches to TYPE I.
func (c *Client) Binary() error {
	if _, _, err := c.Cmd(2, "TYPE I"); err != nil {
		return StepErr("TYPE", err)
	}
	return nil
}

// EPSV asks for a passive data port and returns the address to dial.
func (c *Client) EPSV() (string, error) {
	_, msg, err := c.Cmd(2, "EPSV")
	if err != nil {
		return "", StepErr("EPSV", err)
	}
	port, err := ParseEPSV(msg)
	if err != nil {
		return "", StepErr("EPSV", err)
	}
	return net.JoinHostPort(c.host, strconv.Itoa(port)), nil
}

// ParseEPSV extracts the port of "229 Entering Extended Passive Mode (|||port|)".
func ParseEPSV(msg string) (int, error) {
	i := strings.IndexByte(msg, '(')
	j := strings.LastIndexByte(msg, ')')
	if i < 0 || j < i+5 {
		return 0, fmt.Errorf("malformed 229 reply %q", msg)
	}
	inner := msg[i+1 : j]
	d := inner[0]
	parts := strings.Split(inner, string(d))
	if len(parts) != 5 {
		return 0, fmt.Errorf("malformed 229 reply %q", msg)
	}
	port, err := strconv.Atoi(parts[3])
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("malformed 229 reply %q", msg)
	}
	return port, nil
}

// Transfer runs one passive-mode download: EPSV, connect (within
// connectTimeout if not zero), the command (LIST, RETR ...), the data until
// EOF, the final reply. It returns the bytes received and the EPSV port.
func (c *Client) Transfer(command string, deadline time.Time, connectTimeout time.Duration, buf []byte) (int64, int, error) {
	addr, err := c.EPSV()
	if err != nil {
		return 0, 0, err
	}
	_, ps, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(ps)
	verb, _, _ := strings.Cut(command, " ")
	d := net.Dialer{Deadline: deadline, Timeout: connectTimeout}
	if c.local != nil {
		d.LocalAddr = c.local
	}
	dc, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, port, StepErr(verb+" data connect", err)
	}
	defer dc.Close()
	dc.SetDeadline(deadline)
	if _, _, err := c.Cmd(1, "%s", command); err != nil {
		return 0, port, StepErr(verb, err)
	}
	n, err := Drain(c.data(dc), buf)
	if err != nil {
		return n, port, StepErr(verb+" data", err)
	}
	dc.Close()
	if _, _, err := c.Reply(2); err != nil {
		return n, port, StepErr(verb+" end", err)
	}
	return n, port, nil
}

// ActiveTransfer runs one active-mode download: listen on localIP, PORT,
// the command, accept the server's connection (within acceptTimeout), the
// data, the final reply. It returns the bytes and the address the data
// connection came from.
func (c *Client) ActiveTransfer(command, localIP string, deadline time.Time, acceptTimeout time.Duration, buf []byte) (int64, string, error) {
	ln, err := net.Listen("tcp4", net.JoinHostPort(localIP, "0"))
	if err != nil {
		return 0, "", StepErr("listen", err)
	}
	defer ln.Close()
	a := ln.Addr().(*net.TCPAddr)
	ip := a.IP.To4()
	if _, _, err := c.Cmd(2, "PORT %d,%d,%d,%d,%d,%d", ip[0], ip[1], ip[2], ip[3], a.Port>>8, a.Port&0xff); err != nil {
		return 0, "", StepErr("PORT", err)
	}
	verb, _, _ := strings.Cut(command, " ")
	if _, _, err := c.Cmd(1, "%s", command); err != nil {
		return 0, "", StepErr(verb, err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(acceptTimeout))
	dc, err := ln.Accept()
	if err != nil {
		return 0, "", StepErr(verb+" data accept", err)
	}
	defer dc.Close()
	from := dc.RemoteAddr().String()
	dc.SetDeadline(deadline)
	n, err := Drain(dc, buf)
	if err != nil {
		return n, from, StepErr(verb+" data", err)
	}
	dc.Close()
	if _, _, err := c.Reply(2); err != nil {
		return n, from, StepErr(verb+" end", err)
	}
	return n, from, nil
}

// Drain reads r to EOF into buf and throws the bytes away. It is
// io.Copy(io.Discard, r) with a caller-chosen buffer: io.Copy would hand a
// TCP connection to io.Discard's ReadFrom, which reads 8 KiB at a time and
// would make the client, not the path under test, the bottleneck.
func Drain(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
	}
}

// Quit ends the session politely.
func (c *Client) Quit() error {
	if _, _, err := c.Cmd(2, "QUIT"); err != nil {
		return StepErr("QUIT", err)
	}
	return nil
}

// ErrKind shortens an error to its step and a message without addresses,
// so that like errors count together.
func ErrKind(err error) string {
	step := "?"
	var se *stepError
	if errors.As(err, &se) {
		step = se.step
	}
	var (
		ne  net.Error
		te  *textproto.Error
		oe  *net.OpError
		msg string
	)
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		msg = "timeout"
	case errors.As(err, &te):
		msg = fmt.Sprintf("reply %03d %s", te.Code, te.Msg)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		msg = "unexpected EOF"
	case errors.As(err, &oe):
		msg = oe.Op + ": " + oe.Err.Error()
	case se != nil:
		msg = se.err.Error()
	default:
		msg = err.Error()
	}
	if len(msg) > 100 {
		msg = msg[:100] + "..."
	}
	return step + ": " + msg
}
