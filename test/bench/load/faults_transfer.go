package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/proxy"
	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// ---- transfers cut short ----

// retr logs in to addr, switches to TYPE I, opens the EPSV data
// connection and sends RETR of BigFile; it returns after the 150.
func retr(addr string, deadline time.Time) (*benchftp.Client, net.Conn, error) {
	c, err := noKeepAlive.Open(addr, deadline)
	if err != nil {
		return nil, nil, err
	}
	dc, err := func() (net.Conn, error) {
		if err := c.Binary(); err != nil {
			return nil, err
		}
		daddr, err := c.EPSV()
		if err != nil {
			return nil, err
		}
		dc, err := net.DialTimeout("tcp", daddr, time.Until(deadline))
		if err != nil {
			return nil, err
		}
		dc.SetDeadline(deadline)
		if _, _, err := c.Cmd(1, "RETR %s", benchkit.BigFile); err != nil {
			dc.Close()
			return nil, err
		}
		return dc, nil
	}()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, dc, nil
}

// dataEnd is how a client's read of a data connection ended.
type dataEnd struct {
	n   int64
	err error // nil: EOF
	at  time.Time
}

// kind says how it ended: EOF, reset, timeout or the error.
func (d dataEnd) kind() string {
	var ne net.Error
	switch {
	case d.err == nil:
		return "EOF"
	case errors.Is(d.err, syscall.ECONNRESET):
		return "reset"
	case errors.As(d.err, &ne) && ne.Timeout():
		return "timeout"
	}
	return d.err.Error()
}

