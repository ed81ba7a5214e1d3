package benchkit

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Flags are the command-line options the benchmarks take. Define
// registers all of them; DefineCommon leaves out the throughput and
// session-rate ones (--size, --runs, --bufsize, --xfer-timeout,
// --duration).
type Flags struct {
	Size        int64 // of BigFile
	Runs        int   // throughput runs per path
	BufSize     int   // client read buffer for the throughput runs
	XferTimeout time.Duration
	Clients     int // concurrent clients of the session-rate runs (the first of ClientCounts)
	// ClientCounts are the --clients values, in order: a benchmark that
	// set MultiClients before Parse measures the session rate with each.
	ClientCounts   []int
	MultiClients   bool
	Duration       time.Duration
	SessionTimeout time.Duration
	Only           map[string]bool // what to measure
	Vsftpd         string          // binary
	ProxyBin       string          // ftpalg binary; "": build ./cmd/ftpalg
	ServerPasv     string          // vsftpd's passive ports, LO-HI
	ProxyData      string          // ftpalg's --data-ports, LO-HI
	Keep           bool            // keep the temporary directory
	Markdown       string          // also write the results here

	size, bufSize, only, clients string
	choices                      []string
	throughput                   bool // Define, not only DefineCommon, registered the flags
}

// Define registers the flags on flag.CommandLine: clients is the default
// of --clients ("32", or "16,64" where MultiClients); --only picks of
// choices (all by default), onlyHelp describes it.
func (f *Flags) Define(clients string, choices []string, onlyHelp string) {
	f.DefineSome(clients, choices, choices, onlyHelp)
}

// DefineSome is Define with --only picking those in defaults unless told
// (the others run only when asked for).
func (f *Flags) DefineSome(clients string, choices, defaults []string, onlyHelp string) {
	f.DefineCommon(clients, choices, defaults, onlyHelp)
	f.throughput = true
	flag.StringVar(&f.size, "size", "1GiB", "size of the file downloaded in the throughput test (KiB, MiB, GiB)")
	flag.IntVar(&f.Runs, "runs", 3, "throughput runs of each path measured")
	flag.StringVar(&f.bufSize, "bufsize", "256KiB", "client read buffer for the throughput test")
	flag.DurationVar(&f.XferTimeout, "xfer-timeout", 5*time.Minute, "time limit of one throughput run")
	flag.DurationVar(&f.Duration, "duration", 10*time.Second, "length of each session-rate measurement")
}

// DefineCommon registers the flags every benchmark takes: clients is the
// default of --clients; --only picks of choices, those in defaults unless
// told, and onlyHelp describes it.
func (f *Flags) DefineCommon(clients string, choices, defaults []string, onlyHelp string) {
	f.choices = choices
	flag.StringVar(&f.clients, "clients", clients, "concurrent clients in the session-rate test (a comma-separated list where a benchmark measures several)")
	flag.DurationVar(&f.SessionTimeout, "session-timeout", 10*time.Second, "time limit of one session in the rate test (and of one login in the idle test)")
	flag.StringVar(&f.only, "only", strings.Join(defaults, ","), onlyHelp)
	flag.StringVar(&f.Vsftpd, "vsftpd", "/usr/sbin/vsftpd", "vsftpd binary")
	flag.StringVar(&f.ProxyBin, "proxy-bin", "", "use this ftpalg binary instead of building ./cmd/ftpalg")
	flag.StringVar(&f.ServerPasv, "server-pasv-ports", "25000-27999", "vsftpd passive port range (keep it out of net.ipv4.ip_local_port_range)")
	flag.StringVar(&f.ProxyData, "proxy-data-ports", "28000-30999", "ftpalg --data-ports (keep it out of net.ipv4.ip_local_port_range and apart from the server's)")
	flag.BoolVar(&f.Keep, "keep", false, "keep the temporary directory (files, configs, logs)")
	flag.StringVar(&f.Markdown, "markdown", "", "also write the results as Markdown to this file")
}

// Parse parses the command line (flag.Parse), which takes no arguments,
// and checks the flags Define or DefineCommon registered.
func (f *Flags) Parse() error {
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	f.Only = map[string]bool{}
	for _, w := range strings.Split(f.only, ",") {
		switch w = strings.TrimSpace(w); {
		case slices.Contains(f.choices, w):
			f.Only[w] = true
		case w != "":
			return fmt.Errorf("--only: unknown %q (want %s)", w, strings.Join(f.choices, ", "))
		}
	}
	for _, r := range []string{f.ServerPasv, f.ProxyData} {
		if _, _, err := ParseRange(r); err != nil {
			return err
		}
	}
	f.ClientCounts = nil
	for _, w := range strings.Split(f.clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 1 {
			return fmt.Errorf("--clients %q: want positive numbers", f.clients)
		}
		f.ClientCounts = append(f.ClientCounts, n)
	}
	if len(f.ClientCounts) > 1 && !f.MultiClients {
		return fmt.Errorf("--clients %q: this benchmark takes one number", f.clients)
	}
	f.Clients = f.ClientCounts[0]
	if !f.throughput {
		return nil
	}
	var err error
	if f.Size, err = ParseSize(f.size); err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	n, err := ParseSize(f.bufSize)
	if err != nil || n < 1 || n > 1<<30 {
		return fmt.Errorf("--bufsize %q: want a size up to 1GiB", f.bufSize)
	}
	f.BufSize = int(n)
	if f.Runs < 1 || f.Size < 1 || f.Duration <= 0 {
		return errors.New("--runs, --size and --duration must be positive")
	}
	return nil
}

// Main is a benchmark's main: parse the flags (on an error, exit status
// 2), then run (on an error, status 1); errors are printed as "PROG: …".
func Main[O any](prog string, parse func() (O, error), run func(O) error) {
	o, err := parse()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		os.Exit(1)
	}
}

// Report prints the summary table and, with --markdown, writes the
// Markdown that md renders to that file.
func (f *Flags) Report(table string, md func() string) error {
	fmt.Print("\n== Summary ==\n", table)
	if f.Markdown == "" {
		return nil
	}
	if err := os.WriteFile(f.Markdown, []byte(md()), 0o644); err != nil {
		return err
	}
	fmt.Println("wrote", f.Markdown)
	return nil
}
