package agent

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// serveStatusAPI runs api on a socket in a temporary directory until the test
// ends, and returns the socket's path once it answers.
func serveStatusAPI(t *testing.T, api *statusAPI) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "run", "nodeagent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.serve(ctx, socket) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitFor(t, func() bool { return queryAPI(context.Background(), socket, "/status", &bootstrap.State{}) == nil })
	return socket
}

// `nodeagent drain` asks the running daemon for its exit, prints every step
// with its outcome, and exits 1 when a step failed; a daemon that cannot exit
// gracefully, or none at all, is an error that says so.
func TestDrainAsksTheDaemon(t *testing.T) {
	began := time.Date(2026, 11, 30, 18, 0, 0, 0, time.UTC)
	asked := 0
	api := &statusAPI{store: bootstrap.StateStore{Dir: t.TempDir()}, metrics: newMetrics(), log: quietLog(),
		exit: func(context.Context) (*bootstrap.ExitStatus, error) {
			asked++
			return &bootstrap.ExitStatus{Reason: "asked by nodeagent drain", StartedAt: began, FinishedAt: began.Add(3 * time.Second),
				Steps: []bootstrap.ExitStep{
					{Name: "drain", Detail: "2 evicted", Error: "1 pod(s) not evicted within 1m30s", Duration: 90 * time.Second},
					{Name: "gossip-leave", Detail: "left the gossip ring", Duration: 300 * time.Millisecond},
				}}, nil
		}}
	socket := serveStatusAPI(t, api)

	var out bytes.Buffer
	err := DrainNode(context.Background(), socket, &out)
	var ee ExitError
	if !errors.As(err, &ee) || ee.Code != 1 || !strings.Contains(err.Error(), "1 exit step(s) failed") {
		t.Fatalf("DrainNode with a failed step = %v, want exit 1 naming one failed step", err)
	}
	for _, want := range []string{"Exit: asked by nodeagent drain (started 2026-11-30T18:00:00Z)", "drain", "1 pod(s) not evicted", "gossip-leave", "left the gossip ring"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("drain output lacks %q:\n%s", want, out.String())
		}
	}
	if asked != 1 {
		t.Errorf("the daemon was asked %d times, want once", asked)
	}

	noExit := serveStatusAPI(t, &statusAPI{store: bootstrap.StateStore{Dir: t.TempDir()}, metrics: newMetrics(), log: quietLog()})
	if err := DrainNode(context.Background(), noExit, &out); err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "cannot exit gracefully") {
		t.Errorf("DrainNode against a daemon without an exit = %v, want an error saying so", err)
	}
	if err := DrainNode(context.Background(), filepath.Join(t.TempDir(), "none.sock"), &out); err == nil || !strings.Contains(err.Error(), "is nodeagent.service running?") {
		t.Errorf("DrainNode with no daemon = %v, want an error asking whether it runs", err)
	}
}
