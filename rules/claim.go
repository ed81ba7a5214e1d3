package rules

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// Claim makes sure no other ftpalg process in this network namespace owns
// the kernel objects of instance (Options.Instance): two processes with
// the same names would flush each other's pinholes at Setup, and their
// firewall watches would each restore what the other removed, for ever.
// It binds an abstract Unix socket named after the instance — abstract
// names belong to the network namespace and vanish with the process, so a
// crashed run leaves no stale claim. release gives the claim up.
func Claim(instance string) (release func(), err error) {
	name := "@ftpalg/firewall/" + instance
	ln, err := net.Listen("unix", name)
	if errors.Is(err, syscall.EADDRINUSE) {
		what := "the default instance"
		if instance != "" {
			what = fmt.Sprintf("--firewall-instance %q", instance)
		}
		return nil, fmt.Errorf("rules: another ftpalg process in this network namespace runs with %s: give each process its own --firewall-instance", what)
	}
	if err != nil {
		return nil, fmt.Errorf("rules: claim %s: %w", name, err)
	}
	return func() { ln.Close() }, nil
}
