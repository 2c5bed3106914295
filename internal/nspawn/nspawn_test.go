//go:build e2e

package nspawn

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bootForTest boots a machine on the cached rootfs (hack/rootfs.sh), failing
// the test with Available's explanation when that is impossible: an e2e run
// that silently skips proves nothing.
func bootForTest(t *testing.T, o Options) *Machine {
	t.Helper()
	if err := Available(o.Rootfs); err != nil {
		t.Fatalf("cannot boot machines here: %v", err)
	}
	var console bytes.Buffer
	o.Log = &console
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := Boot(ctx, o)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	t.Logf("machine %s booted in %s (overlay=%v, leader=%d)", m.Name, m.BootDuration.Round(time.Millisecond), m.Overlay, m.Leader)
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("console of %s:\n%s", m.Name, console.String())
		}
	})
	return m
}

func TestBootExecClose(t *testing.T) {
	hostFile := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(hostFile, []byte("from the host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hostPanic := mustRead(t, "/proc/sys/kernel/panic")
	m := bootForTest(t, Options{Env: []string{"NODEAGENT_E2E=yes", `NODEAGENT_QUOTED=a  b "c" 50% \d`}, Sysctls: map[string]string{"net.core.somaxconn": "4242"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	out, _, err := m.Exec(ctx, nil, "systemctl", "is-system-running", "--wait")
	state := strings.TrimSpace(string(out))
	if state != "running" && state != "degraded" {
		t.Fatalf("systemctl is-system-running --wait = %q (%v), want running or degraded", state, err)
	}
	if out, _, err := m.Exec(ctx, nil, "systemd-analyze", "time"); err == nil {
		t.Logf("systemd-analyze time: %s", strings.TrimSpace(string(out)))
	}
	if state == "degraded" {
		failed, _, _ := m.Exec(ctx, nil, "systemctl", "--failed", "--no-legend", "--plain")
		t.Logf("degraded, failed units:\n%s", failed)
	}

	if fi, err := os.Stat(m.BusSocket()); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("bus socket %s: %v (mode %v)", m.BusSocket(), err, fi)
	}
	if want := "unix:path=" + m.BusSocket(); m.BusAddress() != want {
		t.Errorf("BusAddress = %q, want %q", m.BusAddress(), want)
	}

	if err := m.CopyIn(ctx, hostFile, "/opt/nodeagent/payload", 0o640); err != nil {
		t.Fatalf("CopyIn: %v", err)
	}

	checks := []struct {
		name string
		env  []string
		argv []string
		want string
	}{
		{"host name is the machine name", nil, []string{"hostname"}, m.Name},
		{"runs in the machine's PID namespace", nil, []string{"sh", "-c", "readlink /proc/1/exe"}, "/usr/lib/systemd/systemd"},
		{"Exec env reaches the command", []string{"GREETING=hi"}, []string{"sh", "-c", "echo $GREETING"}, "hi"},
		{"Options.Env reaches PID 1", nil, []string{"sh", "-c", "tr '\\0' '\\n' </proc/1/environ | grep ^NODEAGENT_E2E="}, "NODEAGENT_E2E=yes"},
		{"Options.Env reaches services", nil, []string{"systemd-run", "--wait", "--pipe", "--quiet", "sh", "-c", "echo $NODEAGENT_E2E"}, "yes"},
		{"Options.Env keeps spaces, quotes, % and backslashes", nil, []string{"systemd-run", "--wait", "--pipe", "--quiet", "sh", "-c", `printf '%s\n' "$NODEAGENT_QUOTED"`}, `a  b "c" 50% \d`},
		{"CopyIn content", nil, []string{"cat", "/opt/nodeagent/payload"}, "from the host"},
		{"CopyIn mode", nil, []string{"stat", "-c", "%a", "/opt/nodeagent/payload"}, "640"},
		{"cgroup controllers are writable", nil, []string{"sh", "-c", "mkdir /sys/fs/cgroup/memory/nspawn-test && rmdir /sys/fs/cgroup/memory/nspawn-test && echo ok"}, "ok"},
		{"systemd realizes units in the memory controller", nil, []string{"sh", "-c", "test -d /sys/fs/cgroup/memory/system.slice && echo ok"}, "ok"},
		{"/dev/kmsg is there for kubelet", nil, []string{"sh", "-c", "test -c /dev/kmsg && echo ok"}, "ok"},
		{"the host network is shared", nil, []string{"readlink", "/proc/1/ns/net"}, mustReadlink(t, "/proc/self/ns/net")},
		{"kubelet's sysctls are shadowed", nil, []string{"cat", "/proc/sys/kernel/panic"}, "10"},
		{"Options.Sysctls are shadowed", nil, []string{"cat", "/proc/sys/net/core/somaxconn"}, "4242"},
		{"shadowed sysctls are read-only", nil, []string{"sh", "-c", "echo 3 2>/dev/null >/proc/sys/kernel/panic || echo refused"}, "refused"},
		{"containerd state is not on overlayfs", nil, []string{"stat", "-f", "-c", "%T", "/var/lib/containerd"}, "ext2/ext3"},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, err := m.Exec(ctx, c.env, c.argv...)
			if err != nil {
				t.Fatalf("Exec %v: %v (stderr %s)", c.argv, err, stderr)
			}
			if got := strings.TrimSpace(string(out)); got != c.want {
				t.Errorf("Exec %v = %q, want %q", c.argv, got, c.want)
			}
		})
	}

	if got := mustRead(t, "/proc/sys/kernel/panic"); got != hostPanic {
		t.Errorf("host kernel.panic changed from %s to %s", hostPanic, got)
	}
	if _, _, err := m.Exec(ctx, nil, "false"); err == nil {
		t.Error("Exec false: want an error for a non-zero exit")
	}

	tmp := m.tmp
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-m.Exited():
	default:
		t.Error("systemd-nspawn still running after Close")
	}
	if mounts, err := mountsUnder(tmp); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under %s after Close: %v (%v)", tmp, mounts, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Close (%v)", tmp, err)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(m.Leader))); !os.IsNotExist(err) {
		t.Errorf("leader %d still alive after Close", m.Leader)
	}
}

