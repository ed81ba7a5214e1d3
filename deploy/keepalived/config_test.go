package keepalived

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

func read(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// match returns re's submatches in s, failing the test when there are none.
func match(t *testing.T, file, s, re string) []string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("%s: nothing matches %s", file, re)
	}
	return m
}

// TestConfigTest runs keepalived's own parser on both configurations: it
// exits non-zero and names the line for an unknown keyword or a bad
// value, and prints nothing for a clean file.
func TestConfigTest(t *testing.T) {
	nstest.Require(t, "keepalived")
	for _, f := range []string{"keepalived.conf", "keepalived-direct.conf"} {
		out, err := exec.Command("keepalived", "--config-test", "-f", f).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("keepalived --config-test -f %s: %v\n%s", f, err, out)
		}
	}
}

// TestNftCheck loads the fwmark rule with nft --check in a namespace of
// its own (the check needs the kernel; the host's ruleset is never
// touched).
func TestNftCheck(t *testing.T) {
	nstest.Require(t, "nft")
	n := nstest.New(t)
	n.Run(t, "nft", "--check", "-f", "nftables-fwmark.nft")
}

// TestAgree: the files describe one setup — the mark the rule sets is the
// one the virtual server balances, on the VRRP virtual address; the rule
// covers port 21 and the data range the instances are told to use; pattern
// 2 balances port 21 of the same address; every real server is checked
// with GET /readyz on the instances' metrics port and is inhibited (weight
// 0) rather than removed on failure, so a draining instance's sessions go
// on.
func TestAgree(t *testing.T) {
	nft := read(t, "nftables-fwmark.nft")
	persist := read(t, "keepalived.conf")
	direct := read(t, "keepalived-direct.conf")
	readme := read(t, "README.md")

	rule := match(t, "nftables-fwmark.nft", nft, `ip daddr (\S+) tcp dport \{ 21, (\d+-\d+) \} meta mark set (\d+)`)
	vip, dataPorts, mark := rule[1], rule[2], rule[3]
	for _, c := range []struct{ file, s string }{{"keepalived.conf", persist}, {"keepalived-direct.conf", direct}} {
		if got := match(t, c.file, c.s, `virtual_ipaddress \{\s+(\S+)/`)[1]; got != vip {
			t.Errorf("%s: VRRP address %s, the fwmark rule marks %s", c.file, got, vip)
		}
		servers := strings.Count(c.s, "\n    real_server ")
		if servers < 2 {
			t.Errorf("%s: %d real servers, want several", c.file, servers)
		}
		for _, want := range []string{"path /readyz", "status_code 200", "connect_port 9121", "inhibit_on_failure"} {
			if n := strings.Count(c.s, want); n != servers {
				t.Errorf("%s: %q %d times for %d real servers", c.file, want, n, servers)
			}
		}
	}
	if got := match(t, "keepalived.conf", persist, `\nvirtual_server fwmark (\d+) \{`)[1]; got != mark {
		t.Errorf("keepalived.conf balances fwmark %s, the rule sets %s", got, mark)
	}
	match(t, "keepalived.conf", persist, `\n    persistence_timeout \d+`)
	match(t, "keepalived-direct.conf", direct, `\nvirtual_server `+regexp.QuoteMeta(vip)+` 21 \{`)
	if regexp.MustCompile(`(?m)^\s*(persistence_timeout|virtual_server fwmark)`).MatchString(direct) {
		t.Error("keepalived-direct.conf: pattern 2 balances sessions, without persistence or a mark")
	}
	for _, want := range []string{"--advertise " + vip, "--data-ports " + dataPorts, "--metrics-listen :9121"} {
		if !strings.Contains(readme, want) {
			t.Errorf("README.md: the instance flags lack %q", want)
		}
	}
	// Pattern 2's instances refuse EPSV: its 229 has no address, and the
	// virtual address forwards only port 21.
	p2 := match(t, "README.md", readme, `(?s)Pattern 2, per instance.*?\n\n(    ftpalg run .*?)\n\n`)[1]
	if !strings.Contains(p2, "--epsv refuse") {
		t.Errorf("README.md: pattern 2's instance flags lack --epsv refuse:\n%s", p2)
	}
	for _, m := range regexp.MustCompile(`(?m)^#.*ftpalg run .*$`).FindAllString(direct, -1) {
		if !strings.Contains(m, "--epsv refuse") {
			t.Errorf("keepalived-direct.conf: instance line lacks --epsv refuse: %s", m)
		}
	}
}
