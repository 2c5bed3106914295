//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
)

var failpointAgent = flag.String("failpoint-agent", "", "nodeagent built with its gofail failpoints (hack/failpoints.sh; default: built by the test)")

var (
	fpAgentOnce sync.Once
	fpAgentPath string
	fpAgentErr  error
)

// failpointBinary is the agent with failpoints, built once per run by
// hack/failpoints.sh unless -failpoint-agent names one.
func failpointBinary(t *testing.T) string {
	t.Helper()
	if *failpointAgent != "" {
		return *failpointAgent
	}
	fpAgentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nodeagent-failpoints-bin")
		if err != nil {
			fpAgentErr = err
			return
		}
		_, file, _, _ := runtime.Caller(0)
		fpAgentPath = filepath.Join(dir, "nodeagent-failpoints")
		cmd := exec.Command("hack/failpoints.sh", fpAgentPath)
		cmd.Dir = filepath.Dir(filepath.Dir(file))
		if out, err := cmd.CombinedOutput(); err != nil {
			fpAgentErr = fmt.Errorf("hack/failpoints.sh: %w\n%s", err, out)
		}
	})
	if fpAgentErr != nil {
		t.Fatal(fpAgentErr)
	}
	return fpAgentPath
}

// crashCase arms one failpoint: the agent SIGKILLs itself when the code passes
// it with a detail matching match ("*": the first time).
type crashCase struct {
	failpoint, match string
	// before runs just before the armed run (e.g. to keep the daemon from
	// doing the armed run's work first).
	before func(t *testing.T, n *testenv.Node)
	// after runs once the crash has been checked.
	after func(t *testing.T, n *testenv.Node)
}

func (c crashCase) String() string { return c.failpoint + "=" + c.match }

// crashRow is one line of the sweep's table.
type crashRow struct {
	chain, point, outcome string
	run                   time.Duration
}

