package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ftpalg/ftpalg/probe"
)

// Exit statuses of `ftpalg probe`.
const (
	probeExitOK    = 0 // data transfers work
	probeExitFail  = 1 // they do not (or the control channel or login failed)
	probeExitUsage = 2 // bad flags or URL
)

const probeUsage = `Usage: ftpalg probe [--active] [--json] [--timeout 20s] ftp://[user[:pass]@]host[:port][/path]

Checks, from where you run it, whether FTP data transfers to a server work
("login works, LIST hangs"): connects, logs in (anonymous unless the URL
names a user), tries EPSV and PASV (with --active also EPRT/PORT), connects
to the announced data ports, lists, and says what is wrong and what to do.
Exit status: 0 data transfers work, 1 they do not, 2 usage error.

Flags:
`

// probeConfig is what `ftpalg probe` runs, from its arguments alone.
type probeConfig struct {
	opts probe.Options
	json bool
}

// parseProbe parses the arguments of `ftpalg probe`; flags may come
// before or after the URL. Usage and flag errors are written to out; -h
// returns flag.ErrHelp.
func parseProbe(args []string, out io.Writer) (probeConfig, error) {
	fs := flag.NewFlagSet("ftpalg probe", flag.ContinueOnError)
	fs.SetOutput(out)
	var pc probeConfig
	fs.BoolVar(&pc.opts.Active, "active", false, "also try active mode (EPRT, then PORT): the server connects back to this machine")
	fs.BoolVar(&pc.json, "json", false, "print the report as JSON (fields: go doc github.com/ftpalg/ftpalg/probe)")
	fs.DurationVar(&pc.opts.Timeout, "timeout", probe.DefaultTimeout, "the whole probe's time limit; each connect and reply wait gets a quarter of it")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), probeUsage)
		fs.PrintDefaults()
	}
	var urls []string
	for {
		if err := fs.Parse(args); err != nil {
			return pc, err
		}
		if fs.NArg() == 0 {
			break
		}
		urls = append(urls, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case len(urls) == 0:
		return pc, errors.New("probe: which server? give ftp://host")
	case len(urls) > 1:
		return pc, fmt.Errorf("probe: one URL, not %d (%q, %q …)", len(urls), urls[0], urls[1])
	case pc.opts.Timeout <= 0:
		return pc, fmt.Errorf("probe: --timeout %v: want more than 0", pc.opts.Timeout)
	}
	pc.opts.URL = urls[0]
	return pc, nil
}

// probeCmd runs `ftpalg probe` and returns its exit status.
func probeCmd(args []string, stdout, stderr io.Writer) int {
	pc, err := parseProbe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return probeExitOK
	}
	if err != nil {
		usage, _, _ := strings.Cut(probeUsage, "\n")
		fmt.Fprintf(stderr, "ftpalg: %v\n%s\n", err, usage)
		return probeExitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	r, err := probe.Run(ctx, pc.opts)
	if err != nil {
		fmt.Fprintln(stderr, "ftpalg:", err)
		return probeExitUsage
	}
	if pc.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		err = enc.Encode(r)
	} else {
		err = probe.WriteText(stdout, &r)
	}
	if err != nil {
		fmt.Fprintln(stderr, "ftpalg:", err)
		return probeExitFail
	}
	if !r.DataOK {
		return probeExitFail
	}
	return probeExitOK
}
