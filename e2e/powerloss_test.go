//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

// nodeDisk is a small ext4 filesystem in a file, loop-mounted on the host and
// bound into a machine at the agent's own directories: the machine's disk for
// the files a power cut may damage. It is mounted with commit=60, so that
// nothing reaches it in the meantime but what is fsynced (or written back
// by the kernel's flusher after its 30 s expiry).
type nodeDisk struct {
	img, mnt string
	dirs     map[string]string // directory on the disk → where the machine sees it
}

// diskDirs are the agent's directories on the node disk: its state, the
// cluster's configuration and PKI, kubelet's certificates.
var diskDirs = map[string]string{"nodeagent": "/var/lib/nodeagent", "kubernetes": "/etc/kubernetes", "kubelet-pki": "/var/lib/kubelet/pki"}

func newNodeDisk(t *testing.T) *nodeDisk {
	t.Helper()
	return newDisk(t, "256M", diskDirs)
}

// newDisk makes a disk of size holding dirs (directory on the disk → where
// the machine sees it), each empty.
func newDisk(t *testing.T, size string, dirs map[string]string) *nodeDisk {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "mount", "umount", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: %v", tool, err)
		}
	}
	dir := t.TempDir()
	d := &nodeDisk{img: filepath.Join(dir, "disk.img"), mnt: filepath.Join(dir, "mnt"), dirs: dirs}
	if err := os.Mkdir(d.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "truncate", "-s", size, d.img)
	// No blocks reserved for root: the agent runs as root, full is full.
	sh(t, "mkfs.ext4", "-q", "-F", "-m", "0", d.img)
	if err := d.mount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", d.mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", d.mnt, err, out)
		}
	})
	for sub := range dirs {
		if err := os.Mkdir(filepath.Join(d.mnt, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, "sync", "-f", d.mnt)
	return d
}

func (d *nodeDisk) mount() error {
	if out, err := exec.Command("mount", "-o", "loop,commit=60", d.img, d.mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", d.img, err, out)
	}
	return nil
}

func (d *nodeDisk) binds() []string {
	var b []string
	for sub, at := range d.dirs {
		b = append(b, filepath.Join(d.mnt, sub)+":"+at)
	}
	return b
}

// cut takes what the disk holds at this instant: the image file as the loop
// device has written it. Pages the filesystem has not yet written to the
// device (nothing fsynced them, no journal commit took them) are not in it.
func (d *nodeDisk) cut() (string, error) {
	cut := d.img + ".cut"
	if out, err := exec.Command("cp", "--sparse=always", d.img, cut).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy the disk at the cut: %v: %s", err, out)
	}
	return cut, nil
}

// powerOn swaps the image taken at the cut in for the one the running
// filesystem kept writing to, and mounts it (ext4 replays its journal).
func (d *nodeDisk) powerOn(cut string) error {
	if out, err := exec.Command("umount", d.mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("umount %s: %v: %s", d.mnt, err, out)
	}
	if err := os.Rename(cut, d.img); err != nil {
		return err
	}
	return d.mount()
}

// hostPath is where the host sees a path of the machine on the node disk (the
// machine's binds are not visible through its root directory on the host).
func (d *nodeDisk) hostPath(containerPath string) (string, bool) {
	for sub, at := range d.dirs {
		if rest, ok := strings.CutPrefix(containerPath, at); ok && (rest == "" || rest[0] == '/') {
			return filepath.Join(d.mnt, sub, rest), true
		}
	}
	return "", false
}

// path is hostPath for a path that must be on the disk.
func (d *nodeDisk) path(t *testing.T, containerPath string) string {
	t.Helper()
	p, ok := d.hostPath(containerPath)
	if !ok {
		t.Fatalf("%s is not on the node disk", containerPath)
	}
	return p
}

