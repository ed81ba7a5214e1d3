package rules

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRestoredString(t *testing.T) {
	for _, tc := range []struct {
		r    Restored
		want string
	}{
		{Restored{}, "nothing"},
		{Restored{Pinholes: 1}, "1 pinhole"},
		{Restored{Objects: []string{"iptables hook INPUT → FTPALG-INPUT", "set ftpalg-pinholes4"}, Pinholes: 3, Stray: 2},
			"iptables hook INPUT → FTPALG-INPUT, set ftpalg-pinholes4, 3 pinholes, removed 2 stray pinholes"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.r, got, tc.want)
		}
		if tc.r.Empty() != (tc.want == "nothing") {
			t.Errorf("%+v.Empty() = %v", tc.r, tc.r.Empty())
		}
	}
}

// scripted is a Syncer that answers its calls from a script, and then
// finds nothing to restore.
type scripted struct {
	mu     sync.Mutex
	script []result
	calls  int
}

type result struct {
	r   Restored
	err error
}

func (s *scripted) Name() string { return "scripted" }

func (s *scripted) Sync(context.Context) (Restored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.script) == 0 {
		return Restored{}, nil
	}
	r := s.script[0]
	s.script = s.script[1:]
	return r.r, r.err
}

// TestWatch: every interval each Syncer is asked; what one restored is
// logged once at Warn naming it; a failure is logged once however often
// it repeats, a different failure again, and recovery once; the watch
// ends with its context.
func TestWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zap.InfoLevel)
		broken := errors.New("iptables: Permission denied")
		a := &scripted{script: []result{
			{},
			{r: Restored{Objects: []string{"iptables hook INPUT → FTPALG-INPUT"}, Pinholes: 3}},
			{err: broken}, {err: broken}, {err: broken},
			{err: errors.New("other")},
			{},
		}}
		b := &scripted{}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			Watch(ctx, 2*time.Second, zap.New(core), a, b)
		}()
		time.Sleep(7*2*time.Second + time.Second)
		cancel()
		<-done
		if a.calls != 7 || b.calls != 7 {
			t.Errorf("after 7 intervals: %d and %d Syncs, want 7 each", a.calls, b.calls)
		}
		var got []string
		for _, e := range logs.All()[1:] {
			s := e.Level.String() + " " + e.Message
			for _, f := range e.Context {
				if f.Key == "restored" || f.Key == "error" || f.Key == "firewall" {
					s += fmt.Sprintf(" %s=%v", f.Key, fieldValue(f))
				}
			}
			got = append(got, s)
		}
		want := []string{
			"warn " + MsgRestored + " firewall=scripted restored=iptables hook INPUT → FTPALG-INPUT, 3 pinholes",
			"warn " + MsgSyncFailed + " firewall=scripted error=iptables: Permission denied",
			"warn " + MsgSyncFailed + " firewall=scripted error=other",
			"info " + MsgSyncRecovered + " firewall=scripted",
		}
		if first := logs.All()[0]; first.Message != MsgWatching || fmt.Sprint(first.ContextMap()["firewall"]) != "[scripted scripted]" {
			t.Errorf("first line %q %v, want %q naming both", first.Message, first.ContextMap(), MsgWatching)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

func fieldValue(f zap.Field) any {
	switch {
	case f.Interface != nil:
		if err, ok := f.Interface.(error); ok {
			return err.Error()
		}
		return f.Interface
	case f.String != "":
		return f.String
	}
	return f.Integer
}

// TestStartWatch: stop ends the watch and returns only once no Sync runs;
// a zero interval starts nothing.
func TestStartWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{}
		stop := StartWatch(t.Context(), time.Second, nil, s)
		time.Sleep(3*time.Second + time.Millisecond)
		stop()
		stop()
		n := s.calls
		time.Sleep(5 * time.Second)
		if s.calls != n || n != 3 {
			t.Errorf("%d Syncs in 3s, %d after stop; want 3 and none", n, s.calls-n)
		}
		off := &scripted{}
		StartWatch(t.Context(), 0, nil, off)()
		time.Sleep(5 * time.Second)
		if off.calls != 0 {
			t.Errorf("interval 0: %d Syncs", off.calls)
		}
	})
}

func TestNoneSync(t *testing.T) {
	if r, err := (None{}).Sync(context.Background()); !r.Empty() || err != nil {
		t.Errorf("None.Sync = %v, %v", r, err)
	}
}
