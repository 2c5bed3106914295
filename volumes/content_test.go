package volumes

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/awsemu"
)

// backing prepares a volume's backing file in the emulator's volume directory
// before the emulator starts, through a loop device of its own, the way a volume
// that already served etcd would look.
func backing(t *testing.T, dir, volumeID string, sizeMiB int, prepare func(t *testing.T, dev string)) {
	t.Helper()
	file := filepath.Join(dir, volumeID+".img")
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
	dev := strings.TrimSpace(string(out))
	defer func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d: %v: %s", err, out)
		}
	}()
	prepare(t, dev)
}

// TestClaimKeepsExistingData is the rule that matters most: a volume that already
// holds a filesystem is mounted as it is, its files intact, and never formatted
// (the filesystem UUID is the same before and after). Anything that is neither a
// filesystem we mount nor blank is refused, and then nothing is mounted or
// written.
func TestClaimKeepsExistingData(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, dev string)
		fsType  string // mounted with this type; "" means refused
		wantErr string
	}{
		{name: "ext4 holding etcd data", fsType: "ext4", prepare: func(t *testing.T, dev string) {
			run(t, "mkfs.ext4", "-q", "-L", "old-etcd", dev)
			dir, unmount := mountTemp(t, dev, "ext4")
			if err := os.MkdirAll(filepath.Join(dir, "data", "member"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "data", "member", "wal"), []byte("raft log"), 0o600); err != nil {
				t.Fatal(err)
			}
			unmount()
		}},
		{name: "xfs holding etcd data", fsType: "xfs", prepare: func(t *testing.T, dev string) {
			if !have("mkfs.xfs") {
				t.Fatal("mkfs.xfs is not installed")
			}
			run(t, "mkfs.xfs", "-q", dev)
			dir, unmount := mountTemp(t, dev, "xfs")
			if err := os.MkdirAll(filepath.Join(dir, "data", "member"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "data", "member", "wal"), []byte("raft log"), 0o600); err != nil {
				t.Fatal(err)
			}
			unmount()
		}},
		{name: "unrecognised data", wantErr: "vol-0data (/dev/loop", prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 8192, randomBytes(4096))
		}},
		{name: "partition table", wantErr: "holds data (dos partition table); refusing to format", prepare: func(t *testing.T, dev string) {
			sfdisk(t, dev, "label: dos\n,,L\n")
		}},
		{name: "swap", wantErr: "holds data (swap filesystem); refusing to format", prepare: func(t *testing.T, dev string) {
			run(t, "mkswap", dev)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sizeMiB := 32
			if tt.fsType == "xfs" {
				sizeMiB = 320 // mkfs.xfs's minimum
			}
			backing(t, dir, "vol-0data", sizeMiB, tt.prepare)
			before, err := ProbeDevice(filepath.Join(dir, "vol-0data.img"))
			if err != nil {
				t.Fatal(err)
			}
			n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
			vol := etcdVolume("vol-0data", n.az, "main", "a", "a")
			vol.SizeMiB = sizeMiB
			_, c := emuOpts(t, []*node{n}, []awsemu.Volume{vol}, nil, awsemu.Options{VolumeDir: dir})
			fstab := filepath.Join(n.root, "etc", "fstab")
			orig := "# static file system information\nUUID=1111-2222 / ext4 errors=remount-ro 0 1\n/dev/sdb1\t/srv xfs defaults 0 0\n"
			if err := os.MkdirAll(filepath.Dir(fstab), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(fstab, []byte(orig), 0o644); err != nil {
				t.Fatal(err)
			}

			p := newPhase(t, c, n, bothEtcd[:1])
			ctx := context.Background()
			_, err = converge(ctx, p)
			if tt.fsType == "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "refusing to format") {
					t.Fatalf("err = %v, want a refusal containing %q", err, tt.wantErr)
				}
				if b, _ := os.ReadFile(fstab); string(b) != orig {
					t.Errorf("fstab changed on refusal:\n%s", b)
				}
				if mounts, _ := readMountInfo(); mountedUnder(mounts, n.root) {
					t.Errorf("something was mounted under %s on refusal", n.root)
				}
				// Plan says the same, and still changes nothing.
				if _, err := newPhase(t, c, n, bothEtcd[:1]).Check(ctx); err == nil || !strings.Contains(err.Error(), "refusing to format") {
					t.Errorf("check: %v, want the refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cl := p.Claims()[0]
			after, _ := ProbeDevice(cl.Device)
			wal, err := os.ReadFile(filepath.Join(n.root, cl.MountPoint, "data", "member", "wal"))
			if err != nil || string(wal) != "raft log" {
				t.Fatalf("etcd data after claim: %q, %v", wal, err)
			}
			if cl.Formatted || after.Type != tt.fsType || after.UUID == "" || after.UUID != before.UUID {
				t.Fatalf("claim %+v; filesystem before %+v, after %+v: want the existing %s kept", cl, before, after, tt.fsType)
			}
			b, _ := os.ReadFile(fstab)
			wantLine := "UUID=" + before.UUID + " /mnt/master-vol-0data " + tt.fsType + " defaults,noatime,nofail 0 "
			if !strings.HasPrefix(string(b), orig) || !strings.Contains(string(b), wantLine) {
				t.Errorf("fstab: other lines must stay and ours be added:\n%s", b)
			}
		})
	}
}

func mountedUnder(mounts []mountInfo, dir string) bool {
	real, _ := filepath.EvalSymlinks(dir)
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, real+"/") {
			return true
		}
	}
	return false
}
