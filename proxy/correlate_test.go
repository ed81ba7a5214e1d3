package proxy

import (
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/proxy/ftp"
)

// The correlator's tests need no sockets: they play the three roles (the
// command pump adds, the reply pump matches and emits, the writer takes)
// by hand and check what the client would be sent, in order.

func cmd(line string) ftp.Command { return ftp.ParseCommand([]byte(line)) }

// sent adds an exchange for a command forwarded to the server.
func sent(t *testing.T, c *correlator, line string) *exchange {
	t.Helper()
	x := &exchange{cmd: cmd(line)}
	if !c.add(x, nil) {
		t.Fatalf("add %q failed", line)
	}
	return x
}

// written takes everything the writer may write now.
func written(c *correlator) (out []string, st step) {
	for {
		ch, st := c.next()
		if st != stepWrite && st != stepLast {
			return out, st
		}
		out = append(out, string(ch.b))
		if st == stepLast {
			return out, st
		}
	}
}

func wantWritten(t *testing.T, c *correlator, want ...string) {
	t.Helper()
	got, _ := written(c)
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("written %q, want %q", got, want)
	}
}

func TestCorrelatorOrder(t *testing.T) {
	c := newCorrelator()
	list := sent(t, c, "LIST")
	c.addLocal(cmd("PORT 1,2,3,4,0,1"), []byte("504 no\r\n"), nil)
	noop := sent(t, c, "NOOP")
	wantWritten(t, c) // nothing answered yet

	if x := c.awaiting(); x != list {
		t.Fatalf("awaiting %v, want LIST", x.cmd)
	}
	c.emit(list, chunk{b: []byte("150 here\r\n")}, false)
	wantWritten(t, c, "150 here\r\n") // a preliminary reply goes out at once
	if x := c.awaiting(); x != list {
		t.Fatal("a 1xx completed LIST")
	}
	x, skipped := c.match(226)
	if x != list || skipped != nil {
		t.Fatalf("226 matched %v (skipped %d), want LIST", x.cmd, len(skipped))
	}
	c.emit(x, chunk{b: []byte("226 done\r\n")}, true)
	// The local reply was waiting behind LIST, and goes out with it.
	wantWritten(t, c, "226 done\r\n", "504 no\r\n")
	if x, _ := c.match(200); x != noop {
		t.Fatalf("200 matched %v, want NOOP", x.cmd)
	}
	c.emit(noop, chunk{b: []byte("200 ok\r\n")}, true)
	wantWritten(t, c, "200 ok\r\n")
	if n := c.pending(); n != 0 {
		t.Fatalf("%d exchanges left", n)
	}
}

// A reply being rewritten (the reply pump is opening a listener) holds back
// everything queued behind it, the proxy's own replies included.
func TestCorrelatorRewriteHoldsOrder(t *testing.T) {
	c := newCorrelator()
	pasv := sent(t, c, "PASV")
	x, _ := c.match(227)
	if x != pasv {
		t.Fatal("227 did not match PASV")
	}
	// Meanwhile the command pump answers a later command itself.
	c.addLocal(cmd("EPRT |9|x|1|"), []byte("522 no\r\n"), nil)
	wantWritten(t, c)
	c.emit(pasv, chunk{b: []byte("227 rewritten\r\n"), changed: true}, true)
	wantWritten(t, c, "227 rewritten\r\n", "522 no\r\n")
}

func TestCorrelatorUnsolicited(t *testing.T) {
	c := newCorrelator()
	if x, _ := c.match(421); x != nil {
		t.Fatal("a reply matched an empty queue")
	}
	c.emit(nil, chunk{b: []byte("421 bye\r\n")}, true)
	wantWritten(t, c, "421 bye\r\n")
	// Behind the proxy's own reply, not ahead of it.
	c.addLocal(cmd("X"), []byte("500 local\r\n"), nil)
	c.emit(nil, chunk{b: []byte("421 late\r\n")}, true)
	wantWritten(t, c, "500 local\r\n", "421 late\r\n")
}

