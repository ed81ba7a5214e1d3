package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/intercept"
	// The pinhole backends and the kernel data paths register themselves
	// with package rules.
	_ "github.com/ftpalg/ftpalg/rules/ipset"
	_ "github.com/ftpalg/ftpalg/rules/iptables"
	_ "github.com/ftpalg/ftpalg/rules/nftpath"
)

// firewallFlags choose and configure the pinhole backend; `run` and
// `rules` share them so both name the same kernel objects.
type firewallFlags struct {
	name, instance, iptables string
	keepHooks                bool
}

func (f *firewallFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.name, "firewall", "auto", "pinhole backend: auto (best available, reported at start), "+strings.Join(rules.Names(), ", "))
	fs.StringVar(&f.instance, "firewall-instance", "", "suffix for ftpalg's chains and sets, so several ftpalg processes on one host keep apart (a-z0-9_, up to 12)")
	fs.StringVar(&f.iptables, "iptables", "", "iptables variant for hooks and rules: nft or legacy (default: the iptables on PATH); must match the host's ruleset")
	fs.BoolVar(&f.keepHooks, "keep-firewall-hooks", false, "leave ftpalg's chains, hooks and sets in place at exit (pinholes are removed all the same)")
}

func (f *firewallFlags) options(log *zap.Logger) rules.Options {
	return rules.Options{Logger: log, Instance: f.instance, Iptables: f.iptables, KeepHooks: f.keepHooks}
}

// backend builds the chosen backend; "auto" detects the best one (detect
// false: try none, for the read-only `rules` commands).
func (f *firewallFlags) backend(ctx context.Context, log *zap.Logger, detect bool) (rules.Backend, error) {
	name := f.name
	if name == "auto" {
		if !detect {
			return nil, errors.New("--firewall auto cannot be used here: name the backend")
		}
		name, _ = rules.Detect(ctx, log) // logs its choice and reason
	} else {
		log.Info("firewall backend", zap.String("firewall", name))
	}
	return rules.New(name, f.options(log))
}

const rulesUsage = `Usage: ftpalg rules show|flush|cleanup [--firewall NAME] [--firewall-instance NAME] [--intercept-table N]

  show     list the pinholes open now, with the session that opened each, and the kernel data
           path's mappings not used yet, with their session and time left
  flush    remove every pinhole and mapping (chains, hooks, sets and tables stay)
  cleanup  remove everything ftpalg installed: pinhole chains and sets, the kernel data path's table,
           interception and divert rules and the policy route (after a crash, or with
           --keep-firewall-hooks); give it the --firewall-instance and --intercept-table the run used

Without --firewall, every backend is asked. Every kernel data path is.
`

// rulesConfig is what `ftpalg rules` acts on.
type rulesConfig struct {
	verb string
	fw   firewallFlags
	// cleanup names the interception objects `cleanup` removes.
	cleanup intercept.Config
}

// parseRules parses the arguments of `ftpalg rules`. Usage and flag errors
// are written to out; -h returns flag.ErrHelp.
func parseRules(args []string, out io.Writer) (rulesConfig, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(out, rulesUsage)
		return rulesConfig{}, errors.New("rules: show, flush or cleanup?")
	}
	rc := rulesConfig{verb: args[0]}
	switch rc.verb {
	case "show", "flush", "cleanup":
	default:
		return rc, fmt.Errorf("rules: unknown command %q (show, flush or cleanup)", rc.verb)
	}
	fs := flag.NewFlagSet("ftpalg rules "+rc.verb, flag.ContinueOnError)
	fs.SetOutput(out)
	rc.fw.register(fs)
	var route routeFlags
	route.register(fs)
	fs.Usage = func() { fmt.Fprint(fs.Output(), rulesUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		return rc, err
	}
	if fs.NArg() > 0 {
		return rc, fmt.Errorf("rules: unexpected argument %q", fs.Arg(0))
	}
	rc.cleanup = intercept.Config{Instance: rc.fw.instance, Iptables: rc.fw.iptables}
	if err := route.apply(&rc.cleanup); err != nil {
		return rc, fmt.Errorf("rules: %w", err)
	}
	return rc, nil
}

// rulesCmd is `ftpalg rules show|flush|cleanup`.
func rulesCmd(args []string) error {
	rc, err := parseRules(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := newLogger("console", zap.NewAtomicLevelAt(zapcore.WarnLevel))
	if err != nil {
		return err
	}
	f, verb := rc.fw, rc.verb
	names := []string{f.name}
	if f.name == "auto" {
		names = nil
		for _, n := range rules.Names() {
			if n != "none" {
				names = append(names, n)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	if verb == "show" {
		fmt.Fprintln(tw, "BACKEND\tSESSION\tPROTO\tPEER\tLOCAL\tEXPIRES IN")
	}
	for _, n := range names {
		b, err := rules.New(n, f.options(log))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if verb == "cleanup" {
			if err := b.Teardown(ctx); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		l, ok := b.(rules.Lister)
		if !ok {
			continue
		}
		switch verb {
		case "show":
			ps, err := l.List(ctx)
			if err != nil {
				if f.name == "auto" && errors.Is(err, rules.ErrNotReady) {
					continue // that backend is not in use here
				}
				errs = append(errs, err)
				continue
			}
			for _, p := range ps {
				exp := "-"
				if p.Lifetime > 0 {
					exp = p.Lifetime.String()
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", n, p.Session, p.Proto, p.Peer, p.Local, exp)
			}
		case "flush":
			if err := l.Flush(ctx); err != nil && !(f.name == "auto" && errors.Is(err, rules.ErrNotReady)) {
				errs = append(errs, err)
			}
		}
	}
	tw.Flush()
	errs = append(errs, dataPathsCmd(ctx, os.Stdout, verb, f.options(log))...)
	if verb == "cleanup" {
		// Interception and divert rules of transparent mode, and the
		// policy route in the run's table.
		c := rc.cleanup
		c.Logger = log
		if err := intercept.Cleanup(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dataPathsCmd does verb (show, flush, cleanup) for every kernel data
// path: its mappings listed to w (after a blank line, when there are
// any), removed, or its table deleted.
func dataPathsCmd(ctx context.Context, w io.Writer, verb string, opts rules.Options) []error {
	var (
		errs []error
		ms   []rules.Mapping
		from []string
	)
	for _, n := range rules.DataPathNames() {
		if n == rules.Splice {
			continue
		}
		dp, err := rules.NewDataPath(n, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if verb == "cleanup" {
			errs = append(errs, dp.Teardown(ctx))
			continue
		}
		l, ok := dp.(rules.MappingLister)
		if !ok {
			continue
		}
		switch verb {
		case "show":
			got, err := l.Mappings(ctx)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for range got {
				from = append(from, n)
			}
			ms = append(ms, got...)
		case "flush":
			errs = append(errs, l.FlushMappings(ctx))
		}
	}
	if len(ms) > 0 {
		fmt.Fprintln(w)
		printMappings(w, from, ms)
	}
	return errs
}

// printMappings writes the mappings (of the data paths named in from) as
// a table.
func printMappings(w io.Writer, from []string, ms []rules.Mapping) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tSESSION\tPEER\tANNOUNCED\tTARGET\tSOURCE\tEXPIRES IN")
	for i, m := range ms {
		src := "peer"
		if m.Source.IsValid() {
			src = m.Source.String()
		}
		exp := "-"
		if m.Lifetime > 0 {
			exp = m.Lifetime.Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", from[i], m.Session, m.Peer, m.Announced, m.Target, src, exp)
	}
	tw.Flush()
}
