// Command ftpalg is a firewall-aware FTP proxy and application-layer gateway.
//
//	ftpalg demo                         see the problem and the fix on loopback
//	ftpalg run --upstream HOST:PORT ... relay FTP to a server, rewriting data-channel addresses
//	ftpalg run --config FILE            run the front ends a YAML file describes; SIGHUP reloads it
//	ftpalg check-config FILE            check such a file and print what would run
//	ftpalg probe ftp://HOST             check from here why "login works, LIST hangs"
//	ftpalg version
//
// It is a composition root and holds no socket or kernel code: config.go
// turns the flags into a runConfig (one proxy.Config and, in transparent
// mode, an intercept.Config per front end) without side effects;
// configfile.go does the same from a configuration file, whose keys are
// the flags (one schema, two syntaxes), and holds `check-config`;
// reload.go plans a reload as a pure function of the running and the new
// configuration; run.go opens the listeners (package nat), sets up the
// firewall backend and the interception (package rules), serves one
// proxy.Server per front end (package proxy), carries out reloads and
// shuts down in order; firewall.go holds the backend flags and `ftpalg
// rules`; probe.go turns the flags of `ftpalg probe` into probe.Options
// and prints the report (package probe does the probing).
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `ftpalg — firewall-aware FTP proxy / application-layer gateway

Usage:
  ftpalg demo                    run a server, the proxy and a client on loopback and show the rewrite
  ftpalg run [flags]             run the proxy (ftpalg run --help lists the flags)
  ftpalg run --config FILE [flags]
                                 run the front ends FILE describes (YAML, see deploy/ftpalg.yaml);
                                 flags given override it; SIGHUP reloads it
  ftpalg check-config FILE [flags]
                                 check a configuration file and print what would run
  ftpalg rules show|flush|cleanup  the firewall pinholes ftpalg holds
  ftpalg probe [--active] [--json] [--timeout 20s] ftp://[user[:pass]@]host[:port]
                                 check from here whether data transfers work ("login works, LIST hangs");
                                 exit status 0 if they do, 1 if not
  ftpalg version                 print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "demo":
		err = demoCmd(os.Args[2:])
	case "check-config":
		os.Exit(checkConfigCmd(os.Args[2:], os.Stdout, os.Stderr))
	case "rules":
		err = rulesCmd(os.Args[2:])
	case "probe":
		os.Exit(probeCmd(os.Args[2:], os.Stdout, os.Stderr))
	case "version", "--version", "-v":
		fmt.Println("ftpalg", version)
	case "help", "--help", "-h":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "ftpalg: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftpalg:", err)
		os.Exit(1)
	}
}
