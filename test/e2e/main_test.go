//go:build linux

package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Without root (or ip) every test skips; do not spend time building
	// then.
	if len(nstest.Missing()) == 0 {
		dir, err := os.MkdirTemp("", "ftpalg-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		proxyBinary, proxyBuildErr = buildProxy(dir)
		if proxyBuildErr != nil {
			fmt.Fprintf(os.Stderr, "e2e: ftpalg build failed; proxy tests will skip (fail with FTPALG_E2E=1):\n%v\n", proxyBuildErr)
		}
	}
	return m.Run()
}
