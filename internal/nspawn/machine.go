package nspawn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/internal/procfs"
)

// systemd inside interprets these real-time signals (glibc's SIGRTMIN is 34,
// the kernel's two lowest real-time signals being reserved by glibc).
const (
	sigPoweroff = syscall.Signal(34 + 4)
	sigReboot   = syscall.Signal(34 + 5)
)

// initPath is where Boot writes the wrapper that runs as the container's PID 1.
const initPath = "/usr/lib/nodeagent-nspawn/init"

// initScript runs as PID 1 and execs systemd, keeping PID 1. On a cgroup v1
// (or hybrid) host systemd-nspawn mounts every controller hierarchy read-only
// and only name=systemd writable; runc and kubelet (cgroupDriver: systemd)
// must create cgroups under cpu, memory, pids, ... so they are made writable
// before systemd starts, which lets systemd realize its slices there too. The
// remount is per mount point (bind), so the host's mounts are not touched. On
// a unified host the same loop finds one cgroup2 mount and is harmless.
const initScript = `#!/bin/sh
# Written by nodeagent's internal/nspawn; see its README.md.
mounts=/sys/fs/cgroup/*
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
	mounts=/sys/fs/cgroup
fi
for m in $mounts; do
	if mountpoint -q "$m"; then
		mount -o remount,bind,rw "$m" || echo "nspawn-init: cannot make $m writable" >&2
	fi
done
# A machine on a network namespace of its own owns that namespace's sysctls
# (/proc/sys/net): make them writable, as on an instance (CNI's bridge plugin
# and kube-proxy write them). The host's are not reachable from here.
if [ -e /usr/lib/nodeagent-nspawn/own-netns ]; then
	{ mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net; } ||
		echo "nspawn-init: cannot make /proc/sys/net writable" >&2
fi
# /proc/sys is the host kernel's and read-only here: show the values in
# sysctl/ instead (file name = dotted sysctl name), read-only as well.
for f in /usr/lib/nodeagent-nspawn/sysctl/*; do
	[ -f "$f" ] || continue
	target=/proc/sys/$(basename "$f" | tr . /)
	if [ -e "$target" ]; then
		mount --bind -o ro "$f" "$target" || echo "nspawn-init: cannot shadow $target" >&2
	fi
done
# Every instance has /lib/modules (its kernel's modules); this rootfs has no
# kernel, and kube-proxy's static pod mounts the directory (hostPath type
# Directory). An empty one stands in: the modules are the host kernel's.
mkdir -p /lib/modules
exec /lib/systemd/systemd "$@"
`

// containerPath is the PATH used for commands run by Exec.
const containerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Args returns the systemd-nspawn command line Boot runs for o on a machine
// directory dir whose containerd state lives at stateDir on the host (empty:
// none). It is exported so the README's flags and the code cannot drift apart,
// and so the demo can print what it runs.
func Args(o Options, dir, stateDir string) []string {
	args := []string{
		"--quiet",
		"--directory=" + dir,
		"--machine=" + o.Name,
		// No systemd on the host (or one we must not touch): no registration
		// with machined and no scope unit of our own.
		"--register=no",
		"--keep-unit",
		// The host's journal does not want the machine's.
		"--link-journal=no",
		// A pseudo TTY whose output is copied to Options.Log; nothing is read.
		"--console=read-only",
		// PID 1 is the wrapper, not found by -b; tell nspawn it is systemd so a
		// SIGTERM to nspawn becomes an orderly halt inside.
		"--kill-signal=SIGRTMIN+3",
		// kubelet needs CAP_SYSLOG to open /dev/kmsg (it exits without it),
		// iptables and the agent CAP_NET_ADMIN; nspawn drops those by default
		// (CAP_NET_ADMIN whenever the host network is shared).
		"--capability=all",
		// kubelet's OOM watcher reads the kernel log; nspawn gives no /dev/kmsg.
		"--bind=/dev/kmsg",
		// runc gives every container a session keyring of its own; nspawn's
		// seccomp filter refuses the keyring calls (keyrings are not namespaced),
		// so no pod could start inside without them.
		"--system-call-filter=add_key keyctl request_key",
	}
	if stateDir != "" {
		// The kernel refuses overlay upper dirs on overlayfs, so containerd's
		// overlayfs snapshotter cannot live on the machine's overlay root.
		args = append(args, "--bind="+stateDir+":/var/lib/containerd")
	}
	for _, b := range o.Binds {
		if rest, ok := strings.CutSuffix(b, ":ro"); ok {
			args = append(args, "--bind-ro="+rest)
		} else {
			args = append(args, "--bind="+b)
		}
	}
	for _, e := range o.Env {
		args = append(args, "--setenv="+e)
	}
	if o.NetworkNamespace != "" {
		args = append(args, "--network-namespace-path=/run/netns/"+o.NetworkNamespace)
	}
	args = append(args, o.ExtraArgs...)
	return append(args, initPath)
}

