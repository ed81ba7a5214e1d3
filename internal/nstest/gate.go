package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Strict reports whether FTPALG_E2E=1 is set (CI): a missing prerequisite
// is then a failure, never a reason to skip.
func Strict() bool { return os.Getenv("FTPALG_E2E") == "1" }

// Missing returns what this process lacks to run namespace tests: root,
// the ip command and each of tools (a name on PATH or a path). Empty means
// nothing is missing.
func Missing(tools ...string) []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, firewall rules)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	return missing
}

// Require skips t unless it runs as root with ip and tools; with
// FTPALG_E2E=1 it fails t instead.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if missing := Missing(tools...); len(missing) > 0 {
		Unmet(t, "needs %s", strings.Join(missing, ", "))
	}
}

// Unmet ends t for a missing prerequisite: a skip that gives the reason,
// or, with FTPALG_E2E=1, a failure.
func Unmet(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatal(msg + " (FTPALG_E2E=1: not skipping)")
	}
	t.Skip(msg + " (test/deps.sh installs the tools; run as root; FTPALG_E2E=1 makes this a failure)")
}
