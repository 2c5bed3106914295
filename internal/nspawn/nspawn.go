// Package nspawn boots a throwaway Debian machine with systemd as PID 1 inside
// systemd-nspawn, so end-to-end tests and the demo can run the agent against a
// real systemd, D-Bus, containerd and kubelet without a VM.
//
// Every machine runs on a private writable copy of a cached, read-only rootfs
// (built by hack/rootfs.sh): an overlay mount when the kernel allows it, a full
// copy otherwise. Close undoes everything Boot did, also after partial failures.
package nspawn

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultRootfs is where hack/rootfs.sh caches the base image.
const DefaultRootfs = "/var/cache/nodeagent-e2e/rootfs"

// StampFile marks a rootfs as completely built; hack/rootfs.sh writes it last.
const StampFile = ".nodeagent-rootfs-complete"

// Options describe one machine.
type Options struct {
	// Name is the machine's name and host name; it must be a valid host name.
	// Empty means a generated one.
	Name string
	// Rootfs is the cached, read-only base image. Empty means DefaultRootfs.
	// It is never written to.
	Rootfs string
	// Binds are extra bind mounts "host:container" (or "host" for the same path);
	// a ":ro" suffix makes one read-only, as with systemd-nspawn --bind-ro.
	Binds []string
	// Env (KEY=VALUE) is set in the environment of PID 1 inside (nspawn's
	// --setenv) and, through DefaultEnvironment= in
	// /etc/systemd/system.conf.d, of every service systemd starts, e.g. the
	// AWS endpoint settings for nodeagent.service. Exec does not inherit it.
	Env []string
	// ExtraArgs are appended to the systemd-nspawn options (see Args).
	ExtraArgs []string
	// NetworkNamespace is a named network namespace (ip netns) the machine runs
	// in, as an instance on its own network; its /proc/sys/net is then
	// writable inside. Empty shares the host's network.
	NetworkNamespace string
	// Sysctls are values the machine sees instead of the host's for these
	// sysctls (dotted names). /proc/sys is the host kernel's and read-only
	// inside; a read-only file with the value is bound over the entry, so a
	// program that checks a value finds it and the host is never changed.
	// KubeletSysctls are always included.
	Sysctls map[string]string
	// Log receives the console output of the machine (systemd-nspawn's stdout and
	// stderr). Nil discards it.
	Log io.Writer
	// BootTimeout bounds the wait for systemd inside to finish booting.
	// Zero means 2 minutes.
	BootTimeout time.Duration
	// Started, when set, is called with the machine as soon as its init runs,
	// before Boot waits for systemd to finish booting: an image whose boot units
	// need the test's part meanwhile (an attached volume shown in its /dev) gets
	// it while they run, and its boot may end only with them.
	Started func(*Machine)
	// NoContainerdState leaves /var/lib/containerd on the machine's own overlay
	// root instead of binding a host directory there. Containerd's overlayfs
	// snapshotter cannot use a directory that is itself on overlayfs, so only set
	// this when containerd is not used.
	NoContainerdState bool
}

// Machine is a booted container. Its fields are read-only for callers.
type Machine struct {
	// Name is the machine and host name.
	Name string
	// Dir is the machine's root directory as seen from the host.
	Dir string
	// Leader is the host PID of the container's PID 1 (systemd).
	Leader int
	// Overlay reports whether Dir is an overlay mount (false: a full copy).
	Overlay bool
	// BootDuration is how long Boot took, from preparing the root to systemd
	// reporting running or degraded.
	BootDuration time.Duration

	tmp     string        // everything Boot created on the host lives under here
	done    chan struct{} // closed when the machine is gone for good
	waitErr error         // systemd-nspawn's last exit status, valid after done
	console tail          // the end of the console output, for errors

	mu       sync.Mutex
	started  bool // systemd-nspawn was started at least once
	nspawn   *os.Process
	stopping bool // Close runs: a reboot request now ends the machine
	// whileOff, set by PowerCycle, runs once systemd-nspawn has exited and
	// before it is started again on the same files.
	whileOff func() error
	cycling  bool

	closeOnce sync.Once
	closeErr  error
}

// ErrUnavailable wraps every reason Available gives.
var ErrUnavailable = errors.New("nspawn machines unavailable")

// RequireRoot reports an error unless the process runs as root, which
// systemd-nspawn, overlay mounts and nsenter need.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: must run as root (euid %d)", ErrUnavailable, os.Geteuid())
	}
	return nil
}

// Available reports whether Boot can work here with the given rootfs (empty
// means DefaultRootfs), and if not, what is missing and how to get it, so tests
// can skip or fail with a useful message.
func Available(rootfs string) error {
	if rootfs == "" {
		rootfs = DefaultRootfs
	}
	if err := RequireRoot(); err != nil {
		return err
	}
	var missing []string
	for _, bin := range []string{"systemd-nspawn", "nsenter", "mount", "umount"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s not in PATH (apt-get install systemd-container util-linux)", bin))
		}
	}
	if _, err := os.Stat(filepath.Join(rootfs, StampFile)); err != nil {
		missing = append(missing, fmt.Sprintf("rootfs %s is not built (run hack/rootfs.sh %s)", rootfs, rootfs))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

// BusAddress is a D-Bus address for the machine's system bus, reachable from
// the host through the leader's root.
func (m *Machine) BusAddress() string {
	return "unix:path=" + m.BusSocket()
}

// BusSocket is the host path of the machine's system bus socket.
func (m *Machine) BusSocket() string {
	return filepath.Join("/proc", strconv.Itoa(m.Leader), "root", "run/dbus/system_bus_socket")
}

// Path maps a path inside the machine to the host path of the same file.
func (m *Machine) Path(containerPath string) string {
	return filepath.Join(m.Dir, filepath.Clean("/"+containerPath))
}