// damage is crashDamage for a node with some of its directories on d: the
// state file must parse, no file the agent writes may be empty.
func (d *nodeDisk) damage(t *testing.T, n *testenv.Node) string {
	b, err := os.ReadFile(d.path(t, "/var/lib/nodeagent/state.json"))
	if err != nil && !os.IsNotExist(err) {
		return err.Error()
	}
	if err == nil {
		var st bootstrap.State
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Sprintf("state.json is not valid: %v", err)
		}
	}
	empty := emptyFiles(func(p string) string {
		if hp, ok := d.hostPath(p); ok {
			return hp
		}
		return n.M.Path(p)
	})
	if len(empty) > 0 {
		return "empty files: " + strings.Join(empty, ", ")
	}
	return ""
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// TestCrashSweepPowerLoss cuts the power of a worker's machine at each named
// failpoint, one after the other on the same node. The
// armed agent holds at its point (return("hold:MATCH")); the test takes the
// node disk as the loop device has it at that instant, kills every process of
// the machine at once (SIGKILL to its PID 1: no shutdown), puts the disk taken
// at the cut back in place of the one the page cache kept writing to, and boots
// the machine again on the same files. So what was written but not fsynced to
// the agent's state, configuration and PKI (the node disk) is lost, as in a
// power loss; the rest of the machine's files survive (host page cache). After
// every power-on the state file is valid and no file is empty; each armed run
// first recovers from the previous cut; the last, unarmed run converges and the
// key/certificate pair a cut split is a matching pair.
func TestCrashSweepPowerLoss(t *testing.T) {
	bin := failpointBinary(t)
	env := startEnv(t, &awsemu.World{})
	disk := newNodeDisk(t)
	n, _ := fileCAWorker(t, env, "i-0e2e0power00001", bin, disk.binds())

	cases := []crashCase{
		{failpoint: "fsutilBeforeRename", match: "state.json"},
		{failpoint: "bootstrapBetweenPhases", match: "host-prep"},
		{failpoint: "assetsBeforeInstall", match: "*"},
		{failpoint: "bootstrapBetweenPhases", match: "images"},
		{failpoint: "pkiAfterKeyBeforeCert", match: "kubelet-client"},
		{failpoint: "bootstrapBetweenPhases", match: "pki"},
		{failpoint: "manifestsMidWrite", match: "*"},
		{failpoint: "bootstrapBetweenPhases", match: "manifests"},
	}
	// The simulation has teeth: a write nobody synced does not survive the
	// first cut.
	canary := filepath.Join(disk.mnt, "unsynced-canary") // same filesystem, outside the agent's directories
	if err := os.WriteFile(canary, []byte("written, never synced\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "power-loss sweep (power cut at the failpoint, unsynced node-disk writes lost, machine booted again):\n%-48s %-9s %-9s %s\n", "failpoint", "to point", "power-on", "outcome")
	var longest time.Duration
	var longestP string
	passed := 0
	for _, c := range cases {
		outcome, run, on := powerCut(t, n, disk, c)
		if canary != "" {
			if b, err := os.ReadFile(canary); err == nil && len(b) > 0 {
				t.Errorf("a write never synced survived the power cut (%q): the cut loses nothing", b)
			}
			_ = os.Remove(canary)
			canary = ""
		}
		if outcome == "pass" {
			passed++
		}
		if run > longest {
			longest, longestP = run, c.String()
		}
		fmt.Fprintf(&table, "%-48s %-9s %-9s %s\n", c, run.Round(100*time.Millisecond), on.Round(100*time.Millisecond), outcome)
	}
	start := time.Now()
	agent(t, n, "bootstrap")
	converge := time.Since(start)
	st, _ := status(t, n)
	for _, p := range st.Phases {
		// No API server here: readiness waits for a Node object that never comes.
		if p.Name != "readiness" && p.State != bootstrap.PhaseDone {
			t.Errorf("phase %s is %s after the power-loss sweep (%s)", p.Name, p.State, p.Error)
		}
	}
	if _, err := tls.LoadX509KeyPair(disk.path(t, "/var/lib/kubelet/pki/kubelet-client.crt"), disk.path(t, "/var/lib/kubelet/pki/kubelet-client.key")); err != nil {
		t.Errorf("kubelet client pair after the power-loss sweep: %v", err)
	}
	if why := disk.damage(t, n); why != "" {
		t.Error(why)
	}
	fmt.Fprintf(&table, "unarmed bootstrap after the last power-on: %s\n", converge.Round(100*time.Millisecond))
	fmt.Fprintf(&table, "FIGURE power_loss_cases %d (passing %d)\nFIGURE power_loss_longest_run_seconds %.1f (%s)\n", len(cases), passed, longest.Seconds(), longestP)
	t.Log(table.String())
}

// powerCut runs bootstrap armed to hold at c, cuts the power there, boots the
// machine again with the disk as it was at the cut, and checks what the cut
// left. run is how long the armed run took to reach its point (recovering
// from the previous cut on the way), on the power cycle.
func powerCut(t *testing.T, n *testenv.Node, disk *nodeDisk, c crashCase) (outcome string, run, on time.Duration) {
	t.Helper()
	env := append(slices.Clone(n.Env), fmt.Sprintf("GOFAIL_FAILPOINTS=%s=return(%q)", c.failpoint, "hold:"+c.match))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stderr lockedBuffer
	cmd := n.M.Command(ctx, env, testenv.AgentPath, "bootstrap")
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	held := "failpoint " + c.failpoint + " ("
	var exitErr error
	gone := false
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 4*time.Minute, true, func(context.Context) (bool, error) {
		if strings.Contains(stderr.String(), held) {
			return true, nil
		}
		select {
		case exitErr = <-exited:
			gone = true
			return true, nil
		default:
			return false, nil
		}
	})
	run = time.Since(start)
	if err != nil || gone {
		t.Errorf("%s: the run never reached the failpoint (exit: %v, wait: %v)\n%s", c, exitErr, err, stderr.String())
		if !gone {
			_ = cmd.Process.Kill()
			<-exited
		}
		return fmt.Sprintf("FAIL: never reached (%v)", exitErr), run, 0
	}
	var cut string
	start = time.Now()
	err = n.M.PowerCycle(ctx, func() error {
		var err error
		// The disk at the instant of the cut: the machine is already dead,
		// nothing wrote since it held.
		if cut, err = disk.cut(); err != nil {
			return err
		}
		return disk.powerOn(cut)
	})
	on = time.Since(start)
	<-exited // nsenter's child died with the machine
	if err != nil {
		t.Fatalf("%s: power cycle: %v", c, err)
	}
	if why := disk.damage(t, n); why != "" {
		t.Errorf("%s: after the power cut: %s", c, why)
		return "FAIL: " + why, run, on
	}
	return "pass", run, on
}
