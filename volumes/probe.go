package volumes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// ContentKind is what a probe found on a device.
type ContentKind int

const (
	// Blank: every probed byte is zero. Only a blank device is ever formatted.
	Blank ContentKind = iota
	// Filesystem: a known filesystem (or other on-disk format) signature.
	Filesystem
	// PartitionTable: an MBR with a partition or a GPT.
	PartitionTable
	// Unknown: data without a signature we recognise. Never formatted.
	Unknown
)

func (k ContentKind) String() string {
	switch k {
	case Blank:
		return "blank"
	case Filesystem:
		return "filesystem"
	case PartitionTable:
		return "partition table"
	default:
		return "unknown data"
	}
}

// Content is the result of probing a device.
type Content struct {
	Kind ContentKind
	// Type names the filesystem (ext4, xfs, btrfs, swap, crypto_LUKS, vfat, ntfs,
	// iso9660, LVM2_member, linux_raid_member) or the partition table (dos, gpt).
	Type string
	// UUID is the filesystem UUID when the format has one we read (ext*, xfs, btrfs).
	UUID string
	// Offset is where non-zero data was first seen, for Unknown.
	Offset int64
}

func (c Content) String() string {
	switch c.Kind {
	case Blank, Unknown:
		return c.Kind.String()
	default:
		return c.Type + " " + c.Kind.String()
	}
}

// Mountable reports whether the content is a filesystem etcd data can live on.
func (c Content) Mountable() bool {
	if c.Kind != Filesystem {
		return false
	}
	switch c.Type {
	case "ext2", "ext3", "ext4", "xfs", "btrfs":
		return true
	}
	return false
}

// Probe windows. The head window covers every signature we look for except the
// tail ones; the tail window catches backup GPTs and end-of-device metadata (md
// 0.90/1.0, LVM and DM leftovers); the samples in between make "blank" mean more
// than "the first megabyte is zero" without reading a whole volume.
const (
	headSize    = 1 << 20
	tailSize    = 1 << 20
	sampleSize  = 64 << 10
	sampleCount = 16
)

// ProbeDevice reads the device at path and says what is on it. It only reads.
func ProbeDevice(path string) (Content, error) {
	f, err := os.Open(path)
	if err != nil {
		return Content{}, fmt.Errorf("probe %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Content{}, fmt.Errorf("probe %s: size: %w", path, err)
	}
	c, err := probe(f, size)
	if err != nil {
		return Content{}, fmt.Errorf("probe %s: %w", path, err)
	}
	return c, nil
}

func probe(r io.ReaderAt, size int64) (Content, error) {
	head := make([]byte, min(size, headSize))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return Content{}, fmt.Errorf("read head: %w", err)
	}
	if c, ok := signature(head); ok {
		return c, nil
	}
	if off := firstNonZero(head); off >= 0 {
		return Content{Kind: Unknown, Offset: int64(off)}, nil
	}
	// The rest of the device: tail first (where metadata lives), then samples.
	var regions [][2]int64
	if size > headSize {
		start := max(size-tailSize, headSize)
		regions = append(regions, [2]int64{start, size - start})
	}
	if size > headSize+tailSize+sampleSize {
		span := size - headSize - tailSize - sampleSize
		for i := int64(0); i < sampleCount; i++ {
			off := headSize + span*i/(sampleCount-1)
			regions = append(regions, [2]int64{off &^ 4095, sampleSize})
		}
	}
	// The regions are read concurrently: on a fresh EBS volume (or a loop device)
	// each first read waits on the backend, and sequential reads add up.
	found := make([]int64, len(regions))
	errs := make([]error, len(regions))
	var wg sync.WaitGroup
	for i, rg := range regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			found[i] = -1
			b := make([]byte, rg[1])
			if _, err := r.ReadAt(b, rg[0]); err != nil && !errors.Is(err, io.EOF) {
				errs[i] = fmt.Errorf("read at %d: %w", rg[0], err)
				return
			}
			if off := firstNonZero(b); off >= 0 {
				found[i] = rg[0] + int64(off)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Content{}, err
	}
	for _, off := range found {
		if off >= 0 {
			return Content{Kind: Unknown, Offset: off}, nil
		}
	}
	return Content{Kind: Blank}, nil
}

