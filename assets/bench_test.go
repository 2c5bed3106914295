package assets

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
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
