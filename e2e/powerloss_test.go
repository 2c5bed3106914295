//go:build e2e

package e2e

import (
	"context"
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
// cluster's configuration and PKI, kubelet's certificates, and the asset cache
// its downloads write into.
var diskDirs = map[string]string{"nodeagent": "/var/lib/nodeagent", "kubernetes": "/etc/kubernetes", "kubelet-pki": "/var/lib/kubelet/pki",
	"asset-cache": "/var/cache/nodeagent"}

func newNodeDisk(t *testing.T) *nodeDisk {
	t.Helper()
	// Room for a worker's cached assets (kubelet, containerd, runc, CNI).
	return newDisk(t, "768M", diskDirs)
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
func (d *nodeDisk) damage(_ *testing.T, n *testenv.Node) string { return crashDamageAt(d.at(n)) }

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// at is where the host sees a path of a machine with some of its directories
// on d.
func (d *nodeDisk) at(n *testenv.Node) func(string) string {
	return func(p string) string {
		if hp, ok := d.hostPath(p); ok {
			return hp
		}
		return n.M.Path(p)
	}
}

// powerRow is one line of the power-loss sweep's table.
type powerRow struct {
	chain, point, outcome string
	// run is the armed run to its point, on the power cycle, recovery the
	// unarmed run after the power came back, which must converge.
	run, on, recovery time.Duration
}

// TestCrashSweepPowerLoss cuts the power of a machine at each named
// failpoint, and after every cut an unarmed run must converge, as after a
// SIGKILL in TestCrashSweep. The armed agent holds at its point
// (return("hold:MATCH")); the test takes what the devices hold at that
// instant, kills every process of the machine at once (SIGKILL to its PID 1:
// no shutdown), puts the devices' contents taken at the cut back in place of
// what the page cache kept writing, and boots the machine again on the same
// files. Two kinds of device:
//   - the workers' node disk, holding the agent's state, the cluster's
//     configuration and PKI: what was written but not fsynced is lost;
//   - a master's etcd volumes: the backing file of each, copied at the cut
//     (what the loop device has written, as an EBS volume holds it; writes
//     still in the block device's own page cache are not in it), is attached
//     again through a new loop device.
//
// The rest of a machine's files survive (host page cache). After every
// power-on the state file is valid and no file is empty; the unarmed run then
// leaves every phase done (but those the chain's node cannot finish), nothing
// empty, and the chain's invariants: a matching key/certificate pair signed by
// the cluster CA, CONTINUE once, one AttachVolume per volume per instance, and
// no second mkfs of a volume that held a filesystem at the cut (blkid -p on the
// copy, then on the volume). Prints failpoint → outcome with each case's
// recovery time.
func TestCrashSweepPowerLoss(t *testing.T) {
	bin := failpointBinary(t)
	var rows []powerRow
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "power-loss sweep (power cut at the failpoint, unsynced writes lost, machine booted again, then an unarmed run that must converge):\n%-10s %-44s %-9s %-9s %-9s %s\n", "chain", "failpoint", "to point", "power-on", "recovery", "outcome")
		var longest powerRow
		passed := 0
		for _, r := range rows {
			fmt.Fprintf(&b, "%-10s %-44s %-9s %-9s %-9s %s\n", r.chain, r.point, r.run.Round(100*time.Millisecond), r.on.Round(100*time.Millisecond), r.recovery.Round(100*time.Millisecond), r.outcome)
			if strings.HasPrefix(r.outcome, "pass") {
				passed++
			}
			if r.recovery > longest.recovery {
				longest = r
			}
		}
		fmt.Fprintf(&b, "FIGURE power_loss_cases %d (passing %d)\nFIGURE power_loss_longest_recovery_seconds %.1f (%s %s)\n", len(rows), passed, longest.recovery.Seconds(), longest.chain, longest.point)
		t.Log(b.String())
	}()
	record := func(r powerRow) { rows = append(rows, r) }

	t.Run("worker with CA files", func(t *testing.T) {
		disk := newNodeDisk(t)
		env := startEnv(t, &awsemu.World{})
		n, caCert := fileCAWorker(t, env, "i-0e2e0power00001", bin, disk.binds())
		at := disk.at(n)
		cases := []crashCase{
			{failpoint: "fsutilBeforeRename", match: "state.json"},
			{failpoint: "bootstrapBetweenPhases", match: "host-prep", before: quiesce},
			// runc fetched again: neither installed nor cached; the cut loses
			// the download's unsynced chunks.
			{failpoint: "assetsMidDownload", match: "runc", before: removeAssetAt(at, env.Assets, "runc", true)},
			// runc installed again from the cache.
			{failpoint: "assetsBeforeInstall", match: "runc", before: removeAssetAt(at, env.Assets, "runc", false)},
			{failpoint: "bootstrapBetweenPhases", match: "images", before: quiesce},
			{failpoint: "pkiAfterKeyBeforeCert", match: "kubelet-client", before: redoAt(at, "/var/lib/kubelet/pki/kubelet-client.*")},
			{failpoint: "bootstrapBetweenPhases", match: "pki", before: quiesce},
			{failpoint: "manifestsMidWrite", match: "*", before: redoAt(at, "/etc/kubernetes/manifests/*")},
			{failpoint: "bootstrapBetweenPhases", match: "manifests", before: quiesce},
		}
		// The simulation has teeth: a write nobody synced does not survive the
		// first cut.
		canary := filepath.Join(disk.mnt, "unsynced-canary") // same filesystem, outside the agent's directories
		if err := os.WriteFile(canary, []byte("written, never synced\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		checkCanary := func() {
			if canary == "" {
				return
			}
			if b, err := os.ReadFile(canary); err == nil && len(b) > 0 {
				t.Errorf("a write never synced survived the power cut (%q): the cut loses nothing", b)
			}
			_ = os.Remove(canary)
			canary = ""
		}
		// No API server here: readiness waits for a Node object that never comes.
		cv := convergence{unfinished: []string{"readiness"}, at: at, invariants: func(*testing.T, *testenv.Node, *bootstrap.State) []string {
			return []string{issuedPair(at, "/var/lib/kubelet/pki/kubelet-client", caCert)}
		}}
		powerChain(t, n, "ca-files", cases, diskSupply(disk, n, checkCanary), cv, record)
	})

	t.Run("lifecycle worker", func(t *testing.T) {
		disk := newNodeDisk(t)
		env, n := lifecycleWorker(t, "i-0e2e0power00002", bin, disk.binds())
		powerChain(t, n, "lifecycle", []crashCase{{failpoint: "lifecycleBeforeRecord", match: "*"}},
			diskSupply(disk, n, nil), convergence{at: disk.at(n), invariants: continuedOnce(env)}, record)
	})

	t.Run("master", func(t *testing.T) {
		h := newHALab(t)
		h.readinessTimeout = "2s" // alone: etcd-health and readiness are not judged
		z := haZones[0]
		m := h.bootWith(bin, "i-0e2e0power0000m", z.az)
		vols := []string{"vol-0main" + z.member, "vol-0events" + z.member}
		uuids := map[string]string{}
		attaches := len(vols)
		cv := convergence{unfinished: loneMasterUnfinished, invariants: volumeInvariants(h, vols, uuids, attaches, m.InstanceID)}
		// The volumes are claimed side by side: the cut comes at the first
		// mkfs done, the other may be blank, half made or made.
		powerChain(t, m.Node, "master", []crashCase{{failpoint: "volumesAfterMkfs", match: "*"}}, volumeSupply(h, m.InstanceID, vols, uuids), cv, record)
		if t.Failed() {
			return
		}
		// A volume is attached once per instance: the attach point is cut on
		// the master's replacement, which must take the same filesystems.
		h.kill(context.Background(), m)
		m = h.bootWith(bin, "i-0e2e0power000rm", z.az)
		cv.invariants = volumeInvariants(h, vols, uuids, attaches+len(vols), m.InstanceID)
		powerChain(t, m.Node, "master", []crashCase{{failpoint: "volumesAfterAttach", match: "*"}}, volumeSupply(h, m.InstanceID, vols, uuids), cv, record)
	})
}

// powerSupply is how a chain's machine loses its power: what the devices hold
// is taken at the cut, restored after it, and the damage a cut must never
// leave is judged.
type powerSupply struct {
	// cut runs at the hold, before the machine dies; note says what it took.
	cut func() (note string, err error)
	// whileOff runs between the machine's death and its boot.
	whileOff func() error
	// on runs once the machine is up again.
	on func() error
	// damage says what is wrong after the power came back ("" when nothing).
	damage func() string
}

// diskSupply cuts the power of a worker with its agent's directories on disk;
// after is called once the machine is up again (nil: nothing).
func diskSupply(disk *nodeDisk, n *testenv.Node, after func()) powerSupply {
	return powerSupply{
		whileOff: func() error {
			// The disk at the instant of the cut: the machine is already dead,
			// nothing wrote since it held.
			cut, err := disk.cut()
			if err != nil {
				return err
			}
			return disk.powerOn(cut)
		},
		on: func() error {
			if after != nil {
				after()
			}
			return nil
		},
		damage: func() string { return crashDamageAt(disk.at(n)) },
	}
}

// volumeSupply cuts the power of a master, instance: at the hold the backing
// file of each volume attached to it (or attaching) is copied (what its loop
// device has written so far) and the UUID of a filesystem on the copy noted
// in uuids (never formatted again from then on); once the machine is up, each
// is attached again over its copy (the machine's /dev is new after a boot,
// as an instance's devices are presented again).
func volumeSupply(h *haLab, instance string, vols []string, uuids map[string]string) powerSupply {
	cuts := map[string]string{}
	return powerSupply{
		cut: func() (string, error) {
			clear(cuts)
			var notes []string
			for _, id := range vols {
				vs, ok := h.env.Emu.VolumeStatus(id)
				switch {
				case !ok:
					return "", fmt.Errorf("no volume %s", id)
				case vs.InstanceID != instance:
					notes = append(notes, id+" not attached")
					continue
				}
				cut := vs.BackingFile + ".cut"
				if out, err := exec.Command("cp", "--sparse=always", vs.BackingFile, cut).CombinedOutput(); err != nil {
					return "", fmt.Errorf("copy %s at the cut: %v: %s", id, err, out)
				}
				cuts[id] = cut
				// blkid exits 2 when it finds nothing: a blank volume.
				b, _ := exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", cut).Output()
				uuid := strings.TrimSpace(string(b))
				switch {
				case uuid == "":
					notes = append(notes, id+" blank")
				case uuids[id] != "" && uuids[id] != uuid:
					return "", fmt.Errorf("%s holds filesystem %s at the cut, %s before: formatted twice", id, uuid, uuids[id])
				default:
					uuids[id] = uuid
					notes = append(notes, id+" ext4")
				}
			}
			return strings.Join(notes, ", "), nil
		},
		on: func() error {
			for id, cut := range cuts {
				// An attach still in progress at the cut completes first.
				err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
					vs, _ := h.env.Emu.VolumeStatus(id)
					return vs.AttachState == "attached", nil
				})
				if err != nil {
					return fmt.Errorf("%s never attached: %w", id, err)
				}
				if err := h.env.Emu.RestoreVolume(id, cut); err != nil {
					return err
				}
			}
			return nil
		},
		damage: func() string { return "" },
	}
}

