package assets

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/releasearchive"
)

// BenchmarkFetchWarmCache measures a cache hit of a kubelet-sized (50 MB) asset:
// the whole cost is re-hashing the entry, so MB/s is SHA-256 throughput from the
// page cache.
func BenchmarkFetchWarmCache(b *testing.B) {
	body := randomBytes(b, 50<<20)
	inst := &Installer{Root: fsutil.Root(b.TempDir())}
	a := config.Asset{Name: "kubelet", URLs: []string{"http://127.0.0.1:1/unreachable"}, SHA256: sumOf(body)}
	if err := fsutil.WriteFileAtomic(filepath.Join(inst.cacheDir(), a.SHA256), body, 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		if _, src, err := inst.Fetch(ctx, a); err != nil || src != SourceCache {
			b.Fatalf("Fetch = %q, %v", src, err)
		}
	}
}

// BenchmarkArchiveFirstInstall measures installing containerd's three binaries
// (80 MB, incompressible) from its cached tar.gz as a first boot does: the
// archive re-hashed, indexed (every file hashed) and the members unpacked.
func BenchmarkArchiveFirstInstall(b *testing.B) {
	inst, a, size := benchArchive(b)
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		for _, p := range []string{"/usr/local/bin/containerd", "/usr/local/bin/containerd-shim-runc-v2", "/usr/local/bin/ctr"} {
			os.Remove(inst.Root.Path(p))
		}
		os.Remove(indexPath(filepath.Join(inst.cacheDir(), a.SHA256)))
		b.StartTimer()
		if changed, err := inst.Install(ctx, a); err != nil || !changed {
			b.Fatalf("Install = %v, %v", changed, err)
		}
	}
}

// BenchmarkArchiveConvergedCheck measures the assets phase's Check of the same
// archive asset on a converged node: the installed members hashed against the
// cached index, nothing unpacked.
func BenchmarkArchiveConvergedCheck(b *testing.B) {
	inst, a, _ := benchArchive(b)
	ctx := context.Background()
	if _, err := inst.Install(ctx, a); err != nil {
		b.Fatal(err)
	}
	p := inst.Phase([]config.Asset{a})
	b.ResetTimer()
	for b.Loop() {
		if cs, err := p.Check(ctx); err != nil || len(cs) != 0 {
			b.Fatalf("Check = %v, %v", cs, err)
		}
	}
}

func benchArchive(b *testing.B) (*Installer, config.Asset, int64) {
	inst := &Installer{Root: fsutil.Root(b.TempDir())}
	src := filepath.Join(b.TempDir(), "containerd.tar.gz")
	if err := releasearchive.Write(src, []releasearchive.File{
		{Name: "bin/", Dir: true},
		{Name: "bin/containerd", Body: randomBytes(b, 48<<20)},
		{Name: "bin/containerd-shim-runc-v2", Body: randomBytes(b, 11<<20)},
		{Name: "bin/ctr", Body: randomBytes(b, 23<<20)},
	}); err != nil {
		b.Fatal(err)
	}
	body, err := os.ReadFile(src)
	if err != nil {
		b.Fatal(err)
	}
	a := config.Asset{Name: "containerd", URLs: []string{"http://127.0.0.1:1/unreachable"}, SHA256: sumOf(body),
		Archive: &config.AssetArchive{Members: []config.ArchiveMember{{Name: "bin/*", Path: "/usr/local/bin/"}}}}
	if err := fsutil.WriteFileAtomic(filepath.Join(inst.cacheDir(), a.SHA256), body, 0o644); err != nil {
		b.Fatal(err)
	}
	return inst, a, int64(len(body))
}

// BenchmarkConvergedRun measures a reconcile of the assets phase (Check and
// Verify) on a converged node with ~150 MB of installed binaries: "recorded"
// trusts the hashes of files whose identity is unchanged (every run of a day but
// the periodic full check), "full" hashes every file as the full check does.
func BenchmarkConvergedRun(b *testing.B) {
	inst, a, _ := benchArchive(b)
	kubelet := randomBytes(b, 64<<20)
	k := config.Asset{Name: "kubelet", URLs: []string{"http://127.0.0.1:1/unreachable"}, SHA256: sumOf(kubelet)}
	if err := fsutil.WriteFileAtomic(filepath.Join(inst.cacheDir(), k.SHA256), kubelet, 0o644); err != nil {
		b.Fatal(err)
	}
	list := []config.Asset{k, a}
	ctx := context.Background()
	if _, err := runPhase(ctx, inst.Phase(list)); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		every time.Duration
	}{{"recorded", 0}, {"full", -1}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				run := &Installer{Root: inst.Root, FullCheckEvery: c.every}
				if cs, err := runPhase(ctx, run.Phase(list)); err != nil || len(cs) != 0 {
					b.Fatalf("run = %v, %v", cs, err)
				}
			}
		})
	}
}
