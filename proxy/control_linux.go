package proxy

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// controlConn is a control connection that keeps track of TCP urgent data.
// Clients send ABOR after Telnet IP and Synch, with one byte as urgent data
// (BSD ftp: "IAC IP IAC" urgent, then "DM ABOR"; Python ftplib sends all of
// "ABOR\r\n" urgent). Servers such as vsftpd only notice an ABOR during a
// transfer through SIGURG, so the proxy must forward the urgent byte as
// urgent. SO_OOBINLINE keeps the urgent byte in the stream (otherwise the
// kernel takes it out and "ABOR\r\n" arrives as "ABOR\r"), and SIOCATMARK
// before each read tells whether the read starts at the urgent byte: Linux
// never returns data across the urgent mark in one read. A read happens
// only when data was queued before SIOCATMARK looked (a peek first), so an
// urgent byte arriving between the two cannot be read without its mark.
type controlConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

func newControlConn(c *net.TCPConn) (*controlConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	return &controlConn{TCPConn: c, rc: rc}, nil
}

// ReadUrgent implements ftp.UrgentReader.
func (c *controlConn) ReadUrgent(p []byte) (n int, urgent int, err error) {
	urgent = -1
	var atMark int
	var rerr error
	var peek [1]byte
	err = c.rc.Read(func(fd uintptr) bool {
		// Read only what was queued before SIOCATMARK looked: a byte
		// arriving in between would be read without its mark. A peek
		// tells: EAGAIN (nothing queued) waits for the poller; data, the
		// end of the stream or an error goes on to the read, which
		// reports it.
		if _, _, perr := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT); perr == unix.EAGAIN {
			rerr = perr
			return false
		}
		atMark, _ = unix.IoctlGetInt(int(fd), unix.SIOCATMARK)
		n, rerr = unix.Read(int(fd), p)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if n < 0 {
		n = 0
	}
	if err == nil && n == 0 && len(p) > 0 {
		err = io.EOF
	}
	if atMark == 1 && n > 0 {
		urgent = 0
	}
	return n, urgent, err
}

// writeUrgent writes p, sending p[urgent] (when urgent >= 0) as TCP urgent
// data, so the peer sees the urgent mark where the sender put it.
func (c *controlConn) writeUrgent(p []byte, urgent int) error {
	if urgent < 0 || urgent >= len(p) {
		_, err := c.Write(p)
		return err
	}
	if _, err := c.Write(p[:urgent]); err != nil {
		return err
	}
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgN(int(fd), p[urgent:urgent+1], nil, nil, unix.MSG_OOB)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	_, err = c.Write(p[urgent+1:])
	return err
}

// writeWithUrgent writes p to c, keeping the urgent byte where c supports it.
func writeWithUrgent(c net.Conn, p []byte, urgent int) error {
	if cc, ok := c.(*controlConn); ok {
		return cc.writeUrgent(p, urgent)
	}
	_, err := c.Write(p)
	return err
}

// wrapControl turns a TCP control connection into a controlConn; other
// connections (net.Pipe in tests) are returned as they are.
func wrapControl(c net.Conn) net.Conn {
	if t, ok := c.(*net.TCPConn); ok {
		if cc, err := newControlConn(t); err == nil {
			return cc
		}
	}
	return c
}

// tcpBytes returns what the kernel has counted on c: bytes received plus
// bytes the peer acknowledged (TCP_INFO, Linux 4.2). 0 when it cannot be
// read, which a caller comparing two readings takes for no progress.
func tcpBytes(c *net.TCPConn) uint64 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n uint64
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = info.Bytes_received + info.Bytes_acked
		}
	})
	return n
}

// fileLimit returns RLIMIT_NOFILE's soft limit (which the Go runtime has
// raised to the hard limit at start), 0 when it cannot be read.
func fileLimit() uint64 {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil || l.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return l.Cur
}
