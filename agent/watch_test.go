package agent

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// progressPhase reports a progress message and acts only once the watcher has
// shown it, so the test sees what a second SSH session would.
type progressPhase struct {
	name, progress string
	shown          func(string) bool
	fail           error
	ready          bool
}

func (p *progressPhase) Name() string { return p.name }
func (p *progressPhase) Check(context.Context) ([]bootstrap.Change, error) {
	return []bootstrap.Change{{Kind: "file", Target: p.name, Action: "write"}}, nil
}
func (p *progressPhase) Act(ctx context.Context) error {
	if p.progress != "" {
		bootstrap.Progress(ctx, p.progress)
		deadline := time.Now().Add(10 * time.Second)
		for !p.shown(p.progress) {
			if time.Now().After(deadline) {
				return errors.New("the watcher never showed the progress")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return p.fail
}
func (p *progressPhase) Verify(context.Context) error { return nil }
func (p *progressPhase) Report(st *bootstrap.State) {
	if p.ready {
		st.Readiness = bootstrap.ReadinessStatus{Ready: true}
	}
}

func watchRun(t *testing.T, phases func(shown func(string) bool) []bootstrap.Phase) (string, int, error) {
	return watchRuns(t, 5*time.Millisecond, false, phases)
}

// watchRuns runs a boot while the watcher polls every interval; with daemon,
// the daemon's first run follows the boot at once, as nodeagent.service's does.
func watchRuns(t *testing.T, interval time.Duration, daemon bool, phases func(shown func(string) bool) []bootstrap.Phase) (string, int, error) {
	t.Helper()
	o := Options{Root: fsutil.Root(t.TempDir()), StateDir: "/var/lib/nodeagent", Log: quietLog()}
	var out syncBuffer
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		code, err := WatchStatus(ctx, o, &out, interval)
		done <- result{code, err}
	}()
	// The watcher is up before the boot starts, as in a second session.
	for up := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "waiting for a boot to start"); {
		if time.Now().After(up) {
			t.Fatalf("the watcher never said it waits for a boot; output:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := &bootstrap.Runner{Store: o.store(), Log: quietLog(), Node: bootstrap.NodeInfo{Name: "n1", Cluster: "c.example.com", Role: "Node"}, RecordBoot: true}
	ps := phases(func(s string) bool { return strings.Contains(out.String(), s) })
	runErr := r.Run(ctx, ps)
	if daemon {
		d := &bootstrap.Runner{Store: o.store(), Log: quietLog(), Node: r.Node}
		if err := d.Run(ctx, ps); err != nil {
			t.Fatal(err)
		}
	}
	res := <-done
	t.Logf("status -w:\n%s", out.String())
	if runErr != nil && res.code == StatusReady {
		t.Errorf("run failed (%v) but the watcher says ready", runErr)
	}
	return out.String(), res.code, res.err
}

func TestWatchFollowsABootToReady(t *testing.T) {
	out, code, err := watchRun(t, func(shown func(string) bool) []bootstrap.Phase {
		return []bootstrap.Phase{
			&progressPhase{name: "assets", progress: "downloading kubelet: 12.0 MiB of 48.0 MiB at 6.0 MiB/s", shown: shown},
			&progressPhase{name: "readiness", progress: "waiting for kubelet healthz", shown: shown, ready: true},
		}
	})
	if err != nil || code != StatusReady {
		t.Fatalf("watch = %d, %v; want ready", code, err)
	}
	for _, want := range []string{"run started: node n1 (c.example.com, Node), 2 phases", "assets running",
		"assets: downloading kubelet: 12.0 MiB of 48.0 MiB at 6.0 MiB/s", "assets done in", "readiness: waiting for kubelet healthz",
		"ready: every phase done in"} {
		if !strings.Contains(out, want) {
			t.Errorf("status -w output lacks %q", want)
		}
	}
}

func TestWatchEndsAtAFailedPhase(t *testing.T) {
	out, code, err := watchRun(t, func(shown func(string) bool) []bootstrap.Phase {
		return []bootstrap.Phase{
			&progressPhase{name: "assets", shown: shown, fail: errors.New("kubelet: sha256 mismatch")},
			&progressPhase{name: "readiness", shown: shown, ready: true},
		}
	})
	if err != nil || code != StatusNotReady {
		t.Fatalf("watch = %d, %v; want not ready", code, err)
	}
	if !strings.Contains(out, "assets FAILED after") || !strings.Contains(out, "failed after") || strings.Contains(out, "readiness running") {
		t.Errorf("output does not end at the failure")
	}
}

// The daemon's run starts the moment the boot's ends: the watcher that did
// not see the boot's last phases tells them from the boot's timeline.
func TestWatchTellsABootEndItDidNotSee(t *testing.T) {
	out, code, err := watchRuns(t, 400*time.Millisecond, true, func(shown func(string) bool) []bootstrap.Phase {
		return []bootstrap.Phase{
			&progressPhase{name: "assets", progress: "downloading kubelet", shown: shown},
			&progressPhase{name: "kubelet", shown: shown},
			&progressPhase{name: "readiness", shown: shown, ready: true},
		}
	})
	if err != nil || code != StatusReady {
		t.Fatalf("watch = %d, %v; want ready", code, err)
	}
	boot, _, _ := strings.Cut(out, "ready: every phase done in")
	for _, want := range []string{"assets: downloading kubelet", "kubelet done in", "readiness done in"} {
		if !strings.Contains(boot, want) {
			t.Errorf("the boot's part of the output lacks %q", want)
		}
	}
	if strings.Count(out, "run started") != 1 {
		t.Errorf("the watch did not end with the boot")
	}
}
