package main

import (
	"strconv"
	"time"

	"github.com/ftpalg/ftpalg/internal/nstest"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL.
const stopGrace = 5 * time.Second

// startProxy runs the proxy binary on 127.0.0.1 in front of upstream.
func startProxy(bin, dir, name, upstream, dataPorts string, maxSessions int) (*nstest.Proc, string, error) {
	return startProxyWith(bin, dir, name, upstream, dataPorts, maxSessions)
}

// startProxyWith is startProxy with extra flags.
func startProxyWith(bin, dir, name, upstream, dataPorts string, maxSessions int, extra ...string) (*nstest.Proc, string, error) {
	return benchkit.Proxy{Bin: bin, Dir: dir, Name: name, Upstream: upstream, DataPorts: dataPorts, Args: append([]string{
		"--log-level", "warn",
		"--max-sessions", strconv.Itoa(maxSessions),
		"--max-sessions-per-ip", strconv.Itoa(maxSessions),
		"--shutdown-grace", "1s",
	}, extra...)}.Start()
}

// busy is the machine's busy CPU time over d, in seconds and in CPUs on
// average. This benchmark counts steal time as busy (the gateway
// benchmark reports it apart).
func busy(d benchkit.CPUDelta) (secs, cpus float64) {
	secs = d.Busy + d.Steal
	if d.Wall <= 0 {
		return secs, 0
	}
	return secs, secs / d.Wall
}
