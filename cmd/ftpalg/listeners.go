package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// merged accepts from several listeners as one (an IPv4 and an IPv6
// transparent listener for the same port).
type merged struct {
	lns   []net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func mergeListeners(lns ...net.Listener) net.Listener {
	if len(lns) == 1 {
		return lns[0]
	}
	m := &merged{lns: lns, conns: make(chan net.Conn), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Go(func() { m.acceptLoop(ln) })
	}
	return m
}

// acceptLoop hands ln's connections to Accept until m is closed.
func (m *merged) acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors for a moment: try again shortly.
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-m.done:
				return
			}
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *merged) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *merged) Close() error {
	m.once.Do(func() {
		close(m.done)
		for _, ln := range m.lns {
			ln.Close()
		}
		m.wg.Wait()
	})
	return nil
}

func (m *merged) Addr() net.Addr { return m.lns[0].Addr() }
