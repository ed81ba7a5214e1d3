package benchkit

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// The processes Start started, for StopAll.
var procs struct {
	mu     sync.Mutex
	list   []*nstest.Proc
	closed bool // StopAll ran: start nothing more
}

// Start starts argv (nstest.Spawn) in namespace n, or in this one if n is
// nil, output to logPath, and remembers it for StopAll. The process leads
// a process group of its own (vsftpd forks one process per session), so
// an interrupt at the terminal does not reach it: StopAll ends it.
func Start(n *nstest.NS, name, logPath string, argv ...string) (*nstest.Proc, error) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.closed {
		return nil, errors.New("shutting down")
	}
	p, err := nstest.Spawn(n, name, logPath, nil, argv...)
	if err != nil {
		return nil, err
	}
	procs.list = append(procs.list, p)
	return p, nil
}

// StopAll stops every process Start started (SIGTERM, SIGKILL after
// grace; Proc.Stop does nothing for one stopped already) and makes Start
// refuse new ones.
func StopAll(grace time.Duration) {
	procs.mu.Lock()
	procs.closed = true
	list := procs.list
	procs.list = nil
	procs.mu.Unlock()
	for _, p := range list {
		p.Stop(grace)
	}
}

// OnSignal runs cleanup and exits with status 130 on SIGINT, SIGTERM or
// SIGHUP, after telling stderr "PROG: SIGNAL: DOING".
func OnSignal(prog, doing string, cleanup func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\n%s: %v: %s\n", prog, s, doing)
		cleanup()
		os.Exit(130)
	}()
}
