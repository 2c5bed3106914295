package systemd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

func TestRenderedPhaseRendersEachRun(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	renders := 0
	content := "a"
	p := NewRenderedPhase("demo", UnitSet{
		Root:    root,
		Systemd: func(context.Context) (*Manager, error) { return nil, errors.New("no D-Bus here") },
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, func() (Rendered, error) {
		renders++
		return Rendered{
			Files:    []File{{Path: "/etc/demo.conf", Content: []byte(content)}},
			Warnings: []string{"binary x missing"},
		}, nil
	})
	changes, err := p.Check(context.Background())
	if err != nil || len(changes) != 1 || changes[0].Target != "/etc/demo.conf" {
		t.Fatalf("first Check = %v, %v; want one change of /etc/demo.conf", changes, err)
	}
	// As if Act had run (Act needs systemd; the e2e tests run it for real).
	if err := fsutil.WriteFileAtomic(root.Path("/etc/demo.conf"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if changes, err := p.Check(context.Background()); err != nil || len(changes) != 0 {
		t.Fatalf("Check of a converged file = %v, %v; want no changes", changes, err)
	}
	// An input produced by an earlier phase changed: the next run renders it.
	content = "b"
	if changes, err := p.Check(context.Background()); err != nil || len(changes) != 1 || changes[0].Action != "update" {
		t.Errorf("Check after the input changed = %v, %v; want an update", changes, err)
	}
	if renders != 3 {
		t.Errorf("rendered %d times, want once per Check (3)", renders)
	}
	if w := p.Warnings(); !slices.Equal(w, []string{"binary x missing"}) {
		t.Errorf("warnings = %q, want the one warning once", w)
	}
}

func TestRenderedPhaseRenderError(t *testing.T) {
	p := NewRenderedPhase("demo", UnitSet{Root: fsutil.Root(t.TempDir())}, func() (Rendered, error) {
		return Rendered{}, errors.New("bad input")
	})
	if _, err := p.Check(context.Background()); err == nil || err.Error() != "bad input" {
		t.Errorf("Check = %v, want the render error", err)
	}
	if err := p.Verify(context.Background()); err == nil {
		t.Error("Verify of a phase that cannot render succeeded")
	}
}