// Boot makes a private writable copy of o.Rootfs, boots systemd in it with
// systemd-nspawn and returns once systemd inside reports running or degraded.
// On error everything already set up is torn down again.
func Boot(ctx context.Context, o Options) (*Machine, error) {
	if o.Rootfs == "" {
		o.Rootfs = DefaultRootfs
	}
	if o.Name == "" {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("machine name: %w", err)
		}
		o.Name = "nodeagent-" + hex.EncodeToString(b[:])
	}
	if !nameRE.MatchString(o.Name) {
		return nil, fmt.Errorf("machine name %q: want lower-case letters, digits and dashes, at most 63", o.Name)
	}
	if strings.ContainsAny(o.Rootfs, ",:") {
		return nil, fmt.Errorf("rootfs %q: ',' and ':' cannot be passed to an overlay mount", o.Rootfs)
	}
	for _, e := range o.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("env %q: want KEY=VALUE", e)
		}
	}
	for k := range o.Sysctls {
		if !sysctlRE.MatchString(k) {
			return nil, fmt.Errorf("sysctl %q: want a dotted name like net.ipv4.ip_forward", k)
		}
	}
	if err := Available(o.Rootfs); err != nil {
		return nil, err
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 2 * time.Minute
	}

	tmp, err := os.MkdirTemp("", "nspawn-"+o.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("machine %s: temp dir: %w", o.Name, err)
	}
	m := &Machine{Name: o.Name, Dir: filepath.Join(tmp, "root"), tmp: tmp, done: make(chan struct{})}
	if err := m.boot(ctx, o); err != nil {
		if cerr := m.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after failed boot: %w", cerr))
		}
		return nil, err
	}
	return m, nil
}

func (m *Machine) boot(ctx context.Context, o Options) error {
	begin := time.Now()
	if err := m.prepareRoot(ctx, o.Rootfs); err != nil {
		return err
	}
	if err := os.MkdirAll(m.Path(filepath.Dir(initPath)), 0o755); err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	if err := os.WriteFile(m.Path(initPath), []byte(initScript), 0o755); err != nil {
		return fmt.Errorf("machine %s: write init wrapper: %w", m.Name, err)
	}
	if o.NetworkNamespace != "" {
		if err := os.WriteFile(m.Path("/usr/lib/nodeagent-nspawn/own-netns"), []byte(o.NetworkNamespace+"\n"), 0o644); err != nil {
			return fmt.Errorf("machine %s: %w", m.Name, err)
		}
	}
	if err := m.writeSysctls(o.Sysctls); err != nil {
		return err
	}
	if err := writeDefaultEnvironment(m, o.Env); err != nil {
		return err
	}
	// systemd inside takes the host name from here; the machine name keeps two
	// machines' kubelets apart as node names.
	if err := os.WriteFile(m.Path("/etc/hostname"), []byte(m.Name+"\n"), 0o644); err != nil {
		return fmt.Errorf("machine %s: write /etc/hostname: %w", m.Name, err)
	}
	stateDir := ""
	if !o.NoContainerdState {
		stateDir = filepath.Join(m.tmp, "containerd")
		if err := os.Mkdir(stateDir, 0o711); err != nil {
			return fmt.Errorf("machine %s: containerd state dir: %w", m.Name, err)
		}
	}

	bin, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	var out io.Writer = &m.console
	if o.Log != nil {
		out = io.MultiWriter(o.Log, &m.console)
	}
	args := Args(o, m.Dir, stateDir)
	start := func() (*exec.Cmd, error) {
		// Not CommandContext: the machine outlives the Boot call's context.
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = out, out
		// Own process group: a ^C meant for the test must not reach nspawn
		// before Close runs. If the test process dies, nspawn halts the machine.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("machine %s: start systemd-nspawn: %w", m.Name, err)
		}
		m.mu.Lock()
		m.nspawn, m.started = cmd.Process, true
		m.mu.Unlock()
		return cmd, nil
	}
	cmd, err := start()
	if err != nil {
		return err
	}
	go m.supervise(cmd, start)

	bootCtx, cancel := context.WithTimeout(ctx, o.BootTimeout)
	defer cancel()
	leader, err := m.findLeader(bootCtx, 0)
	if err != nil {
		return err
	}
	m.Leader = leader
	if o.Started != nil {
		o.Started(m)
	}
	if err := m.waitRunning(bootCtx); err != nil {
		return err
	}
	m.BootDuration = time.Since(begin)
	return nil
}