// A server that answers ABOR with one reply instead of two leaves the 226
// of ABOR to match the next command; a passive-address reply arriving
// while ABOR heads the queue realigns the queue on the passive request.
func TestCorrelatorResync(t *testing.T) {
	c := newCorrelator()
	abor := sent(t, c, "ABOR")
	epsv := sent(t, c, "EPSV")
	x, skipped := c.match(229)
	if x != epsv || len(skipped) != 1 || skipped[0] != abor {
		t.Fatalf("229 matched %v after skipping %d, want EPSV after ABOR", x.cmd, len(skipped))
	}
	c.emit(x, chunk{b: []byte("229 rewritten\r\n")}, true)
	wantWritten(t, c, "229 rewritten\r\n")
	if c.pending() != 0 {
		t.Fatal("the skipped ABOR is still queued")
	}

	// No passive request behind: no realignment.
	c = newCorrelator()
	abor = sent(t, c, "ABOR")
	sent(t, c, "NOOP")
	if x, skipped := c.match(227); x != abor || skipped != nil {
		t.Fatalf("227 matched %v, want ABOR with nothing skipped", x.cmd)
	}
	// Nor for a reply that carries no address.
	c = newCorrelator()
	abor = sent(t, c, "ABOR")
	sent(t, c, "PASV")
	if x, skipped := c.match(226); x != abor || skipped != nil {
		t.Fatalf("226 matched %v, want ABOR", x.cmd)
	}
}

func TestCorrelatorAlone(t *testing.T) {
	c := newCorrelator()
	epsv := sent(t, c, "EPSV")
	c.addLocal(cmd("X"), []byte("500 x\r\n"), nil)
	if !c.alone(epsv) {
		t.Fatal("a local reply counts as in flight")
	}
	sent(t, c, "NOOP")
	if c.alone(epsv) {
		t.Fatal("EPSV alone with NOOP in flight")
	}
	c.resend(epsv, "PASV")
	if epsv.verbSent() != "PASV" {
		t.Fatalf("verbSent %q", epsv.verbSent())
	}
}

func TestCorrelatorGoodbye(t *testing.T) {
	c := newCorrelator()
	x := sent(t, c, "RETR f")
	c.emit(x, chunk{b: []byte("150 go\r\n")}, false)
	c.addLocal(cmd("X"), []byte("500 x\r\n"), nil)
	if !c.sayGoodbye([]byte("421 shutting down\r\n")) {
		t.Fatal("goodbye refused while the writer runs")
	}
	got, st := written(c)
	if st != stepLast || strings.Join(got, "") != "421 shutting down\r\n" {
		t.Fatalf("written %q (step %d), want the goodbye alone, last", got, st)
	}
	c.writerStopped()
	if c.sayGoodbye([]byte("421 again\r\n")) {
		t.Fatal("goodbye accepted after the writer stopped")
	}
}

func TestCorrelatorAbandon(t *testing.T) {
	c := newCorrelator()
	retr := sent(t, c, "RETR f")
	c.emit(retr, chunk{b: []byte("150 go\r\n")}, false)
	c.addLocal(cmd("X"), []byte("500 x\r\n"), nil)
	noop := sent(t, c, "NOOP")
	gone := c.abandon([]byte("421 server gone\r\n"))
	if len(gone) != 2 || gone[0] != retr || gone[1] != noop {
		t.Fatalf("abandoned %d exchanges, want RETR and NOOP", len(gone))
	}
	c.stopWhenWritten()
	got, st := written(c)
	if st != stepStop || strings.Join(got, "|") != "150 go\r\n|421 server gone\r\n|500 x\r\n" {
		t.Fatalf("written %q (step %d)", got, st)
	}
}

func TestCorrelatorBounds(t *testing.T) {
	c := newCorrelator()
	if c.full() != nil {
		t.Fatal("empty correlator full")
	}
	x := sent(t, c, "STAT")
	line := []byte(strings.Repeat("x", 1000) + "\r\n")
	for range maxUnwritten/len(line) + 1 {
		c.emit(x, chunk{b: line}, false)
	}
	room := c.full()
	if room == nil {
		t.Fatalf("not full with %d bytes unwritten", c.unwritten)
	}
	c.next()
	select {
	case <-room:
	default:
		t.Fatal("room not signalled after a chunk was taken")
	}

	// At most maxPending exchanges: the next waits (here: gives up when
	// done is closed).
	c = newCorrelator()
	for range maxPending {
		sent(t, c, "NOOP")
	}
	done := make(chan struct{})
	close(done)
	if c.add(&exchange{cmd: cmd("NOOP")}, done) {
		t.Fatal("add beyond maxPending succeeded")
	}
	// An unsolicited reply with the queue full is dropped, not queued.
	c.emit(nil, chunk{b: []byte("200 extra\r\n")}, true)
	if c.pending() != maxPending {
		t.Fatalf("%d queued, want %d", c.pending(), maxPending)
	}
}
