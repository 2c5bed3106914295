//go:build e2e

package e2e

import (
	"context"
	"os"
	"testing"

	"github.com/nodeagent/nodeagent/awsemu"
)

// BenchmarkBootstrap measures a worker's boot from a warm cache, as on an image
// baked by packer/: `nodeagent bake` first fills the asset cache, then the timed
// `nodeagent bootstrap` runs from user-data. Reported: wall and CPU time of the
// agent, its peak RSS, and the time of a no-op re-run. Run by `make bench`.
func BenchmarkBootstrap(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		env := startEnv(b, &awsemu.World{})
		cfg := workerUserData(b, env, nil)
		n := bootNode(b, env, workerInstance(b, "i-0bench0000000001", cfg))
		if err := os.WriteFile(n.M.Path("/root/bake.yaml"), cfg, 0o600); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		if r, err := n.Run(ctx, "bake", "--config", "/root/bake.yaml"); err != nil || r.Code != 0 {
			b.Fatalf("bake: %v exit %d\n%s", err, r.Code, r.Stderr)
		}
		b.StartTimer()
		r, err := n.Run(ctx, "bootstrap")
		b.StopTimer()
		if err != nil || r.Code != 0 {
			b.Fatalf("bootstrap: %v exit %d\n%s", err, r.Code, r.Stderr)
		}
		// Let the daemon bootstrap started finish its first reconcile, so the no-op
		// run does not wait for its lock.
		waitDaemon(b, n)
		noop, err := n.Run(ctx, "bootstrap")
		if err != nil || noop.Code != 0 {
			b.Fatalf("no-op bootstrap: %v exit %d", err, noop.Code)
		}
		b.ReportMetric(r.Wall.Seconds(), "bootstrap-wall-s")
		b.ReportMetric(r.CPU.Seconds(), "bootstrap-cpu-s")
		b.ReportMetric(float64(r.MaxRSS)/(1<<20), "peak-rss-MiB")
		b.ReportMetric(noop.Wall.Seconds(), "noop-wall-s")
		b.ReportMetric(noop.CPU.Seconds(), "noop-cpu-s")
		b.ReportMetric(float64(noop.MaxRSS)/(1<<20), "noop-peak-rss-MiB")
		b.ReportMetric(n.M.BootDuration.Seconds(), "machine-boot-s")
		if fi, err := os.Stat(builtAgent); err == nil {
			b.ReportMetric(float64(fi.Size())/(1<<20), "binary-MiB")
		}
	}
}