func firstNonZero(b []byte) int {
	// Compare 4 KiB at a time against a zero page; far faster than a byte loop.
	var zero [4096]byte
	for i := 0; i < len(b); i += len(zero) {
		end := min(i+len(zero), len(b))
		if !bytes.Equal(b[i:end], zero[:end-i]) {
			for j := i; j < end; j++ {
				if b[j] != 0 {
					return j
				}
			}
		}
	}
	return -1
}

// signature looks for known on-disk formats in the head of a device. Order matters:
// formats that carry a boot sector (vfat, ntfs) come before the bare MBR test, and
// containers (LUKS, LVM, md) before the filesystems they might hold.
func signature(h []byte) (Content, bool) {
	at := func(off int, magic string) bool {
		return off >= 0 && off+len(magic) <= len(h) && string(h[off:off+len(magic)]) == magic
	}
	le16 := func(off int) uint16 {
		if off+2 > len(h) {
			return 0
		}
		return binary.LittleEndian.Uint16(h[off:])
	}
	le32 := func(off int) uint32 {
		if off+4 > len(h) {
			return 0
		}
		return binary.LittleEndian.Uint32(h[off:])
	}
	fs := func(t string) (Content, bool) { return Content{Kind: Filesystem, Type: t}, true }

	if at(0, "LUKS\xba\xbe") || at(0, "SKUL\xba\xbe") {
		return fs("crypto_LUKS")
	}
	// md superblock 1.1 at 0 and 1.2 at 4 KiB (0.90 and 1.0 live at the end and are
	// caught as unknown data by the tail read).
	if le32(0) == 0xa92b4efc || le32(4096) == 0xa92b4efc {
		return fs("linux_raid_member")
	}
	for _, off := range []int{0, 512, 1024, 1536} {
		if at(off, "LABELONE") && at(off+24, "LVM2 001") {
			return fs("LVM2_member")
		}
	}
	if at(0, "XFSB") {
		c := Content{Kind: Filesystem, Type: "xfs"}
		if len(h) >= 48 {
			c.UUID = formatUUID(h[32:48])
		}
		return c, true
	}
	if le16(1024+56) == 0xEF53 {
		c := Content{Kind: Filesystem, Type: extType(h[1024:]), UUID: formatUUID(h[1024+104 : 1024+120])}
		return c, true
	}
	if at(65536+64, "_BHRfS_M") {
		return Content{Kind: Filesystem, Type: "btrfs", UUID: formatUUID(h[65536+32 : 65536+48])}, true
	}
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if at(page-10, "SWAPSPACE2") || at(page-10, "SWAP-SPACE") {
			return fs("swap")
		}
	}
	if at(32769, "CD001") {
		return fs("iso9660")
	}
	if at(512, "EFI PART") || at(4096, "EFI PART") {
		return Content{Kind: PartitionTable, Type: "gpt"}, true
	}
	bootSig := le16(510) == 0xAA55
	if bootSig && at(3, "NTFS    ") {
		return fs("ntfs")
	}
	if bootSig && (at(54, "FAT12   ") || at(54, "FAT16   ") || at(82, "FAT32   ") || at(3, "EXFAT   ")) {
		if at(3, "EXFAT   ") {
			return fs("exfat")
		}
		return fs("vfat")
	}
	if bootSig && mbrHasPartition(h) {
		return Content{Kind: PartitionTable, Type: "dos"}, true
	}
	return Content{}, false
}

// mbrHasPartition reports whether any of the four MBR entries describes a partition.
func mbrHasPartition(h []byte) bool {
	if len(h) < 512 {
		return false
	}
	for i := 0; i < 4; i++ {
		e := h[446+16*i : 446+16*(i+1)]
		typ := e[4]
		sectors := binary.LittleEndian.Uint32(e[12:])
		if typ != 0 && sectors != 0 {
			return true
		}
	}
	return false
}

// extType tells ext2, ext3 and ext4 apart by feature flags, as blkid does.
func extType(sb []byte) string {
	if len(sb) < 0x68 {
		return "ext4"
	}
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	const (
		compatJournal = 0x4
		// Features ext3 does not know: extents, 64bit, flex_bg, mmp, meta_bg, csum_seed, ...
		incompatExt4 = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000
		roCompatExt4 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400
	)
	switch {
	case incompat&incompatExt4 != 0 || roCompat&roCompatExt4 != 0:
		return "ext4"
	case compat&compatJournal != 0:
		return "ext3"
	default:
		return "ext2"
	}
}

func formatUUID(b []byte) string {
	if len(b) != 16 {
		return ""
	}
	if firstNonZero(b) < 0 {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
