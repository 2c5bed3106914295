package volumes

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Unmount unmounts an etcd volume's filesystem cleanly — its journal flushed,
// so that the next attach needs no recovery — once no other mount namespace
// (a container still stopping holds its own copy of the mount) uses it,
// retrying while it is busy until ctx ends. A target that is not a mount point
// is fine.
func Unmount(ctx context.Context, target string) error {
	dev, mounted, err := mountedDevice(target)
	if err != nil || !mounted {
		return err
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("unmount %s: own mount namespace: %w", target, err)
	}
	group, err := peerGroup("/proc/self/mountinfo", dev, target)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	for {
		users, err := otherUsers("/proc", dev, self, group)
		if err != nil {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		if len(users) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: still mounted by process(es) %s in other mount namespaces", target, strings.Join(users, ", "))
		case <-time.After(500 * time.Millisecond):
		}
	}
	unix.Sync()
	for {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: still busy: %w", target, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// mountedDevice is the device ("major:minor") mounted at target, if any.
func mountedDevice(target string) (string, bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("unmount %s: %w", target, err)
	}
	if err := unix.Stat(filepath.Dir(target), &parent); err != nil {
		return "", false, fmt.Errorf("unmount %s: %w", target, err)
	}
	if st.Dev == parent.Dev {
		return "", false, nil
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)), true, nil
}

// otherUsers lists one process per mount namespace other than self's that
// has a copy of dev's mount of its own: a mount that receives ours by
// propagation (optional field master:<group> or shared:<group> of our peer
// group) goes with ours and holds nothing.
func otherUsers(procDir, dev, self, group string) ([]string, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{self: true}
	var users []string
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		ns, err := os.Readlink(filepath.Join(procDir, pid, "ns", "mnt"))
		if err != nil || seen[ns] {
			continue // gone, or a namespace already looked at
		}
		seen[ns] = true
		if has, err := holdsDevice(filepath.Join(procDir, pid, "mountinfo"), dev, group); err == nil && has {
			comm, _ := os.ReadFile(filepath.Join(procDir, pid, "comm"))
			users = append(users, pid+" ("+strings.TrimSpace(string(comm))+")")
		}
	}
	slices.Sort(users)
	return users, nil
}

// holdsDevice says whether a mountinfo file lists a mount of dev (its third
// field is the device's major:minor) that is not a propagated copy of peer
// group (a "shared:N" or "master:N" optional field naming it).
func holdsDevice(path, dev, group string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != dev {
			continue
		}
		if group != "" && (slices.Contains(optional(fields), "shared:"+group) || slices.Contains(optional(fields), "master:"+group)) {
			continue
		}
		return true, nil
	}
	return false, sc.Err()
}

// peerGroup is the peer group ("N" of shared:N) of dev's mount at target in a
// mountinfo file; "" when that mount is not shared.
func peerGroup(path, dev, target string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[2] != dev || fields[4] != target {
			continue
		}
		for _, o := range optional(fields) {
			if g, ok := strings.CutPrefix(o, "shared:"); ok {
				return g, nil
			}
		}
		return "", nil
	}
	return "", sc.Err()
}

// optional are a mountinfo line's optional fields: after the sixth field, up
// to the "-" separator.
func optional(fields []string) []string {
	if len(fields) < 7 {
		return nil
	}
	rest := fields[6:]
	if i := slices.Index(rest, "-"); i >= 0 {
		return rest[:i]
	}
	return rest
}