// TestCrashSweep kills the agent with SIGKILL at each named failpoint of a
// worker's boot (hack/failpoints.sh builds them in with go.etcd.io/gofail), one
// after the other on the same node: each armed run first has to recover from
// the previous crash, then crashes at its own point. After every crash the
// state file is valid JSON and no file the agent writes is empty or torn; the
// last, unarmed run converges. Two chains: a worker completing an ASG launch
// hook (lifecycle point), and a worker holding the cluster CA as files, which
// issues its own certificates and writes kube-proxy's static pod (PKI and
// manifest points). Prints failpoint → outcome.
func TestCrashSweep(t *testing.T) {
	bin := failpointBinary(t)
	var (
		rows     []crashRow
		longest  time.Duration
		longestP string
	)
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "crash sweep (SIGKILL at the failpoint, then the next run):\n%-10s %-48s %-9s %s\n", "chain", "failpoint", "run", "outcome")
		for _, r := range rows {
			fmt.Fprintf(&b, "%-10s %-48s %-9s %s\n", r.chain, r.point, r.run.Round(100*time.Millisecond), r.outcome)
		}
		fmt.Fprintf(&b, "FIGURE crash_sweep_cases %d\nFIGURE crash_sweep_longest_recovery_seconds %.1f (%s)\n", len(rows), longest.Seconds(), longestP)
		t.Log(b.String())
	}()
	record := func(chain string, c crashCase, run time.Duration, outcome string) {
		rows = append(rows, crashRow{chain, c.String(), outcome, run})
	}

	t.Run("lifecycle worker", func(t *testing.T) {
		env := startEnv(t, &awsemu.World{LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: "nodes", Name: "nodeagent-ready"}}})
		inst := workerInstance(t, "i-0e2e0crash000001", workerUserData(t, env, func(c *config.NodeConfig) {
			c.Spec.Readiness.LifecycleHook = "nodeagent-ready"
		}))
		inst.AutoScalingGroup = "nodes"
		n := bootNodeWith(t, env, inst, bin)
		cases := []crashCase{
			{failpoint: "fsutilBeforeRename", match: "state.json"},
			{failpoint: "bootstrapBetweenPhases", match: "host-prep"},
			{failpoint: "assetsMidDownload", match: "*"},
			{failpoint: "assetsBeforeInstall", match: "*"},
			{failpoint: "bootstrapBetweenPhases", match: "assets"},
			{failpoint: "fsutilBeforeRename", match: ".service"},
			{failpoint: "bootstrapBetweenPhases", match: "container-runtime"},
			{failpoint: "bootstrapBetweenPhases", match: "images"},
			{failpoint: "bootstrapBetweenPhases", match: "kubelet"},
			{failpoint: "bootstrapBetweenPhases", match: "nodeagent-service"},
			// The daemon started above would complete the launch action on
			// its own: stopped, bootstrap starts it again and holds the run
			// lock until readiness, where it crashes after the CONTINUE.
			{failpoint: "lifecycleBeforeRecord", match: "*", before: func(t *testing.T, n *testenv.Node) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if _, _, err := n.M.Exec(ctx, nil, "systemctl", "stop", "nodeagent.service"); err != nil {
					t.Fatal(err)
				}
			}},
		}
		d, p := crashChain(t, n, "lifecycle", cases, record)
		if d > longest {
			longest, longestP = d, p
		}
		if _, code := agent(t, n, "bootstrap"); code != 0 {
			st, _ := status(t, n)
			t.Fatalf("unarmed bootstrap after the sweep: exit %d: %s", code, st.Error)
		}
		st, _ := status(t, n)
		for _, p := range st.Phases {
			if p.State != bootstrap.PhaseDone {
				t.Errorf("phase %s is %s after the sweep (%s)", p.Name, p.State, p.Error)
			}
		}
		// Auto Scaling saw exactly one completion: a second CONTINUE is refused
		// by the emulator (and would have failed the run above).
		if got := env.Emu.LifecycleResults()[n.InstanceID]; got != "CONTINUE" {
			t.Errorf("launch action result %q, want CONTINUE", got)
		}
		if st.Readiness.Lifecycle != "CONTINUE" {
			t.Errorf("state records lifecycle %q, want CONTINUE", st.Readiness.Lifecycle)
		}
		checkNoTornFiles(t, n)
	})

	t.Run("worker with CA files", func(t *testing.T) {
		caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		env := startEnv(t, &awsemu.World{})
		n := bootNodeWith(t, env, workerInstance(t, "i-0e2e0crash000002", workerUserData(t, env, func(c *config.NodeConfig) {
			useFileCA(c)
			c.Spec.Readiness.Timeout = "5s"
		})), bin)
		installCA(t, n, caCert, caKey)
		cases := []crashCase{
			{failpoint: "bootstrapBetweenPhases", match: "images"},
			{failpoint: "pkiAfterKeyBeforeCert", match: "kubelet-client"},
			{failpoint: "bootstrapBetweenPhases", match: "pki"},
			{failpoint: "manifestsMidWrite", match: "*"},
			{failpoint: "bootstrapBetweenPhases", match: "manifests"},
		}
		d, p := crashChain(t, n, "ca-files", cases, record)
		if d > longest {
			longest, longestP = d, p
		}
		// No API server here: readiness waits for a Node object that never
		// comes; every other phase must be done.
		agent(t, n, "bootstrap")
		st, _ := status(t, n)
		for _, p := range st.Phases {
			if p.Name != "readiness" && p.State != bootstrap.PhaseDone {
				t.Errorf("phase %s is %s after the sweep (%s)", p.Name, p.State, p.Error)
			}
		}
		// The pair whose certificate a crash kept from being written was
		// re-issued: key and certificate match.
		if _, err := tls.LoadX509KeyPair(n.M.Path("/var/lib/kubelet/pki/kubelet-client.crt"), n.M.Path("/var/lib/kubelet/pki/kubelet-client.key")); err != nil {
			t.Errorf("kubelet client pair after the sweep: %v", err)
		}
		checkNoTornFiles(t, n)
	})

	t.Run("master", func(t *testing.T) {
		h := newHALab(t)
		h.readinessTimeout = "20s" // alone, it waits for peers that never come
		saved := builtAgent
		builtAgent = bin
		m := h.boot(context.Background(), "i-0e2e0crash00000m", config.RoleControlPlane, haZones[0].az)
		builtAgent = saved
		vols := []string{"vol-0main" + haZones[0].member, "vol-0events" + haZones[0].member}
		var uuids map[string]string
		// The etcd clusters' volumes are claimed side by side: the first
		// attach (or mkfs) of either crashes the run, the other may be a step ahead.
		cases := []crashCase{
			{failpoint: "volumesAfterAttach", match: "*"},
			{failpoint: "volumesAfterMkfs", match: "*", after: func(t *testing.T, _ *testenv.Node) {
				uuids = volumeUUIDs(t, h, vols)
			}},
			{failpoint: "bootstrapBetweenPhases", match: "volumes"},
			// From here on nodeagent.service runs and finishes what a crashed
			// run left (its own run follows the crash at once), so only one more
			// point of this boot is reached by bootstrap: mid static pods, after
			// the first (etcd-events) of six. The PKI point is the CA-files chain's.
			{failpoint: "manifestsMidWrite", match: "etcd-events"},
		}
		d, p := crashChain(t, m.Node, "master", cases, record)
		if d > longest {
			longest, longestP = d, p
		}
		// Alone, the master waits for its etcd peers; everything before
		// etcd-health must be done.
		agent(t, m.Node, "bootstrap")
		st, _ := status(t, m.Node)
		for _, p := range st.Phases {
			if p.Name == "etcd-health" || p.Name == "readiness" {
				continue
			}
			if p.State != bootstrap.PhaseDone {
				t.Errorf("phase %s is %s after the sweep (%s)", p.Name, p.State, p.Error)
			}
		}
		// One attach per volume (a re-run finds its own attachment), and the
		// filesystem made before the crash is the one mounted now: no second mkfs.
		if got := h.env.Emu.Calls(awsemu.ServiceEC2, "AttachVolume"); got != len(vols) {
			t.Errorf("AttachVolume called %d times for %d volumes", got, len(vols))
		}
		for id, uuid := range volumeUUIDs(t, h, vols) {
			if uuid == "" || (uuids[id] != "" && uuid != uuids[id]) {
				t.Errorf("%s: filesystem UUID %q after the sweep, %q right after its mkfs: formatted twice", id, uuid, uuids[id])
			}
			if vs, _ := h.env.Emu.VolumeStatus(id); vs.InstanceID != m.InstanceID {
				t.Errorf("%s attached to %q, want %s", id, vs.InstanceID, m.InstanceID)
			}
		}
		checkNoTornFiles(t, m.Node)
	})
}