// readPaced reads c at about rate bytes a second (0: as fast as it can)
// until EOF or an error, or until limit bytes (<0: no limit).
func readPaced(c net.Conn, rate, limit int64) dataEnd {
	buf := make([]byte, 64<<10)
	t0 := time.Now()
	var n int64
	for limit < 0 || n < limit {
		b := buf
		if limit >= 0 {
			b = buf[:min(int64(len(buf)), limit-n)]
		}
		m, err := c.Read(b)
		n += int64(m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return dataEnd{n, err, time.Now()}
		}
		if rate > 0 {
			if ahead := time.Duration(float64(n)/float64(rate)*float64(time.Second)) - time.Since(t0); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	return dataEnd{n, nil, time.Now()}
}

// readPacedAsync runs readPaced in a goroutine.
func readPacedAsync(c net.Conn, rate int64) <-chan dataEnd {
	ch := make(chan dataEnd, 1)
	go func() { ch <- readPaced(c, rate, -1) }()
	return ch
}

// ctrlEnd is what the control connection said after a transfer command's
// 150: the next reply, when it came, and how the connection went on.
type ctrlEnd struct {
	code int
	text string // the reply, or "no reply: EOF" ...
	at   time.Time
	then string // "then EOF", "then timeout", "then 221 …"
}

// String is the reply and what followed, quoted for a report.
func (x ctrlEnd) String() string { return fmt.Sprintf("%q, %s", x.text, x.then) }

// watchControl reads the next reply and then once more, within timeout,
// while the caller reads the data connection.
func watchControl(c *benchftp.Client, timeout time.Duration) <-chan ctrlEnd {
	ch := make(chan ctrlEnd, 1)
	c.Conn().SetDeadline(time.Now().Add(timeout))
	go func() {
		var x ctrlEnd
		code, msg, err := c.Reply(0)
		x.at = time.Now()
		if err != nil {
			x.text, x.then = "no reply: "+endOf(err), "closed"
			ch <- x
			return
		}
		x.code, x.text = code, fmt.Sprintf("%d %s", code, msg)
		c.Conn().SetDeadline(time.Now().Add(3 * time.Second))
		if code, msg, err := c.Reply(0); err != nil {
			x.then = "then " + endOf(err)
		} else {
			x.then = fmt.Sprintf("then %d %s", code, msg)
		}
		ch <- x
	}()
	return ch
}

// endOf names how a read failed: EOF, reset, timeout or the error.
func endOf(err error) string {
	if errors.Is(err, io.EOF) {
		return "EOF"
	}
	return dataEnd{err: err}.kind()
}

func mibOf(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// xfer is a RETR of BigFile through a fresh proxy, past its 150, with
// the control connection watched (watchControl) while the fault reads the
// data.
type xfer struct {
	px   *nstest.Proc
	off  int64 // the proxy's log before the transfer
	c    *benchftp.Client
	dc   net.Conn
	ctrl <-chan ctrlEnd
}

// startXfer starts the proxy name in front of upstream with args, and a
// transfer through it that must be over within limit.
func (e *env) startXfer(name, upstream string, limit time.Duration, args ...string) (*xfer, error) {
	px, addr, err := e.proxy(name, upstream, nil, args...)
	if err != nil {
		return nil, err
	}
	x := &xfer{px: px, off: px.LogSize()}
	if x.c, x.dc, err = retr(addr, time.Now().Add(limit)); err != nil {
		px.Stop(stopGrace)
		return nil, err
	}
	x.ctrl = watchControl(x.c, limit)
	return x, nil
}

func (x *xfer) close() {
	x.dc.Close()
	x.c.Close()
	x.px.Stop(stopGrace)
}

// reported waits up to 5 s for the transfer's report, one of msgs, and
// puts it in r.logged. A transfer cut short must never be reported as
// finished.
func (x *xfer) reported(r *faultResult, msgs ...string) logLine {
	l, found := waitLog(x.px, x.off, 5*time.Second, func(l logLine) bool { return slices.Contains(msgs, l.msg()) })
	fin := count(logSince(x.px, x.off), isMsg(proxy.MsgTransferFinished))
	r.logged = fmt.Sprintf("no %q", msgs)
	if found {
		r.logged = transferLine(l)
	}
	r.logged += fmt.Sprintf("; %q ×%d", proxy.MsgTransferFinished, fin)
	r.expect(found, "the proxy logged none of %q", msgs)
	r.expect(fin == 0, "the proxy logged %q for a transfer cut short", proxy.MsgTransferFinished)
	return l
}

// paced says what the paced client did.
func (o *options) paced() string {
	return fmt.Sprintf("a RETR of %s read at %s/s", benchkit.FormatSize(o.faultSize), benchkit.FormatSize(o.readRate))
}

// faultSigterm: SIGTERM to the proxy while a transfer runs that outlasts
// the grace period.
func (e *env) faultSigterm() (faultResult, error) {
	o := e.o
	r := faultResult{did: fmt.Sprintf("SIGTERM to the proxy 1 s into %s, --shutdown-grace %s", o.paced(), o.grace)}
	x, err := e.startXfer("proxy-sigterm", e.vsftpd, o.grace+time.Minute, "--shutdown-grace", o.grace.String())
	if err != nil {
		return r, err
	}
	defer x.close()
	ended := readPacedAsync(x.dc, o.readRate)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := syscall.Kill(x.px.PID(), syscall.SIGTERM); err != nil {
		return r, err
	}
	exited := make(chan error, 1)
	go func() { exited <- x.px.ExitErr() }()
	d := <-ended
	x.dc.Close()
	ce := <-x.ctrl
	r.client = fmt.Sprintf("data %s after %s of %s; control %s", d.kind(), mibOf(d.n), mibOf(o.faultSize), ce)
	r.after = fmt.Sprintf("data %.2f s, reply %.2f s after the SIGTERM", d.at.Sub(t0).Seconds(), ce.at.Sub(t0).Seconds())
	exit := "still running 15 s later"
	select {
	case err := <-exited:
		exit = fmt.Sprintf("exited (%v) %.2f s after the SIGTERM", errOrOK(err), time.Since(t0).Seconds())
	case <-time.After(15 * time.Second):
	}
	x.reported(&r, proxy.MsgTransferAborted)
	r.logged += "; " + exit
	r.expect(d.n < o.faultSize, "the transfer ended before the grace period did: raise --fault-size or lower --read-rate")
	r.expect(d.kind() == "reset", "the client's data connection ended with %s, not a reset: a truncated file looks complete", d.kind())
	r.expect(ce.code == 421, "no 421 on the control connection")
	return r, nil
}

func errOrOK(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// faultServerGone: the scripted server sends the file, closes the data
// connection and then its control connection, with no 226.
func (e *env) faultServerGone() (faultResult, error) {
	const size = 1 << 20
	r := faultResult{did: "a scripted server sends 1 MiB, closes the data connection, then the control connection without a 226"}
	var closedAt atomic.Pointer[time.Time]
	srv, err := newScripted(func(ctrl, data net.Conn) bool {
		data.Write(make([]byte, size))
		data.Close()
		now := time.Now()
		closedAt.Store(&now)
		ctrl.Close()
		return false
	})
	if err != nil {
		return r, err
	}
	defer srv.close()
	x, err := e.startXfer("proxy-server-gone", srv.addr(), 30*time.Second)
	if err != nil {
		return r, err
	}
	defer x.close()
	d := readPaced(x.dc, 0, -1)
	x.dc.Close()
	ce := <-x.ctrl
	r.client = fmt.Sprintf("data %s after %d of %d bytes; control %s", d.kind(), d.n, size, ce)
	if t := closedAt.Load(); t != nil {
		r.after = fmt.Sprintf("reply %.1f ms after the server's close", float64(ce.at.Sub(*t).Microseconds())/1000)
	}
	x.reported(&r, proxy.MsgTransferNoConfirm)
	r.expect(ce.code == 421 && strings.Contains(ce.text, "closed the control connection"), "the client did not get 421 … closed the control connection")
	return r, nil
}

// faultServerKilled: vsftpd's session processes get SIGKILL while the
// transfer runs.
func (e *env) faultServerKilled() (faultResult, error) {
	o := e.o
	r := faultResult{did: fmt.Sprintf("SIGKILL to vsftpd's session processes 1 s into %s", o.paced())}
	x, err := e.startXfer("proxy-server-killed", e.vsftpd, time.Minute)
	if err != nil {
		return r, err
	}
	defer x.close()
	ended := readPacedAsync(x.dc, o.readRate)
	time.Sleep(time.Second)
	pids := benchkit.Descendants(e.vsftpdPID)
	t0 := time.Now()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	d := <-ended
	x.dc.Close() // as clients do at the end of the data
	ce := <-x.ctrl
	r.did += fmt.Sprintf(" (%d processes)", len(pids))
	r.client = fmt.Sprintf("data %s after %s of %s; control %s", d.kind(), mibOf(d.n), mibOf(o.faultSize), ce)
	r.after = fmt.Sprintf("reply %.2f s, data end %.2f s after the kill", ce.at.Sub(t0).Seconds(), d.at.Sub(t0).Seconds())
	x.reported(&r, proxy.MsgTransferNoConfirm, proxy.MsgTransferFailed)
	r.expect(len(pids) > 0, "found no vsftpd session process to kill")
	r.expect(d.n < o.faultSize, "the transfer ended before the kill: raise --fault-size or lower --read-rate")
	r.expect(ce.code == 421, "the client did not get a 421")
	return r, nil
}

// faultClientStalls: the client reads 1 MiB and then stops reading,
// keeping the connection open.
func (e *env) faultClientStalls() (faultResult, error) {
	o := e.o
	r := faultResult{did: fmt.Sprintf("the client reads 1 MiB of a %s RETR and stops reading; --data-idle-timeout %s",
		benchkit.FormatSize(o.faultSize), o.dataIdle)}
	x, err := e.startXfer("proxy-client-stalls", e.vsftpd, o.dataIdle+time.Minute, "--data-idle-timeout", o.dataIdle.String())
	if err != nil {
		return r, err
	}
	defer x.close()
	first := readPaced(x.dc, 0, 1<<20)
	stopped := time.Now()
	waitLog(x.px, x.off, o.dataIdle+20*time.Second, isMsg(proxy.MsgTransferAborted))
	d := readPaced(x.dc, 0, -1)
	x.dc.Close()
	ce := <-x.ctrl
	r.client = fmt.Sprintf("data (read on after the abort) %s, %s in all of %s; control %s", d.kind(), mibOf(first.n+d.n), mibOf(o.faultSize), ce)
	l := x.reported(&r, proxy.MsgTransferAborted)
	if l != nil {
		r.after = fmt.Sprintf("%.2f s after the client stopped reading", l.time().Sub(stopped).Seconds())
	}
	if ce.code != 0 {
		r.after += fmt.Sprintf("; the control reply %.2f s after", ce.at.Sub(stopped).Seconds())
	}
	r.expect(l == nil || strings.Contains(l.str("reason"), "no data moved"), "the abort's reason is not the data idle timeout")
	r.expect(d.kind() == "reset", "the client's data connection ended with %s, not a reset", d.kind())
	r.expect(ce.code != 226, "the server confirmed the cut transfer with 226")
	return r, nil
}
