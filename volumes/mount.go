package volumes

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/procfs"
)

// mountPointFor is the kops-compatible host path of a volume's mount.
func mountPointFor(volumeID string) string { return "/mnt/master-" + volumeID }

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	Major, Minor uint32
	MountPoint   string
	FSType       string
	Source       string
}

// readMountInfo parses /proc/self/mountinfo (see proc(5)).
func readMountInfo() ([]mountInfo, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return parseMountInfo(b)
}

func parseMountInfo(b []byte) ([]mountInfo, error) {
	var out []mountInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("mountinfo line %d is malformed: %q", n, sc.Text())
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad device %q", n, f[2])
		}
		out = append(out, mountInfo{
			Major: uint32(ma), Minor: uint32(mi),
			MountPoint: procfs.Unescape(f[4]),
			FSType:     f[sep+1],
			Source:     procfs.Unescape(f[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// mountState is how the mount point and the device stand.
type mountState int

const (
	notMounted mountState = iota
	mountedCorrectly
)

// checkMount says whether dev is mounted at target (the resolved path) and
// nowhere else, reading only. A mount point holding another filesystem, or the
// device mounted somewhere else, is an error: something we did not expect owns
// it, and it is not ours to undo.
func checkMount(dev, target string) (mountState, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dev, err)
	}
	major, minor := unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
	mounts, err := readMountInfo()
	if err != nil {
		return 0, err
	}
	isDev := func(m mountInfo) bool {
		if m.Major == major && m.Minor == minor {
			return true
		}
		// btrfs reports an anonymous device number; its source still names the device.
		if m.Source != "" && strings.HasPrefix(m.Source, "/") {
			if r, err := filepath.EvalSymlinks(m.Source); err == nil && r == dev {
				return true
			}
		}
		return false
	}
	var at *mountInfo
	for i := range mounts {
		if mounts[i].MountPoint == target {
			at = &mounts[i] // the last mount on a path is the visible one
		}
	}
	for _, m := range mounts {
		if isDev(m) && m.MountPoint != target {
			return 0, fmt.Errorf("%s is already mounted at %s; not touching it", dev, m.MountPoint)
		}
	}
	if at == nil {
		return notMounted, nil
	}
	if !isDev(*at) {
		return 0, fmt.Errorf("%s already has %s (%s, %d:%d) mounted on it, not %s; not touching it",
			target, at.Source, at.FSType, at.Major, at.Minor, dev)
	}
	return mountedCorrectly, nil
}

// mountDevice mounts dev at target with noatime, creating target 0700 and making
// the (empty, underlying) directory immutable first. If the volume is ever not
// mounted there (after a reboot the device did not come back, say), etcd cannot
// create a fresh data dir on the root disk and start a new, empty member: it fails
// loudly instead. warn receives the reason when the filesystem under the mount
// point cannot hold that flag; the mount goes ahead.
func mountDevice(dev, target, fstype string, warn func(string)) error {
	if err := os.MkdirAll(target, 0o700); err != nil {
		return fmt.Errorf("create mount point %s: %w", target, err)
	}
	// An immutable directory cannot be chmod-ed: it was set up by an earlier run.
	immutable, attrErr := isImmutable(target)
	if !immutable {
		if err := os.Chmod(target, 0o700); err != nil {
			return fmt.Errorf("create mount point %s: %w", target, err)
		}
		if attrErr == nil {
			attrErr = setImmutable(target, true)
		}
		if attrErr != nil {
			warn(fmt.Sprintf("mount point %s is not guarded against writes while unmounted (cannot make it immutable: %v)", target, attrErr))
		}
	}
	if err := unix.Mount(dev, target, fstype, unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount %s (%s) at %s: %w", dev, fstype, target, err)
	}
	return nil
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (chattr +i).
const fsImmutableFL = 0x00000010

func isImmutable(dir string) (bool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false, err
	}
	return flags&fsImmutableFL != 0, nil
}

// setImmutable sets or clears the directory's immutable attribute (chattr +i/-i).
func setImmutable(dir string, on bool) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	if on {
		flags |= fsImmutableFL
	} else {
		flags &^= fsImmutableFL
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags))
}

// The mount is persisted as an /etc/fstab line rather than a systemd .mount unit:
// systemd's fstab generator turns it into the same unit at boot, while the line is
// also what mount(8), `mount -a` and an operator reading the host expect. The
// filesystem is named by UUID= because NVMe device names are not stable across
// reboots, and nofail keeps a boot from hanging when the volume is not attached
// (a replaced instance, a detached volume): the agent then reports the problem.
func fstabLine(uuid, mountPoint, fstype string) string {
	pass := "0"
	if strings.HasPrefix(fstype, "ext") {
		pass = "2"
	}
	return fmt.Sprintf("UUID=%s %s %s defaults,noatime,nofail 0 %s", uuid, mountPoint, fstype, pass)
}

// fstabEdit returns the fstab content with exactly one line for mountPoint equal
// to line; every other line, comment and blank line is kept byte for byte.
func fstabEdit(old []byte, mountPoint, line, comment string) []byte {
	lines := strings.SplitAfter(string(old), "\n")
	var out strings.Builder
	done := false
	for _, l := range lines {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && procfs.Unescape(f[1]) == mountPoint {
			if !done {
				out.WriteString(line + "\n")
				done = true
			}
			continue // a duplicate line for our mount point would be mounted twice
		}
		out.WriteString(l)
	}
	if !done {
		s := out.String()
		if s != "" && !strings.HasSuffix(s, "\n") {
			out.WriteString("\n")
		}
		out.WriteString("# " + comment + "\n" + line + "\n")
	}
	return []byte(out.String())
}

// fstabState reads <root>/etc/fstab; missing is empty.
func readFstab(root fsutil.Root) ([]byte, fs.FileMode, error) {
	p := root.Path("/etc/fstab")
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0o644, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", p, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", p, err)
	}
	return b, fi.Mode().Perm(), nil
}
