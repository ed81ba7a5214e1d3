package rulestest

import (
	"testing"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/internal/backendtest"
)

// The backends' state conformance tests, run on the fake: it answers what
// the proxy sees (errors, List, re-open, Close, Setup and Teardown) as
// ipset and iptables do, which pass the same tests as root.
func config() backendtest.Config {
	return backendtest.Config{
		Fake: func(testing.TB) func(rules.Options) rules.Backend {
			k := NewKernel()
			return func(o rules.Options) rules.Backend { return k.New(o) }
		},
	}
}

func TestErrors(t *testing.T)     { backendtest.Errors(t, config()) }
func TestListFlush(t *testing.T)  { backendtest.ListFlush(t, config()) }
func TestReopen(t *testing.T)     { backendtest.Reopen(t, config()) }
func TestLifecycle(t *testing.T)  { backendtest.Lifecycle(t, config()) }
func TestConcurrent(t *testing.T) { backendtest.Concurrent(t, config(), 200) }
