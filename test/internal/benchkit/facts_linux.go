package benchkit

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Facts describe the machine a run was made on.
type Facts struct {
	Date, Host, NProc, Kernel, GoVersion, CPU, Mem, LoadAvg string
}

// MachineFacts collects the Facts now; what cannot be read is "?".
func MachineFacts() Facts {
	f := Facts{
		Date:      time.Now().UTC().Format("2006-01-02 15:04 MST"),
		NProc:     Output("nproc"),
		Kernel:    Output("uname", "-r"),
		GoVersion: Output("go", "version"),
		CPU:       "?",
		Mem:       "?",
		LoadAvg:   LoadAvg(),
	}
	f.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if m, err := StatusFile("/proc/meminfo"); err == nil {
		f.Mem = fmt.Sprintf("%.1f GiB", float64(m["MemTotal"])/(1<<20))
	}
	return f
}

// Output is the trimmed standard output of a command, "?" if it fails.
func Output(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// LoadAvg returns the three load averages of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	fs := strings.Fields(string(b))
	if len(fs) < 3 {
		return "?"
	}
	return strings.Join(fs[:3], " ")
}
