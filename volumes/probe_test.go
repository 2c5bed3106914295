package volumes

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeDevice prepares real loop devices the way other tools leave them and
// checks what the probe makes of each: only the first is ever formatted.
func TestProbeDevice(t *testing.T) {
	needRoot(t)
	mbr := func(t *testing.T, dev string) {
		// One Linux partition in an otherwise zero disk.
		b := make([]byte, 512)
		e := b[446:]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:], 2048)
		binary.LittleEndian.PutUint32(e[12:], 4096)
		b[510], b[511] = 0x55, 0xAA
		writeAt(t, dev, 0, b)
	}
	tests := []struct {
		name     string
		sizeMiB  int
		prepare  func(t *testing.T, dev string)
		kind     ContentKind
		fsType   string
		needTool string
	}{
		{name: "blank", sizeMiB: 64, prepare: func(*testing.T, string) {}, kind: Blank},
		{name: "blank smaller than the probe windows", sizeMiB: 1, prepare: func(*testing.T, string) {}, kind: Blank},
		{name: "ext4 holding data", sizeMiB: 64, kind: Filesystem, fsType: "ext4", prepare: func(t *testing.T, dev string) {
			run(t, "mkfs.ext4", "-q", dev)
			dir, unmount := mountTemp(t, dev, "ext4")
			if err := os.WriteFile(filepath.Join(dir, "member"), []byte("etcd data"), 0o600); err != nil {
				t.Fatal(err)
			}
			unmount()
		}},
		{name: "ext3", sizeMiB: 64, kind: Filesystem, fsType: "ext3", needTool: "mkfs.ext3", prepare: func(t *testing.T, dev string) {
			run(t, "mkfs.ext3", "-q", dev)
		}},
		{name: "ext2", sizeMiB: 64, kind: Filesystem, fsType: "ext2", needTool: "mkfs.ext2", prepare: func(t *testing.T, dev string) {
			run(t, "mkfs.ext2", "-q", dev)
		}},
		{name: "xfs", sizeMiB: 320, kind: Filesystem, fsType: "xfs", prepare: func(t *testing.T, dev string) {
			if have("mkfs.xfs") {
				run(t, "mkfs.xfs", "-q", dev)
				return
			}
			writeAt(t, dev, 0, []byte("XFSB"))
		}},
		{name: "btrfs signature", sizeMiB: 64, kind: Filesystem, fsType: "btrfs", prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 65536+64, []byte("_BHRfS_M"))
		}},
		{name: "swap", sizeMiB: 64, kind: Filesystem, fsType: "swap", needTool: "mkswap", prepare: func(t *testing.T, dev string) {
			run(t, "mkswap", dev)
		}},
		{name: "LUKS header", sizeMiB: 64, kind: Filesystem, fsType: "crypto_LUKS", prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 0, []byte("LUKS\xba\xbe\x00\x02"))
		}},
		{name: "LVM physical volume label", sizeMiB: 64, kind: Filesystem, fsType: "LVM2_member", prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 512, []byte("LABELONE"))
			writeAt(t, dev, 512+24, []byte("LVM2 001"))
		}},
		{name: "vfat boot sector", sizeMiB: 64, kind: Filesystem, fsType: "vfat", prepare: func(t *testing.T, dev string) {
			b := make([]byte, 512)
			copy(b[0:], "\xeb\x58\x90mkfs.fat")
			copy(b[82:], "FAT32   ")
			b[510], b[511] = 0x55, 0xAA
			writeAt(t, dev, 0, b)
		}},
		{name: "ntfs boot sector", sizeMiB: 64, kind: Filesystem, fsType: "ntfs", prepare: func(t *testing.T, dev string) {
			b := make([]byte, 512)
			copy(b[0:], "\xeb\x52\x90NTFS    ")
			b[510], b[511] = 0x55, 0xAA
			writeAt(t, dev, 0, b)
		}},
		{name: "MBR partition table (sfdisk)", sizeMiB: 64, kind: PartitionTable, fsType: "dos", prepare: func(t *testing.T, dev string) {
			if !have("sfdisk") {
				mbr(t, dev)
				return
			}
			sfdisk(t, dev, "label: dos\n,,L\n")
		}},
		{name: "MBR partition table (bytes)", sizeMiB: 64, kind: PartitionTable, fsType: "dos", prepare: mbr},
		{name: "GPT partition table", sizeMiB: 64, kind: PartitionTable, fsType: "gpt", needTool: "sfdisk", prepare: func(t *testing.T, dev string) {
			sfdisk(t, dev, "label: gpt\n,,L\n")
		}},
		{name: "MBR signature without partitions", sizeMiB: 64, kind: Unknown, prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 510, []byte{0x55, 0xAA})
		}},
		{name: "random bytes at the start", sizeMiB: 64, kind: Unknown, prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 0, randomBytes(4096))
		}},
		{name: "random bytes only near the end", sizeMiB: 64, kind: Unknown, prepare: func(t *testing.T, dev string) {
			writeAt(t, dev, 64<<20-8192, randomBytes(512))
		}},
		{name: "random bytes only in the middle", sizeMiB: 64, kind: Unknown, prepare: func(t *testing.T, dev string) {
			// Inside one of the sampled windows (the 8th of 16 across the middle).
			span := int64(64<<20 - headSize - tailSize - sampleSize)
			off := (headSize + span*8/(sampleCount-1)) &^ 4095
			writeAt(t, dev, off+100, randomBytes(16))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needTool != "" && !have(tt.needTool) {
				t.Fatalf("%s is not installed", tt.needTool)
			}
			dev, _ := newLoop(t, tt.sizeMiB)
			tt.prepare(t, dev)
			got, err := ProbeDevice(dev)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tt.kind || got.Type != tt.fsType {
				t.Fatalf("probe = %v (%q), want %v (%q)", got.Kind, got.Type, tt.kind, tt.fsType)
			}
			if uuid := blkidValue(t, dev, "UUID"); got.Kind == Filesystem && uuid != "" && got.UUID != "" && got.UUID != uuid {
				t.Errorf("UUID = %s, blkid says %s", got.UUID, uuid)
			}
			// The format gate must agree: only blank passes.
			err = ensureBlank(context.Background(), "vol-test", dev)
			if (err == nil) != (tt.kind == Blank) {
				t.Fatalf("ensureBlank = %v for %v", err, got)
			}
			if tt.kind == Unknown && !strings.Contains(err.Error(), "vol-test ("+dev+") holds unrecognised data; refusing to format") {
				t.Errorf("refusal message = %q", err)
			}
		})
	}
}

