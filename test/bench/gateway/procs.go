//go:build linux

package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
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

// runWorker runs one client job in namespace ns (benchkit.RunWorker) and
// returns its result. The job's own error (r.Err) is returned as an error
// too.
func runWorker(ns *nstest.NS, j job, limit time.Duration) (result, error) {
	var r result
	if err := benchkit.RunWorker(ns, j, &r, limit); err != nil {
		return r, fmt.Errorf("client %s: %w", j.Mode, err)
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}
