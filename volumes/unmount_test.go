package volumes

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A volume is released only when no other mount namespace still has it: a
// container still stopping keeps its own copy of the mount (and with it the
// filesystem) alive after ours is gone. A namespace that receives our mount
// by propagation (a service's private namespace) loses it with ours.
func TestOtherUsersOfAMount(t *testing.T) {
	proc := t.TempDir()
	proc1 := func(pid, ns, comm, mountinfo string) {
		dir := filepath.Join(proc, pid)
		if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(ns, filepath.Join(dir, "ns", "mnt")); err != nil {
			t.Fatal(err)
		}
		for name, content := range map[string]string{"comm": comm + "\n", "mountinfo": mountinfo} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	const volume = "259:3"
	ours := "36 25 259:3 / /mnt/master-vol-0a rw,noatime shared:1 - ext4 /dev/nvme1n1 rw\n"
	container := "812 790 259:3 /data /var/lib/etcd rw,noatime - ext4 /dev/nvme1n1 rw\n"
	propagated := "40 30 259:3 / /mnt/master-vol-0a rw,noatime master:1 - ext4 /dev/nvme1n1 rw\n"
	other := "22 1 0:21 / /proc rw - proc proc rw\n"
	proc1("1", "mnt:[4026531841]", "systemd", ours)
	proc1("512", "mnt:[4026532500]", "systemd-logind", propagated) // goes with ours
	proc1("2048", "mnt:[4026532900]", "etcd", container)
	proc1("2049", "mnt:[4026532900]", "etcd", container) // same namespace: named once
	proc1("3000", "mnt:[4026533000]", "pause", other)
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil { // not a process directory
		t.Fatal(err)
	}

	group, err := peerGroup(filepath.Join(proc, "1", "mountinfo"), volume, "/mnt/master-vol-0a")
	if err != nil || group != "1" {
		t.Fatalf("peer group %q, %v; want 1", group, err)
	}
	got, err := otherUsers(proc, volume, "mnt:[4026531841]", group)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"2048 (etcd)"}; !slices.Equal(got, want) {
		t.Errorf("other users %v, want %v", got, want)
	}
	if got, _ := otherUsers(proc, "259:4", "mnt:[4026531841]", group); len(got) != 0 {
		t.Errorf("a device nobody mounts has users %v", got)
	}
}
