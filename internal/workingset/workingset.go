// Package workingset keeps a long-lived process's resident set to the pages it
// really uses.
//
// A Go binary's code and read-only data are mapped from its file. Every page
// the process start touches (the runtime's and every package's init, the
// command's parsing) stays mapped until the process exits, and the kernel maps
// up to 16 neighbouring pages around each fault ("fault-around"), so a daemon
// idles with most of its binary resident although its idle loop runs a part
// of it. Trim drops the executable's read-only mappings once, after start-up,
// and asks the kernel to map them page by page from then on (MADV_RANDOM turns
// fault-around and read-ahead off for them): the resident set then holds what
// the process has touched since, and the pages it no longer maps are plain
// page cache that the kernel can reclaim first under memory pressure.
//
// Only clean, read-only, file-backed pages are dropped (MADV_DONTNEED on a
// private mapping that was never written): a later access maps the same bytes
// again from the page cache (a minor fault, no I/O while the file is cached).
// Writable mappings (the binary's data and bss) are never touched.
package workingset

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mapping is one read-only mapping of the executable.
type Mapping struct {
	Start, End uintptr
	Perms      string
}

// Size is the mapping's length in bytes.
func (m Mapping) Size() uintptr { return m.End - m.Start }

// Result tells what Trim did.
type Result struct {
	// Mappings are the read-only mappings of the executable that were trimmed.
	Mappings []Mapping
	// ResidentBefore and ResidentAfter are the process's file-backed resident
	// bytes (RssFile) around the trim.
	ResidentBefore, ResidentAfter int64
}

// Trim drops the executable's read-only mappings from the resident set and
// turns fault-around off for them (see the package comment).
func Trim() (Result, error) {
	var res Result
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return res, fmt.Errorf("read own mappings: %w", err)
	}
	var exe syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &exe); err != nil {
		return res, fmt.Errorf("stat own executable: %w", err)
	}
	ms, err := readOnlyMappingsOf(maps, uint64(exe.Dev), exe.Ino)
	if err != nil {
		return res, err
	}
	if len(ms) == 0 {
		return res, fmt.Errorf("no read-only mapping of the executable (device %d, inode %d) in /proc/self/maps", exe.Dev, exe.Ino)
	}
	if res.ResidentBefore, err = residentFile(); err != nil {
		return res, err
	}
	for _, m := range ms {
		if err := madvise(m, unix.MADV_RANDOM); err != nil {
			return res, fmt.Errorf("madvise(MADV_RANDOM) %x-%x: %w", m.Start, m.End, err)
		}
		if err := madvise(m, unix.MADV_DONTNEED); err != nil {
			return res, fmt.Errorf("madvise(MADV_DONTNEED) %x-%x: %w", m.Start, m.End, err)
		}
		res.Mappings = append(res.Mappings, m)
	}
	if res.ResidentAfter, err = residentFile(); err != nil {
		return res, err
	}
	return res, nil
}

// madvise gives the kernel advice on one of the process's own mappings, by
// its addresses from /proc/self/maps (no Go pointer is made of them).
func madvise(m Mapping, advice int) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, m.Start, m.Size(), uintptr(advice)); e != 0 {
		return e
	}
	return nil
}

// readOnlyMappingsOf returns, from a /proc/PID/maps table, the private
// mappings of the file (dev, ino) that can be neither written nor were made
// writable: code (r-xp) and read-only data (r--p).
func readOnlyMappingsOf(maps []byte, dev, ino uint64) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset major:minor inode [path]
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			return nil, fmt.Errorf("mappings: malformed line %q", sc.Text())
		}
		perms := f[1]
		if len(perms) != 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
			continue
		}
		i, err := strconv.ParseUint(f[4], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("mappings: inode in %q: %w", sc.Text(), err)
		}
		if i != ino {
			continue
		}
		ma, mi, ok := hexPair(f[3], ":", 32)
		if !ok {
			return nil, fmt.Errorf("mappings: device in %q", sc.Text())
		}
		if unix.Mkdev(uint32(ma), uint32(mi)) != dev {
			continue
		}
		start, end, ok := hexPair(f[0], "-", 64)
		if !ok || end <= start {
			return nil, fmt.Errorf("mappings: range in %q", sc.Text())
		}
		out = append(out, Mapping{Start: uintptr(start), End: uintptr(end), Perms: perms})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mappings: %w", err)
	}
	return out, nil
}

// hexPair reads "a<sep>b", two hexadecimal numbers of at most bits bits.
func hexPair(s, sep string, bits int) (a, b uint64, ok bool) {
	x, y, ok := strings.Cut(s, sep)
	if !ok {
		return 0, 0, false
	}
	a, err1 := strconv.ParseUint(x, 16, bits)
	b, err2 := strconv.ParseUint(y, 16, bits)
	return a, b, err1 == nil && err2 == nil
}

// residentFile is the process's file-backed resident bytes (RssFile in
// /proc/self/status).
func residentFile() (int64, error) {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read own status: %w", err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("own status: RssFile %q: %w", v, err)
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("own status: no RssFile line")
}