// exitReboot is systemd-nspawn's exit status when the machine asked for a
// reboot; like systemd-nspawn@.service (RestartForceExitStatus=133), the
// supervisor then starts it again on the same files.
const exitReboot = 133

func (m *Machine) supervise(cmd *exec.Cmd, start func() (*exec.Cmd, error)) {
	for {
		err := cmd.Wait()
		var exit *exec.ExitError
		m.mu.Lock()
		again := errors.As(err, &exit) && exit.ExitCode() == exitReboot && !m.stopping
		cycle, whileOff := m.cycling && !m.stopping, m.whileOff
		m.cycling, m.whileOff = false, nil
		m.mu.Unlock()
		if cycle {
			again = true
			if whileOff != nil {
				if herr := whileOff(); herr != nil {
					m.waitErr = fmt.Errorf("while powered off: %w", herr)
					close(m.done)
					return
				}
			}
		}
		if again {
			next, serr := start()
			if serr == nil {
				cmd = next
				continue
			}
			err = serr
		}
		m.waitErr = err
		close(m.done)
		return
	}
}

// writeDefaultEnvironment makes systemd inside hand env to every service it
// starts: PID 1's own environment (nspawn --setenv) stays with PID 1.
func writeDefaultEnvironment(m *Machine, env []string) error {
	if len(env) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("# Written by nodeagent's internal/nspawn from Options.Env.\n[Manager]\n")
	for _, e := range env {
		b.WriteString("DefaultEnvironment=" + systemdQuote(e) + "\n")
	}
	dir := m.Path("/etc/systemd/system.conf.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "50-nodeagent-nspawn-env.conf"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("machine %s: write DefaultEnvironment: %w", m.Name, err)
	}
	return nil
}

// systemdQuote quotes one assignment for a systemd list setting: double
// quotes, with backslashes, quotes and specifiers escaped.
func systemdQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// writeSysctls writes the files the init wrapper binds over /proc/sys.
func (m *Machine) writeSysctls(extra map[string]string) error {
	dir := m.Path(filepath.Join(filepath.Dir(initPath), "sysctl"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	all := KubeletSysctls()
	for k, v := range extra {
		all[k] = v
	}
	for k, v := range all {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o444); err != nil {
			return fmt.Errorf("machine %s: sysctl %s: %w", m.Name, k, err)
		}
	}
	return nil
}

var sysctlRE = regexp.MustCompile(`^[a-z0-9_-]+(\.[a-z0-9_-]+)+$`)

// mountOverlay is a variable so that a test can take the copy path.
var mountOverlay = func(dir, opts string) error { return unix.Mount("overlay", dir, "overlay", 0, opts) }

// prepareRoot mounts an overlay with the read-only rootfs as lower layer at
// m.Dir, or copies the rootfs there when overlayfs is not possible (e.g. the
// temp dir is itself on overlayfs).
func (m *Machine) prepareRoot(ctx context.Context, rootfs string) error {
	upper, work := filepath.Join(m.tmp, "upper"), filepath.Join(m.tmp, "work")
	for _, d := range []string{upper, work, m.Dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("machine %s: %w", m.Name, err)
		}
	}
	opts := "lowerdir=" + rootfs + ",upperdir=" + upper + ",workdir=" + work
	err := mountOverlay(m.Dir, opts)
	if err == nil {
		m.Overlay = true
		return nil
	}
	cp := exec.CommandContext(ctx, "cp", "-a", "--", rootfs+"/.", m.Dir)
	if out, cerr := cp.CombinedOutput(); cerr != nil {
		return fmt.Errorf("machine %s: overlay mount failed (%v), copying %s failed too: %w: %s",
			m.Name, err, rootfs, cerr, bytes.TrimSpace(out))
	}
	return nil
}