// powerChain runs each case on n: the armed run holding at its point, the
// power cut there and the machine booted again, the checks of what a cut
// must never leave; then an unarmed run that must converge as cv says, whose
// wall time is the case's recovery.
func powerChain(t *testing.T, n *testenv.Node, chain string, cases []crashCase, ps powerSupply, cv convergence, record func(powerRow)) {
	t.Helper()
	at := cv.hostPath(n)
	for _, c := range cases {
		if c.before != nil {
			c.before(t, n)
		}
		row := powerRow{chain: chain, point: c.String(), outcome: "pass"}
		var note string
		row.outcome, note, row.run, row.on = powerCut(t, n, ps, c)
		if why := crashDamageAt(at); why != "" && row.outcome == "pass" {
			row.outcome = "FAIL: " + why
			t.Errorf("%s: after the power cut: %s", c, why)
		}
		row.recovery, row.outcome = convergeAfter(t, n, cv, c, "the power cut", row.outcome)
		if note != "" && row.outcome == "pass" {
			row.outcome = "pass (at the cut: " + note + ")"
		}
		record(row)
		if t.Failed() {
			return
		}
	}
}

// powerCut runs bootstrap armed to hold at c, cuts the power there, boots the
// machine again with its devices as they were at the cut, and checks what the
// cut left. run is how long the armed run took to reach its point, on the
// power cycle.
func powerCut(t *testing.T, n *testenv.Node, ps powerSupply, c crashCase) (outcome, note string, run, on time.Duration) {
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
		return fmt.Sprintf("FAIL: never reached (%v)", exitErr), "", run, 0
	}
	start = time.Now()
	if ps.cut != nil {
		if note, err = ps.cut(); err != nil {
			t.Errorf("%s: at the cut: %v", c, err)
			_ = cmd.Process.Kill()
			<-exited
			return "FAIL: " + err.Error(), "", run, 0
		}
	}
	whileOff := ps.whileOff
	if whileOff == nil {
		whileOff = func() error { return nil }
	}
	err = n.M.PowerCycle(ctx, whileOff)
	<-exited // nsenter's child died with the machine
	if err != nil {
		t.Fatalf("%s: power cycle: %v", c, err)
	}
	if ps.on != nil {
		if err := ps.on(); err != nil {
			t.Fatalf("%s: after the power came back: %v", c, err)
		}
	}
	on = time.Since(start)
	if why := ps.damage(); why != "" {
		t.Errorf("%s: after the power cut: %s", c, why)
		return "FAIL: " + why, note, run, on
	}
	return "pass", note, run, on
}
