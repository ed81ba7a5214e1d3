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

// Title is the first line a benchmark prints: what runs, when and on
// what.
func (f Facts) Title(what string) string {
	return fmt.Sprintf("%s — %s — %s CPUs (%s), %s RAM, kernel %s, %s", what, f.Date, f.NProc, f.CPU, f.Mem, f.Kernel, f.GoVersion)
}

// MarkdownHead starts the Markdown of a run of `go run ./PKG`: the date as
// a heading, the machine, the kernel, Go, the server (when not "") and the
// command line.
func (f Facts) MarkdownHead(pkg, server string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "### Run of %s\n\n", f.Date)
	fmt.Fprintf(&b, "- machine: %s CPUs (`nproc`), %s, %s RAM\n", f.NProc, f.CPU, f.Mem)
	fmt.Fprintf(&b, "- kernel: %s\n- Go: %s\n", f.Kernel, f.GoVersion)
	if server != "" {
		fmt.Fprintf(&b, "- server: %s\n", server)
	}
	fmt.Fprintf(&b, "- command: `go run ./%s %s`\n", pkg, strings.Join(os.Args[1:], " "))
	return b.String()
}
