package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// client is a minimal FTP client: net/textproto for the control channel,
// passive mode (EPSV) only. The same code talks to the server directly and
// through the proxy.
type client struct {
	conn net.Conn
	tp   *textproto.Conn
	host string // host of the control connection; data connections go there
}

// stepError tells which step of a session failed, for the error counts.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func stepErr(step string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{step: step, err: err}
}

// dialFTP connects, sets deadline on the control connection and reads the
// greeting.
func dialFTP(addr string, deadline time.Time) (*client, error) {
	d := net.Dialer{Deadline: deadline}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, stepErr("connect", err)
	}
	conn.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(addr)
	c := &client{conn: conn, tp: textproto.NewConn(conn), host: host}
	if _, _, err := c.tp.ReadResponse(2); err != nil {
		conn.Close()
		return nil, stepErr("greeting", err)
	}
	return c, nil
}

func (c *client) close() error { return c.tp.Close() }

// cmd sends one command and reads its reply, which must start with the
// digit want (1..5; 0 accepts anything).
func (c *client) cmd(want int, format string, args ...any) (int, string, error) {
	if err := c.tp.PrintfLine(format, args...); err != nil {
		return 0, "", err
	}
	return c.tp.ReadResponse(want)
}

// login logs in anonymously.
func (c *client) login() error {
	code, _, err := c.cmd(0, "USER anonymous")
	if err != nil {
		return stepErr("USER", err)
	}
	switch code {
	case 230:
		return nil
	case 331:
		if _, _, err := c.cmd(2, "PASS bench@example.org"); err != nil {
			return stepErr("PASS", err)
		}
		return nil
	default:
		return stepErr("USER", fmt.Errorf("unexpected reply %d", code))
	}
}

// epsv asks for a passive data port and returns the address to dial.
func (c *client) epsv() (string, error) {
	_, msg, err := c.cmd(2, "EPSV")
	if err != nil {
		return "", stepErr("EPSV", err)
	}
	port, err := parseEPSV(msg)
	if err != nil {
		return "", stepErr("EPSV", err)
	}
	return net.JoinHostPort(c.host, strconv.Itoa(port)), nil
}

// parseEPSV extracts the port of "229 Entering Extended Passive Mode (|||port|)".
func parseEPSV(msg string) (int, error) {
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

// transfer runs one passive-mode download: EPSV, connect, the command
// (LIST, RETR ...), the data until EOF, the final reply. It returns the
// bytes received.
func (c *client) transfer(command string, deadline time.Time, buf []byte) (int64, error) {
	addr, err := c.epsv()
	if err != nil {
		return 0, err
	}
	verb, _, _ := strings.Cut(command, " ")
	d := net.Dialer{Deadline: deadline}
	dc, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, stepErr(verb+" data connect", err)
	}
	defer dc.Close()
	dc.SetDeadline(deadline)
	if _, _, err := c.cmd(1, "%s", command); err != nil {
		return 0, stepErr(verb, err)
	}
	n, err := drain(dc, buf)
	if err != nil {
		return n, stepErr(verb+" data", err)
	}
	dc.Close()
	if _, _, err := c.tp.ReadResponse(2); err != nil {
		return n, stepErr(verb+" end", err)
	}
	return n, nil
}

// drain reads r to EOF into buf and throws the bytes away. It is
// io.Copy(io.Discard, r) with a caller-chosen buffer: io.Copy would hand a
// TCP connection to io.Discard's ReadFrom, which reads 8 KiB at a time and
// would make the client, not the path under test, the bottleneck.
func drain(r io.Reader, buf []byte) (int64, error) {
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

// quit ends the session politely.
func (c *client) quit() error {
	if _, _, err := c.cmd(2, "QUIT"); err != nil {
		return stepErr("QUIT", err)
	}
	return nil
}