func TestRebootKeepsFilesAndReturnsRunning(t *testing.T) {
	m := bootForTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := m.WriteFile(ctx, "/var/lib/marker", strings.NewReader("before reboot"), 0o644); err != nil {
		t.Fatal(err)
	}
	oldLeader := m.Leader
	if err := m.Reboot(ctx); err != nil {
		t.Fatalf("Reboot: %v", err)
	}
	if m.Leader == oldLeader {
		t.Errorf("leader still %d after reboot", m.Leader)
	}
	out, _, err := m.Exec(ctx, nil, "cat", "/var/lib/marker")
	if err != nil || string(out) != "before reboot" {
		t.Errorf("marker after reboot = %q (%v), want it kept", out, err)
	}
	if err := m.Poweroff(ctx); err != nil {
		t.Fatalf("Poweroff: %v", err)
	}
	select {
	case <-m.Exited():
	default:
		t.Error("systemd-nspawn still running after Poweroff")
	}
}

// TestPowerCycleKillsEverythingAndBootsAgain: a power cycle stops every
// process at once (a unit asked to write on stop never does), runs the
// while-off step with the machine gone, and boots systemd again on the same
// files.
func TestPowerCycleKillsEverythingAndBootsAgain(t *testing.T) {
	m := bootForTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := m.WriteFile(ctx, "/var/lib/marker", strings.NewReader("before the cut"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An orderly shutdown would run this unit's ExecStop; a power cut does not.
	if _, errOut, err := m.Exec(ctx, nil, "systemd-run", "--unit=stopwitness", "--remain-after-exit",
		"-p", "ExecStop=/bin/sh -c 'echo stopped > /var/lib/stopped'", "/bin/true"); err != nil {
		t.Fatalf("systemd-run: %v: %s", err, errOut)
	}
	oldLeader := m.Leader
	offRan := false
	err := m.PowerCycle(ctx, func() error {
		offRan = true
		if alive(oldLeader) {
			t.Errorf("init %d still alive while the power is off", oldLeader)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("PowerCycle: %v", err)
	}
	if !offRan {
		t.Error("the while-off step did not run")
	}
	if m.Leader == oldLeader {
		t.Errorf("leader still %d after the power cycle", m.Leader)
	}
	if out, _, err := m.Exec(ctx, nil, "cat", "/var/lib/marker"); err != nil || string(out) != "before the cut" {
		t.Errorf("marker after the power cycle = %q (%v), want it kept", out, err)
	}
	if _, err := os.Stat(m.Path("/var/lib/stopped")); !os.IsNotExist(err) {
		t.Errorf("a unit was stopped in order during the power cut (%v)", err)
	}
}

func TestBootFallsBackToCopyWithoutOverlayfs(t *testing.T) {
	orig := mountOverlay
	mountOverlay = func(string, string) error { return syscall.EINVAL }
	t.Cleanup(func() { mountOverlay = orig })
	m := bootForTest(t, Options{})
	if m.Overlay {
		t.Fatal("Overlay = true although the overlay mount failed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.WriteFile(ctx, "/etc/nodeagent-copy-test", strings.NewReader("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(DefaultRootfs, "etc/nodeagent-copy-test")); !os.IsNotExist(err) {
		t.Errorf("write inside the machine reached the cached rootfs (%v)", err)
	}
}

func TestCloseAfterFailedBootLeavesNothing(t *testing.T) {
	if err := Available(""); err != nil {
		t.Fatalf("cannot boot machines here: %v", err)
	}
	before, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	// An unknown nspawn flag makes systemd-nspawn exit right after the
	// overlay was mounted: Boot must undo that.
	_, err = Boot(context.Background(), Options{Name: "nspawn-fail", ExtraArgs: []string{"--no-such-flag"}})
	if err == nil {
		t.Fatal("Boot with a bad flag succeeded")
	}
	if !strings.Contains(err.Error(), "exited") {
		t.Errorf("error %q does not say nspawn exited", err)
	}
	after, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if got := parseMountsUnder(after, os.TempDir()); len(got) > len(parseMountsUnder(before, os.TempDir())) {
		t.Errorf("mounts left under %s: %v", os.TempDir(), got)
	}
	left, _ := filepath.Glob(filepath.Join(os.TempDir(), "nspawn-nspawn-fail-*"))
	if len(left) > 0 {
		t.Errorf("temp dirs left: %v", left)
	}
}

func mustReadlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
