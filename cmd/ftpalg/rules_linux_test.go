package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/rules"
)

// TestRulesDataPath: `ftpalg rules show|flush|cleanup` for the kernel
// data path, as root in a namespace where a daemon's data path holds a
// mapping: show lists it with its session and time left, flush removes
// it, cleanup removes the table; with another --firewall-instance none
// of it is touched.
func TestRulesDataPath(t *testing.T) {
	nstest.Require(t, "nft")
	n := nstest.New(t)
	n.Sysctl(t, "net.ipv4.ip_forward", "1")
	n.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	opts := rules.Options{Instance: "web"}
	daemon, err := rules.NewDataPath("nftables", opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := rules.Mapping{Peer: netip.MustParseAddr("198.51.100.10"), Announced: netip.MustParseAddrPort("198.51.100.1:50000"),
		Target: netip.MustParseAddrPort("192.0.2.10:40000"), Source: netip.MustParseAddr("192.0.2.1"), Lifetime: time.Minute, Session: 42}
	n.Do(t, func() {
		if err := daemon.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := daemon.Map(ctx, m); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { n.Do(t, func() { daemon.Teardown(ctx) }) })
	run := func(verb string, opts rules.Options) string {
		t.Helper()
		var buf bytes.Buffer
		n.Do(t, func() {
			if err := errors.Join(dataPathsCmd(ctx, &buf, verb, opts)...); err != nil {
				t.Fatalf("rules %s: %v", verb, err)
			}
		})
		return buf.String()
	}
	out := run("show", opts)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "BACKEND SESSION PEER ANNOUNCED TARGET SOURCE EXPIRES IN" {
		t.Fatalf("rules show:\n%s", out)
	}
	f := strings.Fields(lines[1])
	if len(f) != 7 || f[0] != "nftables" || f[1] != "42" || f[2] != "198.51.100.10" || f[3] != "198.51.100.1:50000" ||
		f[4] != "192.0.2.10:40000" || f[5] != "192.0.2.1" {
		t.Errorf("rules show line %q", lines[1])
	}
	if d, err := time.ParseDuration(f[6]); err != nil || d <= 50*time.Second || d > time.Minute {
		t.Errorf("rules show: expires in %q, want within the minute", f[6])
	}
	if out := run("show", rules.Options{}); out != "" {
		t.Errorf("rules show of another instance:\n%s", out)
	}
	run("flush", rules.Options{})
	run("cleanup", rules.Options{})
	if out := run("show", opts); !strings.Contains(out, "198.51.100.1:50000") {
		t.Errorf("another instance's flush and cleanup touched ours:\n%s", out)
	}
	run("flush", opts)
	if out := run("show", opts); out != "" {
		t.Errorf("rules show after flush:\n%s", out)
	}
	if tables := n.Run(t, "nft", "list", "tables"); !strings.Contains(tables, "ftpalg-web") {
		t.Errorf("flush removed the table: %s", tables)
	}
	run("cleanup", opts)
	if tables := n.Run(t, "nft", "list", "tables"); strings.Contains(tables, "ftpalg") {
		t.Errorf("cleanup left %s", tables)
	}
}
