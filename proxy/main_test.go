package proxy

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs the package's tests around a shared directory of fixture
// files (served by every in-process FTP server) and checks that no goroutine
// outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(fixtureMain{m})
}

type fixtureMain struct{ m *testing.M }

func (f fixtureMain) Run() int {
	dir, err := os.MkdirTemp("", "ftpalg-proxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	servedDir = dir
	if err := writeSmallFixtures(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return f.m.Run()
}

// servedDir is the directory every test FTP server serves; uploads land
// there under names unique to each test.
var servedDir string

// bigSize is the size of the large fixture file.
const bigSize = 100 << 20

// Fixture file names.
const (
	f0   = "f0.bin"
	f1   = "f1.bin"
	f4k  = "f4k.bin"
	f100 = "f100m.bin"
)

var (
	fixtureData = map[string][]byte{} // content of the small fixtures
	bigOnce     sync.Once
	bigSum      [32]byte
	bigErr      error
)

func writeSmallFixtures(dir string) error {
	for name, size := range map[string]int{f0: 0, f1: 1, f4k: 4096} {
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
		fixtureData[name] = b
	}
	return nil
}

// bigFile writes the 100 MiB fixture on first use and returns its SHA-256.
func bigFile(t testing.TB) [32]byte {
	t.Helper()
	bigOnce.Do(func() {
		f, err := os.Create(filepath.Join(servedDir, f100))
		if err != nil {
			bigErr = err
			return
		}
		h := sha256.New()
		_, err = io.CopyN(io.MultiWriter(f, h), rand.Reader, bigSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		bigErr = err
		copy(bigSum[:], h.Sum(nil))
	})
	if bigErr != nil {
		t.Fatalf("writing the 100 MiB fixture: %v", bigErr)
	}
	return bigSum
}

// needBig skips t where 100 MiB transfers do not belong: under -short and
// under the race detector (too slow on a 2-core machine).
func needBig(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("100 MiB transfer skipped under -short")
	}
	if raceEnabled {
		t.Skip("100 MiB transfer skipped under -race; run the package without -race for it")
	}
}
