//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// stop stops p and returns how it ended: nil for a clean exit on SIGTERM.
func stop(p *nstest.Proc) error {
	if err := p.Stop(stopGrace); err != nil {
		return err
	}
	return p.ExitErr()
}

// workers are the client processes running now, for the signal handler.
var (
	workerMu     sync.Mutex
	workers      = map[*os.Process]bool{}
	workerClosed bool
)

// shutdownWorkers kills the client processes running now (by PID) and
// prevents new ones.
func shutdownWorkers() {
	workerMu.Lock()
	defer workerMu.Unlock()
	workerClosed = true
	for p := range workers {
		p.Kill()
	}
}

// runWorker runs one client job in namespace ns and returns its result.
// The job's own error (r.Err) is returned as an error too.
func runWorker(ns *nstest.NS, j job, limit time.Duration) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	arg, _ := json.Marshal(j)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := ns.Command(ctx, self, "--worker", string(arg))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	workerMu.Lock()
	if workerClosed {
		workerMu.Unlock()
		return result{}, errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		workerMu.Unlock()
		return result{}, err
	}
	workers[cmd.Process] = true
	workerMu.Unlock()
	err = cmd.Wait()
	workerMu.Lock()
	delete(workers, cmd.Process)
	workerMu.Unlock()
	var r result
	if jerr := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &r); jerr != nil {
		return r, fmt.Errorf("client %s: %v (%v)\n%s%s", j.Mode, err, jerr, out.String(), errb.String())
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}
