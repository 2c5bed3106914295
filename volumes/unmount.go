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
	for {
		users, err := otherUsers("/proc", dev, self)
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
// has a mount of dev.
func otherUsers(procDir, dev, self string) ([]string, error) {
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
		if has, err := mountsDevice(filepath.Join(procDir, pid, "mountinfo"), dev); err == nil && has {
			comm, _ := os.ReadFile(filepath.Join(procDir, pid, "comm"))
			users = append(users, pid+" ("+strings.TrimSpace(string(comm))+")")
		}
	}
	slices.Sort(users)
	return users, nil
}

// mountsDevice says whether a mountinfo file lists a mount of dev (its third
// field is the device's major:minor).
func mountsDevice(path, dev string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 2 && fields[2] == dev {
			return true, nil
		}
	}
	return false, sc.Err()
}
