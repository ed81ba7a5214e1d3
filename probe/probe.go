package probe

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// Defaults of Options.
const (
	DefaultTimeout  = 20 * time.Second
	DefaultUser     = "anonymous"
	DefaultPassword = "probe@ftpalg"
	// stepShare: each connect, accept and reply wait gets Timeout/4, so
	// a probe that meets two silent data ports (EPSV and PASV) still
	// finishes within its budget.
	stepShare = 4
	// maxTranscript bounds the transcript; maxReplyLines and maxReplyText
	// bound one reply as kept in it and in the report (a long banner, a
	// hostile server).
	maxTranscript = 200
	maxReplyLines = 64
	maxReplyText  = 2048
)

// DialFunc opens a connection, like (*net.Dialer).DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ListenFunc opens a listener, like (*net.ListenConfig).Listen.
type ListenFunc func(ctx context.Context, network, address string) (net.Listener, error)

// Options configure Run.
type Options struct {
	// URL is ftp://[user[:pass]@]host[:port][/path]; "ftp://" may be left
	// out. Without a user the login is anonymous (DefaultUser,
	// DefaultPassword). A path is listed instead of the login directory.
	URL string
	// Active also tries EPRT (and PORT when the server refuses EPRT): the
	// server has to connect back to a listener of the probe.
	Active bool
	// Timeout bounds the whole probe (0: DefaultTimeout); every connect,
	// accept and reply wait gets a quarter of it, within what is left.
	Timeout time.Duration
	// Dial and Listen replace the network for tests (nil: net.Dialer and
	// net.ListenConfig).
	Dial   DialFunc
	Listen ListenFunc
}

// allowed are the only commands the probe ever sends.
var allowed = map[string]bool{
	"USER": true, "PASS": true, "FEAT": true, "TYPE": true, "EPSV": true, "PASV": true,
	"EPRT": true, "PORT": true, "LIST": true, "QUIT": true,
}

// target is a parsed URL.
type target struct {
	hostport   string // HOST:PORT for Dial
	user, pass string
	path       string // LIST argument, "" for the login directory
	redacted   string
}

// parseURL parses Options.URL. Any CR, LF or NUL in the user, password or
// path is an error: it would let the URL inject commands.
func parseURL(raw string) (target, error) {
	if !strings.Contains(raw, "://") {
		raw = "ftp://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("probe: URL: %w", err)
	}
	if u.Scheme != "ftp" {
		return target{}, fmt.Errorf("probe: URL %q: want ftp://[user[:pass]@]host[:port] (only plain FTP is probed)", u.Redacted())
	}
	if u.Hostname() == "" {
		return target{}, fmt.Errorf("probe: URL %q has no host", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return target{}, fmt.Errorf("probe: URL %q: no query or fragment expected", u.Redacted())
	}
	port := u.Port()
	if port == "" {
		port = "21"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return target{}, fmt.Errorf("probe: URL %q: bad port %q", u.Redacted(), port)
	}
	t := target{hostport: net.JoinHostPort(u.Hostname(), port), user: DefaultUser, pass: DefaultPassword}
	if u.User != nil {
		t.user = u.User.Username()
		if t.user == "" {
			return target{}, fmt.Errorf("probe: URL %q: empty user name", u.Redacted())
		}
		pass, set := u.User.Password()
		switch {
		case set:
			t.pass = pass
		case strings.EqualFold(t.user, "anonymous") || strings.EqualFold(t.user, "ftp"):
			t.pass = DefaultPassword
		default:
			t.pass = ""
		}
	}
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		t.path = p
	}
	for what, s := range map[string]string{"user": t.user, "password": t.pass, "path": t.path} {
		if strings.ContainsAny(s, "\r\n\x00") {
			return target{}, fmt.Errorf("probe: URL: the %s holds a CR, LF or NUL", what)
		}
	}
	red := *u
	if u.User != nil {
		red.User = url.User(u.User.Username())
	}
	t.redacted = red.String()
	return t, nil
}