// findLeader waits for nspawn's child that lives in a new PID namespace: the
// container's PID 1. not is a PID to skip (the previous leader, on reboot).
func (m *Machine) findLeader(ctx context.Context, not int) (int, error) {
	self, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return 0, fmt.Errorf("read own pid namespace: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		m.mu.Lock()
		parent := m.nspawn.Pid
		m.mu.Unlock()
		children := fmt.Sprintf("/proc/%d/task/%d/children", parent, parent)
		if b, err := os.ReadFile(children); err == nil {
			for _, f := range strings.Fields(string(b)) {
				pid, err := strconv.Atoi(f)
				if err != nil || pid == not {
					continue
				}
				ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
				if err == nil && ns != self {
					return pid, nil
				}
			}
		}
		select {
		case <-m.done:
			return 0, m.exitedError("before its init started")
		case <-ctx.Done():
			return 0, fmt.Errorf("machine %s: no init process: %w\n%s", m.Name, ctx.Err(), m.console.String())
		case <-tick.C:
		}
	}
}

// errStopping: systemd is shutting down (which may be a reboot).
var errStopping = errors.New("systemd is stopping")

// waitRunning polls systemd inside until it has finished booting.
func (m *Machine) waitRunning(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		// is-system-running exits non-zero for every state but "running", so
		// only its output counts.
		if !alive(m.Leader) {
			return fmt.Errorf("machine %s: init %d exited", m.Name, m.Leader)
		}
		out, _, _ := m.Exec(ctx, nil, "systemctl", "is-system-running")
		last = string(bytes.TrimSpace(out))
		switch last {
		case "running", "degraded":
			return nil
		case "stopping":
			return fmt.Errorf("machine %s: %w", m.Name, errStopping)
		case "maintenance":
			return fmt.Errorf("machine %s: systemd is in maintenance mode\n%s", m.Name, m.console.String())
		}
		select {
		case <-m.done:
			return m.exitedError("while booting")
		case <-ctx.Done():
			return fmt.Errorf("machine %s: systemd still %q: %w\n%s", m.Name, last, ctx.Err(), m.console.String())
		case <-tick.C:
		}
	}
}

func (m *Machine) exitedError(when string) error {
	return fmt.Errorf("machine %s: systemd-nspawn exited %s: %v\n%s", m.Name, when, m.waitErr, m.console.String())
}

// Exited is closed when systemd-nspawn has exited (the machine is gone).
func (m *Machine) Exited() <-chan struct{} { return m.done }

// Command returns a command that runs argv inside the machine, in all of its
// namespaces and with its root, with a clean environment (PATH, HOME) plus
// env. The process stays in the host's cgroup; for anything long-running use
// systemd-run inside, so systemd owns it. Cancelling ctx kills nsenter; the
// command it forked into the machine's PID namespace may live on until the
// machine stops (util-linux 2.38's nsenter has no --kill-child).
func (m *Machine) Command(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	args := []string{"--target=" + strconv.Itoa(m.Leader),
		"--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--"}
	cmd := exec.CommandContext(ctx, "nsenter", append(args, argv...)...)
	cmd.Env = append([]string{"PATH=" + containerPath, "HOME=/root", "LANG=C.UTF-8"}, env...)
	return cmd
}

// Exec runs argv inside the machine (see Command) and returns its output.
// A non-zero exit is an error that quotes the end of stderr.
func (m *Machine) Exec(ctx context.Context, env []string, argv ...string) (stdout, stderr []byte, err error) {
	if len(argv) == 0 {
		return nil, nil, errors.New("exec: empty command")
	}
	var o, e bytes.Buffer
	cmd := m.Command(ctx, env, argv...)
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.Bytes(), e.Bytes(), fmt.Errorf("machine %s: %s: %w: %s", m.Name, strings.Join(argv, " "), err, lastLines(e.Bytes(), 5))
	}
	return o.Bytes(), e.Bytes(), nil
}