// volumeUUIDs reads each volume's filesystem UUID from its backing file's
// superblock (blkid -p, on the host).
func volumeUUIDs(t *testing.T, h *haLab, ids []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, id := range ids {
		vs, ok := h.env.Emu.VolumeStatus(id)
		if !ok {
			t.Fatalf("no volume %s", id)
		}
		// blkid exits 2 when it finds nothing: a blank volume.
		b, _ := exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", vs.BackingFile).Output()
		out[id] = strings.TrimSpace(string(b))
	}
	return out
}

// crashChain runs each case armed on n in turn and checks what a crash must
// never leave behind; it returns the longest armed run (each one recovers from
// the previous crash before its own).
func crashChain(t *testing.T, n *testenv.Node, chain string, cases []crashCase, record func(string, crashCase, time.Duration, string)) (time.Duration, string) {
	t.Helper()
	var longest time.Duration
	var longestP string
	for _, c := range cases {
		if c.before != nil {
			c.before(t, n)
		}
		armed := *n
		armed.Env = append(slices.Clone(n.Env), fmt.Sprintf("GOFAIL_FAILPOINTS=%s=return(%q)", c.failpoint, c.match))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		r, err := armed.Run(ctx, "bootstrap")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		outcome := "pass"
		switch {
		case !bytes.Contains(r.Stderr, []byte("failpoint "+c.failpoint+" (")):
			outcome = fmt.Sprintf("FAIL: never reached (exit %d)", r.Code)
			t.Errorf("%s: the run never reached the failpoint (exit %d)\n%s", c, r.Code, r.Stderr)
		case r.Code == 0:
			outcome = "FAIL: exit 0 after SIGKILL"
			t.Errorf("%s: exit 0 after the failpoint", c)
		default:
			if why := crashDamage(n); why != "" {
				outcome = "FAIL: " + why
				t.Errorf("%s: %s", c, why)
			}
		}
		if r.Wall > longest {
			longest, longestP = r.Wall, c.String()
		}
		record(chain, c, r.Wall, outcome)
		if c.after != nil {
			c.after(t, n)
		}
	}
	return longest, longestP
}