func sfdisk(t *testing.T, dev, script string) {
	t.Helper()
	cmd := exec.Command("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", dev)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
}

// TestEnsureBlankSecondOpinion: when blkid finds something our probe does not,
// the device is not formatted.
func TestEnsureBlankSecondOpinion(t *testing.T) {
	dev, _ := newLoop(t, 16)
	bin := t.TempDir()
	fake := "#!/bin/sh\necho DEVNAME=$3\necho TYPE=zfs_member\necho USAGE=filesystem\nexit 0\n"
	if err := os.WriteFile(filepath.Join(bin, "blkid"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	err := ensureBlank(context.Background(), "vol-1", dev)
	if err == nil || !strings.Contains(err.Error(), "blkid finds TYPE=zfs_member") || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("ensureBlank = %v, want a refusal naming blkid's finding", err)
	}
}

// TestFormatRefusedWithoutBlkid: blkid -p is the required second opinion; when
// it is missing a blank device is not formatted, and the error says why.
func TestFormatRefusedWithoutBlkid(t *testing.T) {
	dev, _ := newLoop(t, 16)
	bin := t.TempDir() // a PATH with mkfs.ext4 but no blkid
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatal("mkfs.ext4 is needed for this test: ", err)
	}
	if err := os.Symlink(mkfs, filepath.Join(bin, "mkfs.ext4")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	_, err = formatExt4(context.Background(), "vol-1", "main", dev)
	if err == nil || !strings.Contains(err.Error(), "blkid is not installed") || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("format without blkid = %v, want a refusal naming the missing blkid", err)
	}
	t.Setenv("PATH", os.Getenv("PATH"))
	if c, err := ProbeDevice(dev); err != nil || c.Kind != Blank {
		t.Fatalf("device after the refusal: %+v %v, want still blank", c, err)
	}
}

// TestFormatExt4 formats a blank device and proves the result; a second format of
// the same device is refused.
func TestFormatExt4(t *testing.T) {
	dev, _ := newLoop(t, 32)
	c, err := formatExt4(context.Background(), "vol-1", "events", dev)
	if err != nil {
		t.Fatal(err)
	}
	if c.Type != "ext4" || c.UUID != blkidValue(t, dev, "UUID") || blkidValue(t, dev, "LABEL") != "etcd-events" {
		t.Fatalf("after format: %+v, blkid UUID %s LABEL %s", c, blkidValue(t, dev, "UUID"), blkidValue(t, dev, "LABEL"))
	}
	if _, err := formatExt4(context.Background(), "vol-1", "events", dev); err == nil || !strings.Contains(err.Error(), "holds data (ext4 filesystem); refusing to format") {
		t.Fatalf("second format = %v, want refusal", err)
	}
}
