package benchkit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// MappingCost is what one kernel data path mapping costs
// (rules/nftpath's BenchmarkMapClose): Map, Close of an unused mapping,
// and the two one after the other, median and 99th percentile, in µs.
type MappingCost struct {
	N                     int // mappings per round
	MapMedian, MapP99     float64
	CloseMedian, CloseP99 float64
	PairMedian, PairP99   float64 // Map then Close
	Line                  string  // the benchmark's output line
}

// MeasureMapping runs rules/nftpath's BenchmarkMapClose once with n
// mappings (go test, from the module root, in a namespace of its own;
// root needed) and returns its figures: the benchmarks report the cost
// of one mapping from the benchmark the package has, rather than a copy
// of it.
func MeasureMapping(n int) (MappingCost, error) {
	c := MappingCost{N: n}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return c, fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return c, errors.New("run this from inside the ftpalg module")
	}
	cmd := exec.Command("go", "test", "-count=1", "-run", "^$", "-bench", "^BenchmarkMapClose$", "-benchtime", "1x", "./rules/nftpath")
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "FTPALG_BENCH_N="+strconv.Itoa(n))
	b, err := cmd.CombinedOutput()
	if err != nil {
		return c, fmt.Errorf("go test -bench MapClose ./rules/nftpath: %v\n%s", err, b)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "BenchmarkMapClose") {
			continue
		}
		c.Line = strings.Join(strings.Fields(l), " ")
		f := strings.Fields(l)
		for i := 1; i+1 < len(f); i++ {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "map-median-µs":
				c.MapMedian = v
			case "map-p99-µs":
				c.MapP99 = v
			case "close-median-µs":
				c.CloseMedian = v
			case "close-p99-µs":
				c.CloseP99 = v
			case "map+close-median-µs":
				c.PairMedian = v
			case "map+close-p99-µs":
				c.PairP99 = v
			}
		}
	}
	if c.PairMedian == 0 {
		return c, fmt.Errorf("no map+close figures in the output of go test -bench MapClose:\n%s", b)
	}
	return c, nil
}

// String is one line of the figures.
func (c MappingCost) String() string {
	return fmt.Sprintf("map %.1f µs median, %.0f µs p99; close %.1f / %.0f µs; map+close %.1f / %.0f µs (%d mappings)",
		c.MapMedian, c.MapP99, c.CloseMedian, c.CloseP99, c.PairMedian, c.PairP99, c.N)
}
