package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/internal/testcert"
)

// TestRunTLS runs ftpalg in-process with FTPS toward clients: the
// explicit listener refuses USER before AUTH TLS and terminates TLS
// after it, the implicit listener handshakes first; a reload adds an
// implicit address and brings a renewed certificate to new sessions.
func TestRunTLS(t *testing.T) {
	up := fakeUpstream(t)
	p := freePorts(t, 3)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", p[i]) }
	dir := t.TempDir()
	writeCert := func(ca string) {
		a, err := testcert.NewAuthority(ca)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := a.Leaf("ftp.example")
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"cert.pem": leaf.CertPEM, "key.pem": leaf.KeyPEM} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	path := filepath.Join(dir, "ftpalg.yaml")
	conf := func(implicit ...string) {
		s := fmt.Sprintf("firewall: none\ndata-path: splice\nshutdown-grace: 1s\nfrontends:\n  - name: a\n    listen: %s\n"+
			"    listen-implicit: [%s]\n    upstream: %s\n    data-ports: 0\n    client-tls: required\n"+
			"    tls-cert: %s\n    tls-key: %s\n", addr(0), strings.Join(implicit, ", "), up,
			filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCert("first CA")
	conf(addr(1))
	rc, err := loadConfig(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	level := zap.NewAtomicLevelAt(rc.logLevel)
	core, logs := observer.New(level)
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, zap.New(core), level, rc, hup) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	// run opens the listeners after it started: wait for them.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", addr(1))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(end) {
			t.Fatalf("ftpalg does not listen: %v", err)
		}
	}

	// Explicit: plain until AUTH TLS; USER before it is refused.
	c := greet(t, addr(0), "220")
	r := bufio.NewReader(c)
	say := func(w io.Writer, r *bufio.Reader, line, want string) {
		t.Helper()
		io.WriteString(w, line+"\r\n")
		got, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(got, want+" ") {
			t.Fatalf("%s: %q, %v; want %s", line, got, err, want)
		}
	}
	say(c, r, "USER anonymous", "530")
	say(c, r, "AUTH TLS", "234")
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	say(tc, bufio.NewReader(tc), "USER anonymous", "502") // the fake upstream's answer, through TLS

	// Implicit: TLS from the first byte.
	issuer := func(a string) string {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("implicit FTPS at %s: %v", a, err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
			t.Fatalf("implicit FTPS at %s: greeting %q, %v", a, line, err)
		}
		return c.ConnectionState().PeerCertificates[0].Issuer.CommonName
	}
	if got := issuer(addr(1)); got != "first CA" {
		t.Errorf("certificate issued by %q, want the first CA", got)
	}

	// Reload: one more implicit address, and a renewed certificate.
	writeCert("renewed CA")
	conf(addr(1), addr(2))
	n := logs.Len()
	hup <- syscall.SIGHUP
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if l := logs.All()[n:]; len(l) > 0 && slicesContainsMsg(l, msgReloaded) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no reload logged: %v", logs.All()[n:])
		}
	}
	for _, a := range []string{addr(1), addr(2)} {
		if got := issuer(a); got != "renewed CA" {
			t.Errorf("%s: certificate issued by %q after the reload, want the renewed CA", a, got)
		}
	}
}

func slicesContainsMsg(l []observer.LoggedEntry, msg string) bool {
	for _, e := range l {
		if e.Message == msg {
			return true
		}
	}
	return false
}