// Run probes the server of o.URL: it connects, logs in, asks for FEAT,
// tries EPSV and PASV (and with o.Active EPRT, then PORT if EPRT is
// refused), connects to every announced data port, lists over the first
// data connection that opens, quits, and judges what it saw. It returns
// an error only for bad options; everything the network does is in the
// Report. It never retries, sends no command outside USER, PASS, FEAT,
// TYPE, EPSV, PASV, EPRT, PORT, LIST and QUIT, and returns within
// o.Timeout (plus the moment closing takes).
func Run(ctx context.Context, o Options) (Report, error) {
	t, err := parseURL(o.URL)
	if err != nil {
		return Report{}, err
	}
	if o.Timeout < 0 {
		return Report{}, fmt.Errorf("probe: timeout %v: want more than 0", o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	if o.Listen == nil {
		var lc net.ListenConfig
		o.Listen = lc.Listen
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	p := &prober{
		ctx: ctx, o: o, t: t, step: o.Timeout / stepShare,
		rep: Report{
			Target: t.redacted, User: t.user, Modes: []Mode{}, Findings: []Finding{}, Transcript: []string{},
			TimeoutMS: ms(o.Timeout), StepTimeoutMS: ms(o.Timeout / stepShare),
		},
	}
	p.rep.Control.Address = t.hostport
	p.rep.Control.Feat.List = []string{}
	p.run()
	p.rep.Control.Error = strings.TrimPrefix(p.broken, brokenPrefix)
	p.rep.ElapsedMS = ms(time.Since(start))
	Judge(&p.rep)
	return p.rep, nil
}

// prober is one probe in progress.
type prober struct {
	ctx  context.Context
	o    Options
	t    target
	step time.Duration
	rep  Report

	conn  net.Conn
	rr    *ftp.ReplyReader
	peer  netip.AddrPort // the server's control address
	local netip.AddrPort // the probe's
	// broken is set when the control channel can no longer be trusted: a
	// reply did not come in time (it may still come, as the answer to the
	// next command), the server closed it, or a write failed. Nothing is
	// sent after it but QUIT.
	broken string
	listed bool // a LIST completed
	// lastLines are the lines of the last reply read (codes included);
	// lastReply is that reply as the codec returned it, nil when it came
	// in chunks.
	lastLines []string
	lastReply *ftp.Reply
}

func (p *prober) run() {
	if !p.connect() {
		return
	}
	defer p.quit()
	if !p.greet() || !p.login() {
		return
	}
	p.feat()
	p.passive("EPSV")
	p.passive("PASV")
	if p.o.Active {
		p.active()
	}
}

// stepCtx is a context for one connect or accept: Timeout/4, within the
// probe's budget.
func (p *prober) stepCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(p.ctx, p.step)
}

// stepDeadline is the deadline of one reply wait.
func (p *prober) stepDeadline() time.Time {
	d := time.Now().Add(p.step)
	if end, ok := p.ctx.Deadline(); ok && end.Before(d) {
		return end
	}
	return d
}

// endDeadline is the probe's own deadline.
func (p *prober) endDeadline() time.Time {
	end, _ := p.ctx.Deadline()
	return end
}

func (p *prober) connect() bool {
	c := &p.rep.Control
	ctx, cancel := p.stepCtx()
	defer cancel()
	start := time.Now()
	conn, err := p.o.Dial(ctx, "tcp", p.t.hostport)
	c.Connect = attempt(p.t.hostport, SourceURL, err, time.Since(start))
	if err != nil {
		return false
	}
	p.conn = conn
	context.AfterFunc(p.ctx, func() { conn.Close() })
	p.peer = addrPort(conn.RemoteAddr())
	p.local = addrPort(conn.LocalAddr())
	c.Connect.Address = p.peer.String()
	c.Local = p.local.String()
	c.PeerClass = Classify(p.peer.Addr())
	p.rr = ftp.NewReplyReader(ftp.NewLearningReplyScanner(conn))
	return true
}

func (p *prober) greet() bool {
	c := &p.rep.Control
	r, err := p.final()
	c.Greeting = r
	if err != nil || r.Code != 220 {
		return false
	}
	c.Connected = true
	return true
}

func (p *prober) login() bool {
	c := &p.rep.Control
	r, err := p.command("USER", p.t.user)
	if err == nil && r.Code == 331 {
		r, err = p.command("PASS", p.t.pass)
	}
	c.Login = r
	c.LoginOK = err == nil && (r.Code == 230 || r.Code == 202)
	return c.LoginOK
}

// feat asks for FEAT. A server without it (500, 502) is fine.
func (p *prober) feat() {
	f := &p.rep.Control.Feat
	rep, lines, err := p.commandLines("FEAT", "")
	f.Reply = rep
	if err != nil || rep.Code != 211 || len(lines) < 2 {
		return
	}
	// RFC 2389: the lines between "211-" and "211 " each name a feature,
	// indented by one space.
	for _, l := range lines[1:] {
		feat := strings.TrimSpace(l)
		if _, _, isCode := ftp.ParseCode([]byte(l)); isCode || feat == "" || feat == "…" {
			continue
		}
		f.List = append(f.List, feat)
		word, arg, _ := strings.Cut(strings.ToUpper(feat), " ")
		switch word {
		case "EPSV":
			f.EPSV = true
		case "EPRT":
			f.EPRT = true
		case "AUTH":
			for _, m := range strings.Fields(strings.ReplaceAll(arg, ";", " ")) {
				if m == "TLS" || m == "TLS-C" || m == "SSL" {
					f.AuthTLS = true
				}
			}
		}
	}
}

// passive tries EPSV or PASV: the command, the announced address, a TCP
// connect to it (and to the control address with the same port when the
// announced address is another one), and a LIST over the first data
// connection that opens unless a LIST already completed.
func (p *prober) passive(name string) {
	m := Mode{Name: name, Command: name, Passive: true, Attempts: []Attempt{}}
	defer func() { p.rep.Modes = append(p.rep.Modes, m) }()
	if name == "PASV" && p.peer.Addr().Is6() {
		m.Skipped = "PASV carries IPv4 addresses only and the control connection is IPv6"
		return
	}
	if p.skip(&m) {
		return
	}
	r, err := p.command(name, "")
	m.Reply = r
	if err != nil || !ftp.AddressCode(r.Code) {
		return
	}
	if p.lastReply == nil {
		m.Error = "the reply is too long to hold an address"
		return
	}
	ap, _, err := ftp.ParsePassiveReply(p.lastReply)
	if err != nil {
		m.Error = "unparsable reply: " + err.Error()
		return
	}
	control := p.peer.Addr()
	if ap.Addr().IsValid() {
		m.AddressInReply = true
	} else {
		ap = netip.AddrPortFrom(control, ap.Port())
	}
	ann := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	m.Announced = ann.String()
	m.AnnouncedClass = Classify(ann.Addr())
	m.DiffersFromControl = ann.Addr() != control
	if err := ftp.CheckPassive(ann); err != nil {
		m.Error = "not dialed: " + err.Error()
		return
	}
	dests := []dest{{ann, SourceAnnounced}}
	if m.DiffersFromControl {
		dests = append(dests, dest{netip.AddrPortFrom(control, ann.Port()), SourceControl})
	}
	data := p.dialData(&m, dests)
	if data == nil {
		return
	}
	defer data.Close()
	if p.listed {
		return // this mode's port works too; one listing is enough
	}
	stop := context.AfterFunc(p.ctx, func() { data.Close() })
	defer stop()
	m.List = p.listPassive(data)
}

// dest is an address a data connection is tried to.
type dest struct {
	ap     netip.AddrPort
	source string
}

// dialData connects to the first of dests that answers, recording every
// attempt in m; it returns nil when none did.
func (p *prober) dialData(m *Mode, dests []dest) net.Conn {
	control := p.peer.Addr()
	for _, d := range dests {
		if ok, why := dialable(d.ap.Addr(), control); !ok {
			m.Attempts = append(m.Attempts, Attempt{Address: d.ap.String(), Source: d.source, Result: ConnectSkipped, Error: why})
			continue
		}
		if p.ctx.Err() != nil {
			m.Attempts = append(m.Attempts, Attempt{Address: d.ap.String(), Source: d.source, Result: ConnectSkipped,
				Error: "not dialed: the probe ran out of time"})
			continue
		}
		ctx, cancel := p.stepCtx()
		start := time.Now()
		c, err := p.o.Dial(ctx, "tcp", d.ap.String())
		cancel()
		m.Attempts = append(m.Attempts, attempt(d.ap.String(), d.source, err, time.Since(start)))
		if err == nil {
			m.DataConnected, m.DataPeer = true, d.ap.String()
			return c
		}
	}
	return nil
}

// active tries EPRT and, when the server refuses it, PORT: a listener on
// the probe's control address, the command, a LIST, and whether the
// server connects back.
func (p *prober) active() {
	eprt := Mode{Name: "EPRT", Command: "EPRT", Attempts: []Attempt{}}
	port := Mode{Name: "PORT", Command: "PORT", Attempts: []Attempt{}}
	defer func() { p.rep.Modes = append(p.rep.Modes, eprt, port) }()
	if p.skip(&eprt) {
		port.Skipped = eprt.Skipped
		return
	}
	ctx, cancel := p.stepCtx()
	ln, err := p.o.Listen(ctx, "tcp", netip.AddrPortFrom(p.local.Addr(), 0).String())
	cancel()
	if err != nil {
		eprt.Skipped = "no listener for the server to connect to: " + err.Error()
		port.Skipped = eprt.Skipped
		return
	}
	defer ln.Close()
	la := addrPort(ln.Addr())
	if !la.Addr().IsValid() || la.Addr().IsUnspecified() {
		la = netip.AddrPortFrom(p.local.Addr(), la.Port())
	}
	p.tryActive(&eprt, "EPRT", ftp.FormatEPRT(la), ln, la)
	switch {
	case eprt.Skipped != "":
		port.Skipped = eprt.Skipped
	case eprt.Reply.Code != 0 && !refused(eprt.Reply.Code):
		port.Skipped = "not needed: the server did not refuse EPRT"
	case p.broken != "":
		port.Skipped = "not tried: " + p.broken
	case !la.Addr().Is4():
		port.Skipped = "PORT carries IPv4 addresses only and the control connection is IPv6"
	default:
		p.tryActive(&port, "PORT", ftp.FormatPORT(la), ln, la)
	}
}

// tryActive announces la with verb and, when the server accepts it,
// lists over the connection the server makes to ln.
func (p *prober) tryActive(m *Mode, verb, arg string, ln net.Listener, la netip.AddrPort) {
	m.Command = verb + " " + arg
	if p.skip(m) {
		return
	}
	m.Announced = la.String()
	m.AnnouncedClass = Classify(la.Addr())
	m.DiffersFromControl = la.Addr() != p.local.Addr()
	r, err := p.command(verb, arg)
	m.Reply = r
	if err != nil || r.Code/100 != 2 {
		return
	}
	l, back, from := p.listActive(ln, la)
	m.List = l
	m.Attempts = append(m.Attempts, back)
	if back.Result == ConnectOK {
		m.DataConnected, m.DataPeer = true, from
	}
}

// accepted is the outcome of acceptOne.
type accepted struct {
	c   net.Conn
	err error
	at  time.Duration // since the LIST was sent
}

// acceptOne waits for one connection on ln until ctx ends (then it
// closes ln) and sends the outcome to out.
func acceptOne(ctx context.Context, ln net.Listener, start time.Time, out chan<- accepted) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	c, err := ln.Accept()
	if !stop() && err != nil {
		err = context.Cause(ctx)
	}
	out <- accepted{c, err, time.Since(start)}
}

// errGaveUp ends the wait for the server's connection back when the
// server has already given its final answer.
var errGaveUp = errors.New("the server gave its final reply")

// listPassive sends LIST over an open passive data connection.
func (p *prober) listPassive(data net.Conn) *List {
	l := &List{}
	start := time.Now()
	defer func() { l.ElapsedMS = ms(time.Since(start)) }()
	if _, err := p.send("LIST", p.t.path); err != nil {
		l.Error = err.Error()
		return l
	}
	r, err := p.reply()
	p.finishList(l, data, r, err)
	return l
}

// listActive sends LIST and waits, at the same time, for the server's
// reply and its connection back to ln (servers connect before or after
// their 150; a 425 ends the wait at once). It returns the listing, the
// connection attempt and the address the server connected from.
func (p *prober) listActive(ln net.Listener, la netip.AddrPort) (*List, Attempt, string) {
	l := &List{}
	start := time.Now()
	defer func() { l.ElapsedMS = ms(time.Since(start)) }()
	back := Attempt{Address: la.String(), Source: SourceServer, Result: ConnectSkipped, Error: "LIST was not sent"}
	if _, err := p.send("LIST", p.t.path); err != nil {
		l.Error = err.Error()
		return l, back, ""
	}
	ctx, cancel := context.WithTimeoutCause(p.ctx, p.step, context.DeadlineExceeded)
	defer cancel()
	ctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	ch := make(chan accepted, 1)
	go acceptOne(ctx, ln, start, ch)
	r, err := p.reply()
	if err != nil || r.Final() {
		giveUp(errGaveUp)
	}
	a := <-ch
	back = attempt(la.String(), SourceServer, a.err, a.at)
	from := ""
	if a.c != nil {
		defer a.c.Close()
		stop := context.AfterFunc(p.ctx, func() { a.c.Close() })
		defer stop()
		from = addrPort(a.c.RemoteAddr()).String()
	} else if errors.Is(a.err, errGaveUp) && err == nil {
		back.Result, back.Error = ConnectError, fmt.Sprintf("the server replied %d instead of connecting", r.Code)
	} else if isTimeout(a.err) || errors.Is(a.err, errGaveUp) {
		// (errGaveUp with err: the reply and the connection were both
		// overdue.)
		back.Result, back.Error = ConnectTimeout, fmt.Sprintf("no connection from the server within %v", p.step)
	}
	p.finishList(l, a.c, r, err)
	return l, back, from
}

// finishList completes a LIST whose first reply (r, or err) came: it
// reads the listing over data and the final reply.
func (p *prober) finishList(l *List, data net.Conn, r Reply, err error) {
	if err != nil {
		l.Error = err.Error()
		return
	}
	if r.Final() {
		// No 150: the server refused (425, 550, …) or, rarely, answered
		// 226 at once.
		l.Reply = r
		if r.Code/100 == 2 && data != nil {
			n, derr := readData(data, p.stepDeadline())
			l.Bytes, l.Completed = n, derr == nil
			if derr != nil {
				l.Error = "data connection: " + derr.Error()
			}
		}
		p.listed = p.listed || l.Completed
		return
	}
	l.Preliminary = r
	if data == nil {
		l.Error = "no data connection"
		p.breakControl("the server's final reply to LIST is still due")
		return
	}
	n, derr := readData(data, p.endDeadline())
	l.Bytes = n
	if derr != nil {
		l.Error = "data connection: " + derr.Error()
		if isTimeout(derr) || p.ctx.Err() != nil {
			l.Error = fmt.Sprintf("data connection: no end of the listing before the probe's %v timeout", p.o.Timeout)
		}
	}
	fr, err := p.final()
	l.Reply = fr
	if err != nil {
		l.Error = cmp.Or(l.Error, "final reply: "+err.Error())
		return
	}
	l.Completed = derr == nil && fr.Code/100 == 2
	p.listed = p.listed || l.Completed
}

// readData reads a data connection to its end, or the deadline.
func readData(c net.Conn, deadline time.Time) (int64, error) {
	_ = c.SetReadDeadline(deadline)
	return io.Copy(io.Discard, c)
}

// skip reports (and records in m) that a mode cannot be tried.
func (p *prober) skip(m *Mode) bool {
	switch {
	case p.broken != "":
		m.Skipped = "not tried: " + p.broken
	case p.ctx.Err() != nil:
		m.Skipped = "not tried: the probe ran out of time"
	default:
		return false
	}
	return true
}

func (p *prober) quit() {
	if p.broken == "" && p.ctx.Err() == nil {
		if _, err := p.send("QUIT", ""); err == nil {
			// Polite, not needed: a short wait for the 221.
			d := time.Now().Add(min(p.step, time.Second))
			if end := p.endDeadline(); end.Before(d) {
				d = end
			}
			_, _ = p.readReplyUntil(d)
		}
	}
	p.conn.Close()
}

// ---------------------------------------------------------------- control channel

// command sends a command and returns its final reply (1xx replies are
// skipped).
func (p *prober) command(verb, arg string) (Reply, error) {
	r, _, err := p.commandLines(verb, arg)
	return r, err
}

// commandLines is command, also returning the final reply's lines (code
// and separator left on).
func (p *prober) commandLines(verb, arg string) (Reply, []string, error) {
	if _, err := p.send(verb, arg); err != nil {
		return Reply{}, nil, err
	}
	r, err := p.final()
	return r, p.lastLines, err
}

// send writes one command line.
func (p *prober) send(verb, arg string) (string, error) {
	if !allowed[verb] {
		return "", fmt.Errorf("probe: %s is not a command the probe sends", verb)
	}
	if p.broken != "" {
		return "", errors.New(p.broken)
	}
	line := verb
	if arg != "" {
		line += " " + arg
	}
	p.log("> " + ftp.ParseCommand([]byte(line)).String())
	_ = p.conn.SetWriteDeadline(p.stepDeadline())
	if _, err := io.WriteString(p.conn, line+"\r\n"); err != nil {
		p.breakControl("writing " + verb + ": " + err.Error())
		return line, err
	}
	return line, nil
}

// final reads replies until a final one (2xx..5xx).
func (p *prober) final() (Reply, error) {
	for {
		r, err := p.reply()
		if err != nil || r.Final() {
			return r, err
		}
	}
}

// reply reads one reply (any code) within a step.
func (p *prober) reply() (Reply, error) {
	r, err := p.readReplyUntil(p.stepDeadline())
	if err != nil {
		if p.ctx.Err() != nil {
			err = fmt.Errorf("no reply before the probe's %v timeout", p.o.Timeout)
		} else if isTimeout(err) {
			err = fmt.Errorf("no reply within %v", p.step)
		}
		p.breakControl(err.Error())
	}
	return r, err
}

// readReplyUntil reads one whole reply (a long one arrives in chunks)
// and logs it; it sets lastLines and lastReply.
func (p *prober) readReplyUntil(deadline time.Time) (Reply, error) {
	_ = p.conn.SetReadDeadline(deadline)
	var (
		out    Reply
		texts  []string
		chunks int
	)
	p.lastLines, p.lastReply = nil, nil
	for {
		r, err := p.rr.Next()
		chunks++
		if chunks == 1 {
			out.Code = r.Code
			if r.Whole() && err == nil {
				p.lastReply = r
			}
		}
		for i := range r.Lines {
			text := clean(string(r.Lines[i].Text))
			switch n := len(p.lastLines); {
			case n < maxReplyLines:
				p.log("< " + text)
				p.lastLines = append(p.lastLines, text)
				if _, _, ok := ftp.ParseCode(r.Lines[i].Text); ok {
					text = clean(string(ftp.ReplyText(r.Lines[i].Text)))
				}
				texts = append(texts, text)
			case n == maxReplyLines:
				p.log("< … (reply cut)")
				p.lastLines = append(p.lastLines, "…")
			}
		}
		out.Text = clip(strings.Join(texts, "\n"))
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return out, errors.New("the server closed the control connection")
		case err != nil:
			return out, err
		case out.Code == 0:
			return out, fmt.Errorf("not an FTP reply: %q", clip(firstLine(out.Text)))
		case !r.More:
			return out, nil
		}
	}
}