// writeScript writes stdin to $1 with mode $2, atomically, resolving the path
// inside the machine (its symlinks, its bind mounts).
const writeScript = `set -e
d=$(dirname "$1")
mkdir -p "$d"
t="$1.nspawn-tmp.$$"
trap 'rm -f "$t"' EXIT
cat >"$t"
chmod "$2" "$t"
mv -f "$t" "$1"
trap - EXIT`

// WriteFile writes data to path inside the machine, atomically, creating
// parent directories.
func (m *Machine) WriteFile(ctx context.Context, path string, data io.Reader, mode os.FileMode) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("machine %s: write %q: path must be absolute", m.Name, path)
	}
	cmd := m.Command(ctx, nil, "sh", "-c", writeScript, "sh", path, strconv.FormatUint(uint64(mode.Perm()), 8))
	cmd.Stdin = data
	var e bytes.Buffer
	cmd.Stderr = &e
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("machine %s: write %s: %w: %s", m.Name, path, err, lastLines(e.Bytes(), 5))
	}
	return nil
}

// CopyIn copies the host file hostPath to containerPath inside the machine
// with the given mode (see WriteFile).
func (m *Machine) CopyIn(ctx context.Context, hostPath, containerPath string, mode os.FileMode) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return fmt.Errorf("machine %s: copy in: %w", m.Name, err)
	}
	defer f.Close()
	return m.WriteFile(ctx, containerPath, bufio.NewReaderSize(f, 1<<20), mode)
}

// Poweroff shuts the machine down in an orderly way and waits until
// systemd-nspawn has exited. The machine's files stay until Close.
func (m *Machine) Poweroff(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	default:
	}
	if err := m.signal(sigPoweroff); err != nil {
		return fmt.Errorf("machine %s: poweroff: %w", m.Name, err)
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("machine %s: poweroff: %w", m.Name, ctx.Err())
	}
}

// Kill stops the machine hard, as a power loss or a terminated instance: PID 1
// and everything in its PID namespace get SIGKILL, nothing is shut down in order.
// It waits until the machine is gone; Close then removes what Boot made.
func (m *Machine) Kill(ctx context.Context) error {
	if err := m.signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("machine %s: kill: %w", m.Name, err)
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("machine %s: kill: %w", m.Name, ctx.Err())
	}
}

// PowerCycle cuts the machine's power and turns it on again on the same files:
// PID 1 and everything in its PID namespace get SIGKILL (no shutdown, no unit
// stops, the machine's mounts go with its mount namespace), whileOff (if not
// nil) runs once systemd-nspawn has exited, then the machine boots again and
// PowerCycle waits until systemd is running; Leader is then the new PID 1.
// Files written inside are in the host's page cache, which a killed container
// does not lose: what whileOff does to them is the only data lost. It must not
// run concurrently with other methods.
func (m *Machine) PowerCycle(ctx context.Context, whileOff func() error) error {
	old := m.Leader
	if old <= 0 {
		return fmt.Errorf("machine %s: power cycle: not booted", m.Name)
	}
	m.mu.Lock()
	m.cycling, m.whileOff = true, whileOff
	m.mu.Unlock()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		return fmt.Errorf("machine %s: power cycle: %w", m.Name, err)
	}
	if err := m.followReboot(ctx, old); err != nil {
		return fmt.Errorf("machine %s: power cycle: %w", m.Name, err)
	}
	return m.WaitRunning(ctx)
}

// Reboot reboots the machine and waits until systemd is running again; Leader
// is then the new PID 1. The files survive, as on a real reboot. It must not
// run concurrently with other methods.
func (m *Machine) Reboot(ctx context.Context) error {
	old := m.Leader
	if old <= 0 {
		return fmt.Errorf("machine %s: reboot: not booted", m.Name)
	}
	if err := syscall.Kill(old, sigReboot); err != nil {
		return fmt.Errorf("machine %s: reboot: %w", m.Name, err)
	}
	if err := m.followReboot(ctx, old); err != nil {
		return fmt.Errorf("machine %s: reboot: %w", m.Name, err)
	}
	return m.WaitRunning(ctx)
}

