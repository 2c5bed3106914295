package gossip

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// The managed block's markers (DESIGN.md); nothing outside them is ever changed.
const (
	HostsBegin = "# Begin host entries managed by nodeagent - do not edit"
	HostsEnd   = "# End host entries managed by nodeagent"
)

// hostsDebounce lets a burst of ring events (a rolling update, a partition
// healing) end in one write instead of one per event.
const hostsDebounce = 200 * time.Millisecond

// RenderHostsBlock returns existing with its managed block replaced by entries
// (name → IPs): one line per IP, "IP name1 name2", IPs in numeric order and names
// sorted, so the same ring always renders the same bytes. Without a block, one is
// appended. A Begin marker without an End runs to the end of the file: that is
// what an interrupted in-place write leaves behind. Bytes outside the block are
// kept exactly.
func RenderHostsBlock(existing []byte, entries map[string][]string) []byte {
	byIP := map[string][]string{}
	for name, ips := range entries {
		for _, ip := range ips {
			byIP[ip] = append(byIP[ip], name)
		}
	}
	ips := make([]string, 0, len(byIP))
	for ip := range byIP {
		ips = append(ips, ip)
	}
	ips = sortIPs(ips)

	var block bytes.Buffer
	block.WriteString(HostsBegin + "\n")
	for _, ip := range ips {
		names := normalizeNames(byIP[ip])
		block.WriteString(ip + " " + strings.Join(names, " ") + "\n")
	}
	block.WriteString(HostsEnd + "\n")

	start, end, found := findBlock(existing)
	if !found {
		out := append([]byte(nil), existing...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		return append(out, block.Bytes()...)
	}
	out := append([]byte(nil), existing[:start]...)
	out = append(out, block.Bytes()...)
	return append(out, existing[end:]...)
}

// findBlock returns the byte range of the managed block, markers and the End
// line's newline included.
func findBlock(b []byte) (start, end int, found bool) {
	off := 0
	start = -1
	for off < len(b) {
		nl := bytes.IndexByte(b[off:], '\n')
		lineEnd := len(b)
		next := len(b)
		if nl >= 0 {
			lineEnd = off + nl
			next = lineEnd + 1
		}
		line := strings.TrimRight(string(b[off:lineEnd]), " \t\r")
		switch {
		case start < 0 && line == HostsBegin:
			start = off
		case start >= 0 && line == HostsEnd:
			return start, next, true
		}
		off = next
	}
	if start >= 0 {
		return start, len(b), true
	}
	return 0, 0, false
}

// hostsLoop rewrites the hosts file whenever the ring changes, at most once per
// debounce window.
func (a *Agent) hostsLoop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.stop:
			return
		case <-a.hostsChanged:
		}
		timer := time.NewTimer(a.tune.dilate(hostsDebounce))
	drain:
		for {
			select {
			case <-a.stop:
				timer.Stop()
				return
			case <-a.hostsChanged:
			case <-timer.C:
				break drain
			}
		}
		wrote, err := writeHosts(a.cfg.HostsFile, a.Hosts())
		if wrote {
			a.hostsWrites.Add(1)
		}
		a.statusMu.Lock()
		a.hostsError = ""
		if err != nil {
			a.hostsError = err.Error()
		}
		a.statusMu.Unlock()
		if err != nil {
			a.log.Error("update hosts file", "path", a.cfg.HostsFile, "err", err)
		}
	}
}

// writeHosts renders the block into path and writes only when the bytes
// differ, keeping the file's mode. It reports whether it wrote.
func writeHosts(path string, entries map[string][]string) (bool, error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	perm := fs.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	data := RenderHostsBlock(old, entries)
	if old != nil && bytes.Equal(old, data) {
		return false, nil
	}
	err = fsutil.WriteFileAtomic(path, data, perm)
	if !errors.Is(err, syscall.EBUSY) {
		return err == nil, err
	}
	// Docker and Kubernetes bind-mount /etc/hosts into containers; renaming over
	// a mount point fails with EBUSY. The only way to change such a file is in
	// place, which a crash can leave half-written; RenderHostsBlock copes with a
	// block missing its End marker, and the next change rewrites it whole.
	return true, writeInPlace(path, data, perm)
}

func writeInPlace(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("write %s in place: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s in place: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s in place: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s in place: %w", path, err)
	}
	return nil
}
