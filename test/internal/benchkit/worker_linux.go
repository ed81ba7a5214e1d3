package benchkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// A benchmark whose clients must live in a network namespace runs them as
// separate processes of itself, `ip netns exec NS /proc/self/exe --worker
// JOB` (JOB: JSON), so that their sockets are created there; a worker
// prints one JSON result on standard output.

// The worker processes running now, for StopWorkers.
var workers struct {
	mu     sync.Mutex
	procs  map[*os.Process]bool
	closed bool
}

// WorkerJob returns the job when this process is a worker (its arguments
// are --worker JOB).
func WorkerJob() (string, bool) {
	if len(os.Args) == 3 && os.Args[1] == "--worker" {
		return os.Args[2], true
	}
	return "", false
}

// RunWorker runs this program as a worker inside ns with job (encoded as
// JSON), within limit, and decodes the JSON line it prints into out.
func RunWorker(ns *nstest.NS, job, out any, limit time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	arg, err := json.Marshal(job)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := ns.Command(ctx, self, "--worker", string(arg))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := startWorker(cmd); err != nil {
		return err
	}
	err = cmd.Wait()
	workers.mu.Lock()
	delete(workers.procs, cmd.Process)
	workers.mu.Unlock()
	if jerr := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), out); jerr != nil {
		return fmt.Errorf("worker: %v (%v)\n%s%s", err, jerr, stdout.String(), stderr.String())
	}
	return nil
}

func startWorker(cmd *exec.Cmd) error {
	workers.mu.Lock()
	defer workers.mu.Unlock()
	if workers.closed {
		return errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	if workers.procs == nil {
		workers.procs = map[*os.Process]bool{}
	}
	workers.procs[cmd.Process] = true
	return nil
}

// StopWorkers kills the worker processes running now (by PID) and makes
// RunWorker refuse new ones.
func StopWorkers() {
	workers.mu.Lock()
	defer workers.mu.Unlock()
	workers.closed = true
	for p := range workers.procs {
		p.Kill()
	}
}