// WaitRunning waits until systemd in the machine reports running or degraded.
// If the machine reboots meanwhile (e.g. the agent ran `systemctl reboot`
// inside), it follows: systemd-nspawn is started again and Leader becomes the
// new PID 1. It must not run concurrently with other methods.
func (m *Machine) WaitRunning(ctx context.Context) error {
	for {
		old := m.Leader
		err := m.waitRunning(ctx)
		if err == nil || ctx.Err() != nil || alive(old) && !errors.Is(err, errStopping) {
			return err
		}
		if err := m.followReboot(ctx, old); err != nil {
			return err
		}
	}
}

// followReboot waits until PID 1 old is gone and the restarted
// systemd-nspawn has a new one, and makes that the Leader.
func (m *Machine) followReboot(ctx context.Context, old int) error {
	for alive(old) {
		select {
		case <-m.done:
			return m.exitedError("instead of rebooting")
		case <-ctx.Done():
			return fmt.Errorf("init %d still running: %w", old, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	leader, err := m.findLeader(ctx, old)
	if err != nil {
		return err
	}
	m.Leader = leader
	return nil
}

// alive reports whether pid still exists (and is not a zombie reaped later).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// Close stops the machine if it still runs (orderly, then by force), unmounts
// its root and removes everything Boot created. It is safe to call more than
// once and after a failed or partial boot.
func (m *Machine) Close() error {
	m.closeOnce.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

func (m *Machine) close() error {
	var errs []error
	m.mu.Lock()
	m.stopping = true
	started := m.started
	m.mu.Unlock()
	if started {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := m.Poweroff(ctx)
		cancel()
		if err != nil {
			// Killing PID 1 of a PID namespace kills everything in it; nspawn
			// then exits by itself.
			if m.Leader > 0 {
				_ = syscall.Kill(m.Leader, syscall.SIGKILL)
			}
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
				m.mu.Lock()
				_ = m.nspawn.Kill()
				m.mu.Unlock()
				<-m.done
			}
		}
	}
	if m.Overlay {
		if err := unmount(m.Dir); err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", m.Name, err))
		}
	}
	// Never remove through a mount that is still there: that would reach into
	// whatever is mounted (the base rootfs via overlay, host binds).
	if mounts, err := mountsUnder(m.tmp); err != nil {
		errs = append(errs, err)
	} else if len(mounts) > 0 {
		errs = append(errs, fmt.Errorf("machine %s: %s still mounted, left %s in place", m.Name, strings.Join(mounts, ", "), m.tmp))
	} else if err := os.RemoveAll(m.tmp); err != nil {
		errs = append(errs, fmt.Errorf("machine %s: remove %s: %w", m.Name, m.tmp, err))
	}
	return errors.Join(errs...)
}

// unmount unmounts dir, retrying while it is briefly busy (processes of the
// machine still exiting), and detaching it as a last resort.
func unmount(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		err = unix.Unmount(dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) { // EINVAL: not mounted
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if derr := unix.Unmount(dir, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount %s: %w (detach: %v)", dir, err, derr)
	}
	return nil
}

// mountsUnder lists the mount points at or below dir in this mount namespace.
func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return parseMountsUnder(b, dir), nil
}

func parseMountsUnder(mountinfo []byte, dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := procfs.Unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tail keeps the last few KiB written to it, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 8 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) == 0 {
		return "(no console output)"
	}
	return "console (last lines):\n" + lastLines(t.buf, 30)
}

// signal sends sig to systemd inside or, before its PID is known, asks
// systemd-nspawn to halt the machine. It never signals PID 0: that would be
// this process's own group.
func (m *Machine) signal(sig syscall.Signal) error {
	var err error
	if m.Leader > 0 {
		err = syscall.Kill(m.Leader, sig)
	} else {
		m.mu.Lock()
		err = m.nspawn.Signal(syscall.SIGTERM)
		m.mu.Unlock()
	}
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}
