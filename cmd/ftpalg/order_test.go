package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/rulestest"
)

// A pinhole backend and a kernel data path that note, in one list, when
// run sets them up and tears them down, and when auto detection probes
// the data path. Registered for the package's tests under orderName; the
// data path is tried first by auto detection and --data-path kernel, but
// only while orderActive is set (otherwise its probe fails and detection
// goes on as without it).
const orderName = "order-test"

var (
	orderActive atomic.Bool
	orderMu     sync.Mutex
	orderSteps  []string
)

func orderNote(step string) {
	orderMu.Lock()
	orderSteps = append(orderSteps, step)
	orderMu.Unlock()
}

type orderBackend struct{ *rulestest.Fake }

func (b orderBackend) Setup(ctx context.Context) error {
	orderNote("firewall setup")
	return b.Fake.Setup(ctx)
}

func (b orderBackend) Teardown(ctx context.Context) error {
	orderNote("firewall teardown")
	return b.Fake.Teardown(ctx)
}

type orderDataPath struct{ *rulestest.DataPath }

func (d orderDataPath) Setup(ctx context.Context) error {
	orderNote("data path setup")
	return d.DataPath.Setup(ctx)
}

func (d orderDataPath) Teardown(ctx context.Context) error {
	orderNote("data path teardown")
	return d.DataPath.Teardown(ctx)
}

func init() {
	rules.Register(rules.Driver{Name: orderName, Preference: 1000,
		New: func(rules.Options) (rules.Backend, error) { return orderBackend{rulestest.NewFake()}, nil }})
	rules.RegisterDataPath(rules.DataPathDriver{Name: orderName, Preference: -1000,
		New: func(rules.Options) (rules.DataPath, error) { return orderDataPath{rulestest.NewDataPath()}, nil },
		Probe: func(context.Context, rules.Options) error {
			if !orderActive.Load() {
				return fmt.Errorf("%s: only for TestRunDataPathAfterFirewall", orderName)
			}
			orderNote("data path probe")
			return nil
		}})
}

// TestRunDataPathAfterFirewall: run sets the kernel data path up (and
// --data-path auto probes it) only after the pinhole backend's Setup, as
// rules.DetectDataPath asks: the data path's check of the forward chains
// must see the backend's FORWARD hook. Before, on a router with a DROP
// forward policy, ftpalg with --firewall ipset warned that the forwarded
// data would be dropped, and auto fell back to splice, although the hook
// that admits it was about to be installed (found by test/e2e's
// TestKernelForwardDrop). At exit the data path goes after the firewall.
func TestRunDataPathAfterFirewall(t *testing.T) {
	for _, mode := range []string{"auto", "kernel"} {
		t.Run(mode, func(t *testing.T) {
			orderActive.Store(true)
			orderMu.Lock()
			orderSteps = nil
			orderMu.Unlock()
			t.Cleanup(func() { orderActive.Store(false) })
			up := fakeUpstream(t)
			addr := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
			rc, err := parseRun([]string{"--listen", addr, "--upstream", up, "--data-ports", "0",
				"--firewall", orderName, "--firewall-instance", "order" + mode, "--data-path", mode,
				"--firewall-check-interval", "0", "--shutdown-grace", "1s"}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zap.DebugLevel)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, zap.New(core), zap.NewAtomicLevelAt(zap.DebugLevel), rc, make(chan os.Signal))
			}()
			for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(end) {
					t.Fatalf("ftpalg not listening on %s: %v", addr, err)
				}
			}
			quit(greet(t, addr, "220"))
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("run did not return after its context ended")
			}
			want := []string{"firewall setup", "data path setup", "firewall teardown", "data path teardown"}
			if mode == "auto" {
				want = slices.Insert(want, 1, "data path probe")
			}
			orderMu.Lock()
			got := slices.Clone(orderSteps)
			orderMu.Unlock()
			if !slices.Equal(got, want) {
				t.Errorf("steps %q, want %q", got, want)
			}
			if t.Failed() {
				for _, e := range logs.All() {
					t.Logf("log: %s %s %v", e.Level, e.Message, e.ContextMap())
				}
			}
		})
	}
}
