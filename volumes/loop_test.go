package volumes

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// needRoot skips tests that need loop devices and mount when not root.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: loop devices and mount")
	}
}

// newLoop makes a sparse backing file of sizeMiB and attaches a real loop device
// to it; the device is detached when the test ends.
func newLoop(t testing.TB, sizeMiB int) (dev, file string) {
	t.Helper()
	needRoot(t)
	file = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, file
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func have(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// writeAt writes b at off on the device, synced so later readers see it.
func writeAt(t testing.TB, dev string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// mountTemp mounts dev on a temporary directory and unmounts it at cleanup (or
// earlier through the returned func).
func mountTemp(t testing.TB, dev, fstype string) (dir string, unmount func()) {
	t.Helper()
	dir = t.TempDir()
	if err := unix.Mount(dev, dir, fstype, 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	done := false
	unmount = func() {
		if !done {
			done = true
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	}
	t.Cleanup(unmount)
	return dir, unmount
}

// blkidValue returns one key of `blkid -p -o export` for dev.
func blkidValue(t testing.TB, dev, key string) string {
	t.Helper()
	out, _ := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	return ""
}
