package pki

import (
	"context"
	"os"
	"testing"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// BenchmarkIssueControlPlane is a control-plane node's first run: every
// certificate, kubeconfig and the service-account key, written with fsync.
func BenchmarkIssueControlPlane(b *testing.B) {
	c, k, err := GenerateCA("ca", 10*year)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		root := b.TempDir()
		if err := NewPhase(cpOptions(fsutil.Root(root), staticCA{c, k})).Act(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(root)
		b.StartTimer()
	}
}

// BenchmarkCheckConverged is what every reconcile pays once the node is set up.
func BenchmarkCheckConverged(b *testing.B) {
	c, k, err := GenerateCA("ca", 10*year)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ph := NewPhase(cpOptions(fsutil.Root(b.TempDir()), staticCA{c, k}))
	if err := ph.Act(ctx); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		changes, err := ph.Check(ctx)
		if err != nil || len(changes) != 0 {
			b.Fatal(changes, err)
		}
	}
}
