package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		done <- c
	}()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b = <-done
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// batchRelay is the TLS path of a data connection without a session: the
// client end speaks TLS to the relay (the relay its server), the server
// end TLS (serverTLS) or plain; the relay runs relay and splice as
// relayTLS does. It returns the client's and the server's ends.
func batchRelay(t *testing.T, serverTLS bool) (client net.Conn, server net.Conn, done <-chan error) {
	t.Helper()
	cEnd, relayC := tcpPair(t)
	relayS, sEnd := tcpPair(t)
	bc, bs := newBatchConn(relayC), newBatchConn(relayS)
	srvCfg := &tls.Config{Certificates: []tls.Certificate{lab().proxyCert.TLS}}
	cl := tls.Server(bc, srvCfg)
	client = tls.Client(cEnd, clientTLS())
	var sv net.Conn = bs
	server = sEnd
	hs := make(chan error, 4)
	go func() { hs <- cl.Handshake() }()
	go func() { hs <- client.(*tls.Conn).Handshake() }()
	if serverTLS {
		tc := tls.Client(bs, clientTLS())
		sv = tc
		server = tls.Server(sEnd, &tls.Config{Certificates: []tls.Certificate{lab().ftpdCert.TLS}})
		go func() { hs <- tc.Handshake() }()
		go func() { hs <- server.(*tls.Conn).Handshake() }()
	} else {
		hs <- nil
		hs <- nil
	}
	for range 4 {
		if err := <-hs; err != nil {
			t.Fatalf("handshake: %v", err)
		}
	}
	relay(bc, bs)
	errc := make(chan error, 1)
	go func() {
		defer bc.release()
		defer bs.release()
		_, _, err := splice(leg{conn: cl, raw: relayC, buf: bc}, leg{conn: sv, raw: relayS, buf: bs})
		errc <- err
	}()
	return client, server, errc
}

// bulk sends 60 pieces of random sizes from from to to, then ends from's
// writing (close_notify on TLS, FIN), and checks that to reads them all
// and then EOF.
func bulk(t *testing.T, name string, from, to net.Conn) {
	t.Helper()
	r := rand.NewChaCha8([32]byte{7})
	wantc := make(chan []byte, 1)
	go func() {
		want := sha256.New()
		defer func() { wantc <- want.Sum(nil) }()
		buf := make([]byte, 100000)
		for range 60 {
			n := 1 + int(rand.Uint32N(uint32(len(buf))))
			r.Read(buf[:n])
			want.Write(buf[:n])
			if _, err := from.Write(buf[:n]); err != nil {
				return
			}
		}
		if tc, ok := from.(*tls.Conn); ok {
			tc.CloseWrite()
			tc.NetConn().(*net.TCPConn).CloseWrite()
		} else {
			from.(*net.TCPConn).CloseWrite()
		}
	}()
	to.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := sha256.New()
	if _, err := io.Copy(got, to); err != nil {
		t.Fatalf("bulk %s: %v", name, err)
	}
	if !bytes.Equal(got.Sum(nil), <-wantc) {
		t.Fatalf("bulk %s arrived changed", name)
	}
}

// TestTLSCopyNoHoldBack: the TLS path's batched writes never hold data
// back while the relay waits for more: a few bytes at a time, each must
// arrive before the next is sent, in both directions, with the far leg TLS
// or plain; then a large transfer each way arrives whole and ends in EOF.
func TestTLSCopyNoHoldBack(t *testing.T) {
	for _, serverTLS := range []bool{true, false} {
		name := "tls-both-legs"
		if !serverTLS {
			name = "offload"
		}
		t.Run(name, func(t *testing.T) {
			client, server, done := batchRelay(t, serverTLS)
			for _, dir := range []struct {
				name     string
				from, to net.Conn
			}{{"download", server, client}, {"upload", client, server}} {
				for i := range 5 {
					msg := []byte{byte('a' + i), '\n'}
					if _, err := dir.from.Write(msg); err != nil {
						t.Fatalf("%s: write: %v", dir.name, err)
					}
					dir.to.SetReadDeadline(time.Now().Add(5 * time.Second))
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(dir.to, got); err != nil || !bytes.Equal(got, msg) {
						t.Fatalf("%s: piece %d: got %q, %v (held back in a batch?)", dir.name, i, got, err)
					}
				}
			}
			// Bulk, in pieces of odd sizes, then EOF: upload, then download
			// (the upload's end is a half-close; the download still flows).
			bulk(t, "upload", client, server)
			bulk(t, "download", server, client)
			client.Close()
			server.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("relay did not end after both ends closed")
			}
		})
	}
}
