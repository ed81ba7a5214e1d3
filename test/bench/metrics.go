package main

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/ftpalg/ftpalg/test/internal/benchkit"
)

// ---- 4. the cost of metrics ----

// metricsResult compares the proxy without metrics and with them
// (--metrics-listen, scraped every scrapeEvery like a Prometheus would),
// in the same run: throughput runs alternating between the two, then a
// session-rate run of each.
type metricsResult struct {
	off, on         float64 // median MB/s
	cpuOff, cpuOn   float64 // proxy CPU s per GiB
	rateOff, rateOn *rateResult
	scrapes         int
}

// scrapeEvery is Prometheus's usual scrape interval.
const scrapeEvery = 15 * time.Second

func runMetricsCost(o *options, serverAddr, offAddr string, offPID int, onAddr, metricsURL string, onPID int) (*metricsResult, error) {
	res := &metricsResult{}
	fmt.Printf("\n== 4. Metrics cost: the proxy without and with --metrics-listen (scraped every %s), same run ==\n", scrapeEvery)
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() {
		n := 0
		t := time.NewTicker(scrapeEvery)
		defer t.Stop()
		for {
			if resp, err := http.Get(metricsURL); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n++
			}
			select {
			case <-t.C:
			case <-stop:
				scraped <- n
				return
			}
		}
	}()
	var off, on, cpuOff, cpuOn []float64
	for i := range o.Runs {
		for _, side := range []struct {
			label string
			addr  string
			pid   int
			mbps  *[]float64
			cpu   *[]float64
		}{{"off", offAddr, offPID, &off, &cpuOff}, {"on", onAddr, onPID, &on, &cpuOn}} {
			c0, _ := benchkit.CPUSeconds(side.pid)
			n, secs, err := benchkit.Download(side.addr, o.Size, make([]byte, o.BufSize), o.XferTimeout, nil)
			c1, _ := benchkit.CPUSeconds(side.pid)
			if err != nil {
				close(stop)
				<-scraped
				return nil, fmt.Errorf("metrics run %d %s: %w", i+1, side.label, err)
			}
			mbps := float64(n) / secs / 1e6
			*side.mbps = append(*side.mbps, mbps)
			*side.cpu = append(*side.cpu, (c1-c0)/(float64(n)/(1<<30)))
			fmt.Printf("  run %d metrics %-3s %9.1f MB/s  proxy CPU %.2f s/GiB\n", i+1, side.label, mbps, (c1-c0)/(float64(n)/(1<<30)))
		}
	}
	res.off, res.on = benchkit.Median(off), benchkit.Median(on)
	res.cpuOff, res.cpuOn = benchkit.Median(cpuOff), benchkit.Median(cpuOn)
	res.rateOff = runRate(o, "off", offAddr, offPID)
	time.Sleep(time.Second)
	res.rateOn = runRate(o, "on", onAddr, onPID)
	close(stop)
	res.scrapes = <-scraped
	fmt.Printf("  throughput on/off %s, proxy CPU per GiB on/off %s, sessions/s on/off %s, proxy CPU per session on/off %s (%d scrapes)\n",
		benchkit.Ratio(res.on, res.off, 3), benchkit.Ratio(res.cpuOn, res.cpuOff, 3),
		benchkit.Ratio(res.rateOn.rate, res.rateOff.rate, 3), benchkit.Ratio(res.rateOn.proxyCPU, res.rateOff.proxyCPU, 3), res.scrapes)
	return res, nil
}

// metricsRows adds the comparison to the summary table.
func metricsRows(row func(name, a, b, ratio string), o *options, m *metricsResult) {
	row("metrics cost", "off", "on", "on/off")
	row(fmt.Sprintf("  throughput, %s RETR, median MB/s", benchkit.FormatSize(o.Size)), benchkit.F1(m.off), benchkit.F1(m.on), benchkit.Ratio(m.on, m.off, 3))
	row("  proxy CPU s per GiB", benchkit.F3(m.cpuOff), benchkit.F3(m.cpuOn), benchkit.Ratio(m.cpuOn, m.cpuOff, 3))
	row(fmt.Sprintf("  sessions/s (%d clients)", o.Clients), benchkit.F1(m.rateOff.rate), benchkit.F1(m.rateOn.rate), benchkit.Ratio(m.rateOn.rate, m.rateOff.rate, 3))
	row("  proxy CPU ms per session", benchkit.F2(m.rateOff.proxyCPU), benchkit.F2(m.rateOn.proxyCPU), benchkit.Ratio(m.rateOn.proxyCPU, m.rateOff.proxyCPU, 3))
}