// brokenPrefix starts every reason in prober.broken.
const brokenPrefix = "the control channel stopped working: "

func (p *prober) breakControl(why string) {
	if p.broken == "" {
		p.broken = brokenPrefix + why
	}
}

func (p *prober) log(s string) {
	switch {
	case len(p.rep.Transcript) < maxTranscript:
		p.rep.Transcript = append(p.rep.Transcript, s)
	case len(p.rep.Transcript) == maxTranscript:
		p.rep.Transcript = append(p.rep.Transcript, "… (transcript cut)")
	}
}

// ---------------------------------------------------------------- helpers

// attempt records a connect that took d and ended with err.
func attempt(addr, source string, err error, d time.Duration) Attempt {
	a := Attempt{Address: addr, Source: source, Result: connectResult(err), ElapsedMS: ms(d)}
	if err != nil {
		a.Error = clip(err.Error())
	}
	return a
}

// connectResult classifies a connect's error.
func connectResult(err error) ConnectResult {
	switch {
	case err == nil:
		return ConnectOK
	case errors.Is(err, syscall.ECONNREFUSED):
		return ConnectRefused
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.ENETDOWN), errors.Is(err, syscall.EHOSTDOWN):
		return ConnectUnreachable
	case isTimeout(err):
		return ConnectTimeout
	}
	return ConnectError
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// refused reports a reply code that means "not this command" (RFC 959,
// RFC 2428: 500, 501, 502, 504, 522), as opposed to a failure.
func refused(code int) bool {
	switch code {
	case 500, 501, 502, 504, 522:
		return true
	}
	return false
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// clean makes server text safe to print: control characters (a terminal
// escape sequence from a hostile server) become '?', invalid UTF-8 '�'.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "�")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func clip(s string) string {
	if len(s) <= maxReplyText {
		return s
	}
	cut := maxReplyText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