// crashDamage is what a crash must not leave: a state file that does not
// parse, or an empty file among those the agent writes.
func crashDamage(n *testenv.Node) string {
	b, err := os.ReadFile(n.M.Path("/var/lib/nodeagent/state.json"))
	if err != nil && !os.IsNotExist(err) {
		return err.Error()
	}
	if err == nil {
		var st bootstrap.State
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Sprintf("state.json is not valid: %v", err)
		}
	}
	if empty := emptyAgentFiles(n); len(empty) > 0 {
		return "empty files: " + strings.Join(empty, ", ")
	}
	return ""
}

// agentWrittenDirs hold the files the agent writes on a worker.
var agentWrittenDirs = []string{"/var/lib/nodeagent", "/etc/kubernetes", "/etc/systemd/system", "/usr/local/bin",
	"/opt/cni/bin", "/var/lib/kubelet", "/etc/containerd", "/etc/sysctl.d", "/etc/modules-load.d", "/etc/nodeagent"}

// emptyAgentFiles lists zero-length regular files under the agent's
// directories (a write torn by a crash shows as one).
func emptyAgentFiles(n *testenv.Node) []string {
	return emptyFiles(n.M.Path)
}

// emptyFiles is emptyAgentFiles with hostPath telling where the host sees a
// path of the machine.
func emptyFiles(hostPath func(string) string) []string {
	var out []string
	for _, d := range agentWrittenDirs {
		root := hostPath(d)
		_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() || strings.HasSuffix(p, ".lock") {
				return nil // lock files (flock) are empty by design
			}
			// kubelet's own state (pods, plugins) is not ours.
			if strings.HasPrefix(p, hostPath("/var/lib/kubelet/pods")) || strings.HasPrefix(p, hostPath("/var/lib/kubelet/plugins")) {
				return nil
			}
			if fi, err := e.Info(); err == nil && fi.Size() == 0 {
				out = append(out, d+":"+strings.TrimPrefix(p, root))
			}
			return nil
		})
	}
	return out
}

// checkNoTornFiles: after convergence, no file the agent writes is empty, the
// state is valid, and every installed asset has its configured hash (the
// assets phase's verify said so: it is done).
func checkNoTornFiles(t *testing.T, n *testenv.Node) {
	t.Helper()
	if why := crashDamage(n); why != "" {
		t.Error(why)
	}
}

// bootNodeWith is bootNode with another agent binary.
func bootNodeWith(t *testing.T, env *testenv.Env, inst awsemu.Instance, bin string) *testenv.Node {
	t.Helper()
	saved := builtAgent
	builtAgent = bin
	defer func() { builtAgent = saved }()
	return bootNode(t, env, inst)
}
