//go:build e2e

package doctor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// A /var/lib that is a small loop-mounted filesystem filled to the last block
// is named full, with kubelet's eviction thresholds as the consequence.
// Needs root (mount) and mkfs.ext4; run under the e2e lock.
func TestFullVarLib(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to loop-mount a filesystem")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: %v", tool, err)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "varlib.img")
	root := filepath.Join(dir, "root")
	mnt := filepath.Join(root, "var/lib")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	sh("truncate", "-s", "16M", img)
	sh("mkfs.ext4", "-q", "-F", img)
	sh("mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	r := fsutil.Root(root)
	want(t, run(t, Disk(r, "/var/lib")), OK, "/var/lib:")

	f, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			break
		}
	}
	f.Close()
	want(t, run(t, Disk(r, "/var/lib")), Fail, "/var/lib is (nearly) full", "eviction")
}
