//go:build linux

package main

// The client side. It runs as processes of this program in the client
// namespace (benchkit.RunWorker), so that its sockets live there; every
// session and download dials from one of the 16 source addresses.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchftp"
	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// job is what the orchestrator asks a worker to do.
type job struct {
	Mode     string        // ready, rate, download
	Addrs    []string      // ready: every one must answer; rate, download: the first
	Sources  []string      // the client addresses, used in turn
	Clients  int           // rate: concurrent loops; download: concurrent downloads
	Duration time.Duration // rate
	Timeout  time.Duration // ready: all in all; rate: one session; download: one download
	Size     int64         // download: of BigFile
	BufSize  int           // download
	// The benchmark's namespaces (inode numbers) and process, to tell
	// other processes' CPU use apart from its own.
	OurNetns []uint64
	OurPID   int
}

// result is what a worker reports.
type result struct {
	Err      string         `json:",omitempty"`
	Sessions int            `json:",omitempty"` // rate
	P50, P99 time.Duration  `json:",omitempty"` // rate
	Bytes    int64          `json:",omitempty"` // download: all of them
	Errors   int            `json:",omitempty"`
	ErrKinds map[string]int `json:",omitempty"`
	// CPU is the machine's over the measured interval (its Wall: the
	// interval); OtherCPU the CPU seconds of processes outside the
	// benchmark meanwhile (interference).
	CPU      benchkit.CPUDelta `json:",omitzero"`
	OtherCPU float64           `json:",omitempty"`
}

func workerMain(arg string) {
	var j job
	var r result
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		r.Err = "bad job: " + err.Error()
	} else if err := j.run(&r); err != nil {
		r.Err = err.Error()
	}
	b, _ := json.Marshal(r)
	os.Stdout.Write(append(b, '\n'))
}

// dialer is the client of the i-th session or download.
func (j job) dialer(i int) benchftp.Dialer {
	return benchftp.Dialer{Source: netip.MustParseAddr(j.Sources[i%len(j.Sources)])}
}

func (j job) run(r *result) error {
	switch j.Mode {
	case "ready":
		return j.ready()
	case "rate":
		o0 := benchkit.OthersCPU(j.OurNetns, j.OurPID)
		m0, _ := benchkit.MachineCPU()
		rr := benchkit.RunLoad(j.Clients, j.Duration, 0, func(i int, buf []byte) error {
			return benchkit.SessionWith(j.dialer(i), j.Addrs[0], j.Timeout, buf)
		})
		m1, _ := benchkit.MachineCPU()
		r.CPU, r.OtherCPU = m1.Sub(m0), benchkit.OthersCPU(j.OurNetns, j.OurPID).Since(o0)
		r.Sessions, r.Errors, r.ErrKinds = len(rr.Latencies), rr.Errors, rr.ErrKinds
		r.P50, r.P99 = benchkit.Percentile(rr.Latencies, 50), benchkit.Percentile(rr.Latencies, 99)
		return nil
	case "download":
		return j.download(r)
	}
	return fmt.Errorf("unknown mode %q", j.Mode)
}

// ready runs one session (benchkit.Session) to each address until it
// works, within Timeout.
func (j job) ready() error {
	end := time.Now().Add(j.Timeout)
	buf := make([]byte, 32<<10)
	for _, a := range j.Addrs {
		for {
			err := benchkit.SessionWith(j.dialer(0), a, 2*time.Second, buf)
			if err == nil {
				break
			}
			if time.Now().After(end) {
				return fmt.Errorf("no working session to %s within %s: %v", a, j.Timeout, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// download runs Clients downloads of BigFile at once, each from the
// next source address: all log in and switch to TYPE I, then all send
// RETR together; the interval measured runs from then until the last one
// ends. Bytes counts the downloads that succeeded.
func (j job) download(r *result) error {
	var (
		ready, wg sync.WaitGroup
		mu        sync.Mutex
		start     = make(chan struct{})
	)
	r.ErrKinds = map[string]int{}
	ready.Add(j.Clients)
	for i := range j.Clients {
		wg.Go(func() {
			var once sync.Once
			n, _, err := benchkit.DownloadWith(j.dialer(i), j.Addrs[0], j.Size, make([]byte, j.BufSize), j.Timeout, func() func() {
				once.Do(ready.Done)
				<-start
				return func() {}
			})
			once.Do(ready.Done) // failed before RETR
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.Errors++
				r.ErrKinds[benchftp.ErrKind(err)]++
				return
			}
			r.Bytes += n
		})
	}
	ready.Wait()
	o0 := benchkit.OthersCPU(j.OurNetns, j.OurPID)
	m0, _ := benchkit.MachineCPU()
	close(start)
	wg.Wait()
	m1, _ := benchkit.MachineCPU()
	r.CPU, r.OtherCPU = m1.Sub(m0), benchkit.OthersCPU(j.OurNetns, j.OurPID).Since(o0)
	if r.Errors == j.Clients {
		return errors.New("every download failed: " + benchkit.TopKinds(r.ErrKinds, 1)[0])
	}
	return nil
}
