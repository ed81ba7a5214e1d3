package main

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// scripted is a minimal FTP server for what vsftpd cannot be made to do
// on cue, and for many idle sessions without a process each: it greets,
// logs anyone in, answers TYPE, NOOP, EPSV and QUIT, and hands RETR to
// onRetr. Its sockets have TCP keepalive off, so that in the keepalive
// scenario every probe on the proxy's server side is the proxy's own.
type scripted struct {
	ln net.Listener
	// onRetr runs after the 150, with the accepted data connection; it
	// owns both connections and returns whether the session goes on.
	onRetr func(ctrl, data net.Conn) bool
	open   atomic.Int64 // sessions running
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

// scriptedReplies are the scripted server's fixed answers.
var scriptedReplies = map[string]string{
	"USER": "331 any password",
	"PASS": "230 logged in",
	"TYPE": "200 type set",
	"NOOP": "200 NOOP ok",
}

// newScripted listens on 127.0.0.1 and serves until close.
func newScripted(onRetr func(ctrl, data net.Conn) bool) (*scripted, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &scripted{ln: ln, onRetr: onRetr, conns: map[net.Conn]bool{}}
	s.wg.Go(s.serve)
	return s, nil
}

func (s *scripted) addr() string { return s.ln.Addr().String() }

// close stops listening and closes every session.
func (s *scripted) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *scripted) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.open.Add(1)
		s.wg.Go(func() {
			s.session(c)
			s.open.Add(-1)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		})
	}
}

// session serves one control connection: each line gets its reply (none
// where the answer wrote it already) until the answer ends the session.
func (s *scripted) session(c net.Conn) {
	tp := textproto.NewConn(c)
	ss := &scriptedSession{srv: s, ctrl: c, tp: tp}
	defer ss.dropPasv()
	reply, more := "220 scripted server", true
	for {
		if reply != "" && tp.PrintfLine("%s", reply) != nil || !more {
			return
		}
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		reply, more = ss.answer(line)
	}
}

// scriptedSession is one session's state: its passive listener.
type scriptedSession struct {
	srv  *scripted
	ctrl net.Conn
	tp   *textproto.Conn
	pasv net.Listener
}

func (ss *scriptedSession) dropPasv() {
	if ss.pasv != nil {
		ss.pasv.Close()
		ss.pasv = nil
	}
}

// answer returns the reply to line and whether the session goes on.
func (ss *scriptedSession) answer(line string) (string, bool) {
	verb, _, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	if reply, ok := scriptedReplies[verb]; ok {
		return reply, true
	}
	switch verb {
	case "QUIT":
		return "221 bye", false
	case "EPSV":
		ss.dropPasv()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "425 cannot listen", true
		}
		ss.pasv = ln
		return fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", ln.Addr().(*net.TCPAddr).Port), true
	case "RETR":
		if ss.pasv == nil || ss.srv.onRetr == nil {
			return "425 use EPSV first", true
		}
		if ss.tp.PrintfLine("150 here it comes") != nil {
			return "", false
		}
		ss.pasv.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		data, err := ss.pasv.Accept()
		ss.dropPasv()
		if err != nil {
			return "425 no data connection", true
		}
		return "", ss.srv.onRetr(ss.ctrl, data)
	}
	return "502 not implemented here", true
}
