//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
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

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/systemd"
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
	// run is the armed run, to its crash; recovery the unarmed run after it,
	// which must converge.
	run, recovery time.Duration
}

// convergence is what the unarmed run after a crash must show: every phase of
// its own record (State.Boot) done, except those this chain's node cannot
// finish, plus the chain's invariants.
type convergence struct {
	// unfinished phases are not judged: readiness of a worker without an API
	// server, etcd-health (and so readiness) of a master without its peers.
	unfinished []string
	// invariants lists what is wrong after the run ("" entries are ignored).
	invariants func(t *testing.T, n *testenv.Node, st *bootstrap.State) []string
	// at is where the host sees a path of the machine (nil: n.M.Path; a
	// node disk's directories are bound in, not under the machine's root).
	at func(string) string
}

// hostPath is cv.at, or n.M.Path when not set.
func (cv convergence) hostPath(n *testenv.Node) func(string) string {
	if cv.at != nil {
		return cv.at
	}
	return n.M.Path
}

// TestCrashSweep kills the agent with SIGKILL at each named failpoint of a
// node's boot (hack/failpoints.sh builds them in with go.etcd.io/gofail), then
// runs it again unarmed: every case must converge on its own. After the crash
// the state file is valid JSON and no file the agent writes is empty; after
// the unarmed run every phase is done (by that run's own record), nothing is
// empty, and the chain's invariants hold. Then the node is readied for the next
// point: the daemon the converged run started is stopped and exactly what the
// next point redoes is removed. Three chains: a worker completing an ASG
// launch hook (lifecycle, between phases, temp file before rename, mid
// download, before install), a worker holding the cluster CA as files (PKI and
// static pod points), and a lone master with two etcd volumes (mkfs, between
// phases, mid static pods; attach on its replacement). Prints failpoint →
// outcome with each case's recovery time.
func TestCrashSweep(t *testing.T) {
	bin := failpointBinary(t)
	var rows []crashRow
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "crash sweep (SIGKILL at the failpoint, then an unarmed run that must converge):\n%-10s %-48s %-9s %-9s %s\n", "chain", "failpoint", "run", "recovery", "outcome")
		points := map[string]bool{}
		var longest, longestRun crashRow
		for _, r := range rows {
			fmt.Fprintf(&b, "%-10s %-48s %-9s %-9s %s\n", r.chain, r.point, r.run.Round(100*time.Millisecond), r.recovery.Round(100*time.Millisecond), r.outcome)
			points[strings.SplitN(r.point, "=", 2)[0]] = true
			if r.recovery > longest.recovery {
				longest = r
			}
			if r.run > longestRun.run {
				longestRun = r
			}
		}
		fmt.Fprintf(&b, "FIGURE crash_sweep_failpoints %d\nFIGURE crash_sweep_cases %d\n", len(points), len(rows))
		fmt.Fprintf(&b, "FIGURE crash_sweep_longest_recovery_seconds %.1f (%s %s)\n", longest.recovery.Seconds(), longest.chain, longest.point)
		fmt.Fprintf(&b, "FIGURE crash_sweep_longest_armed_run_seconds %.1f (%s %s)\n", longestRun.run.Seconds(), longestRun.chain, longestRun.point)
		t.Log(b.String())
	}()
	record := func(r crashRow) { rows = append(rows, r) }

	t.Run("lifecycle worker", func(t *testing.T) {
		env, n := lifecycleWorker(t, "i-0e2e0crash000001", bin, nil)
		// The launch action is completed once per instance: its point comes
		// first, on the fresh node, and every later run must find it done.
		cases := []crashCase{
			{failpoint: "lifecycleBeforeRecord", match: "*"},
			{failpoint: "fsutilBeforeRename", match: "state.json", before: quiesce},
			{failpoint: "bootstrapBetweenPhases", match: "host-prep", before: quiesce},
			// runc fetched again: neither installed nor in the cache.
			{failpoint: "assetsMidDownload", match: "runc", before: removeAsset(env.Assets, "runc", true)},
			// runc installed again from the cache.
			{failpoint: "assetsBeforeInstall", match: "runc", before: removeAsset(env.Assets, "runc", false)},
			{failpoint: "bootstrapBetweenPhases", match: "assets", before: quiesce},
			{failpoint: "fsutilBeforeRename", match: ".service", before: redo(systemd.UnitDir + "/nodeagent.service")},
			{failpoint: "bootstrapBetweenPhases", match: "container-runtime", before: quiesce},
			{failpoint: "bootstrapBetweenPhases", match: "images", before: quiesce},
			{failpoint: "bootstrapBetweenPhases", match: "kubelet", before: quiesce},
			{failpoint: "bootstrapBetweenPhases", match: "nodeagent-service", before: quiesce},
		}
		crashChain(t, n, "lifecycle", cases, record, convergence{invariants: continuedOnce(env)})
	})

	t.Run("worker with CA files", func(t *testing.T) {
		n, caCert := fileCAWorker(t, startEnv(t, &awsemu.World{}), "i-0e2e0crash000002", bin, nil)
		cases := []crashCase{
			{failpoint: "bootstrapBetweenPhases", match: "images"},
			{failpoint: "pkiAfterKeyBeforeCert", match: "kubelet-client", before: redo("/var/lib/kubelet/pki/kubelet-client.*")},
			{failpoint: "bootstrapBetweenPhases", match: "pki", before: quiesce},
			{failpoint: "manifestsMidWrite", match: "*", before: redo("/etc/kubernetes/manifests/*")},
			{failpoint: "bootstrapBetweenPhases", match: "manifests", before: quiesce},
		}
		// No API server here: readiness waits for a Node object that never comes.
		crashChain(t, n, "ca-files", cases, record, convergence{unfinished: []string{"readiness"}, invariants: func(t *testing.T, n *testenv.Node, _ *bootstrap.State) []string {
			// A pair a crash split is re-issued: key and certificate match,
			// and the certificate is the cluster CA's.
			return []string{issuedPair(n.M.Path, "/var/lib/kubelet/pki/kubelet-client", caCert)}
		}})
	})

	t.Run("master", func(t *testing.T) {
		h := newHALab(t)
		// Alone, it waits for peers that never come: etcd-health and
		// readiness are not judged, so their waits are kept short.
		h.readinessTimeout = "2s"
		bootMaster := func(id string) *haNode { return h.bootWith(bin, id, haZones[0].az) }
		m := bootMaster("i-0e2e0crash00000m")
		vols := []string{"vol-0main" + haZones[0].member, "vol-0events" + haZones[0].member}
		uuids := map[string]string{}
		attaches := len(vols) // AttachVolume calls so far: one per volume per node
		cv := convergence{unfinished: loneMasterUnfinished, invariants: volumeInvariants(h, vols, uuids, attaches, m.InstanceID)}
		// The etcd clusters' volumes are claimed side by side: the first mkfs
		// of either crashes the run (the other may be a step ahead); its
		// filesystem's UUID is read from the superblock right then.
		cases := []crashCase{
			{failpoint: "volumesAfterMkfs", match: "*", after: func(t *testing.T, _ *testenv.Node) {
				for id, uuid := range volumeUUIDs(t, h, vols) {
					uuids[id] = uuid
				}
			}},
			{failpoint: "bootstrapBetweenPhases", match: "volumes", before: quiesce},
			// After the first (etcd-events) of six; one removed manifest makes
			// the phase write them all again.
			{failpoint: "manifestsMidWrite", match: "etcd-events", before: redo("/etc/kubernetes/manifests/kube-scheduler.yaml")},
		}
		crashChain(t, m.Node, "master", cases, record, cv)
		if t.Failed() {
			return
		}
		// A volume is attached once per instance: the attach point is swept on
		// the master's replacement (the instance terminated, its volumes
		// detached), which must take the same filesystems without a mkfs.
		h.kill(context.Background(), m)
		m = bootMaster("i-0e2e0crash0000rm")
		attaches += len(vols)
		cv.invariants = volumeInvariants(h, vols, uuids, attaches, m.InstanceID)
		crashChain(t, m.Node, "master", []crashCase{{failpoint: "volumesAfterAttach", match: "*"}}, record, cv)
	})
}

// lifecycleWorker boots a standalone worker of the Auto Scaling group
// "nodes", whose launch hook it completes (binds: see bootNodeBinds).
func lifecycleWorker(t *testing.T, id, bin string, binds []string) (*testenv.Env, *testenv.Node) {
	t.Helper()
	env := startEnv(t, &awsemu.World{LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: "nodes", Name: "nodeagent-ready"}}})
	inst := workerInstance(t, id, workerUserData(t, env, func(c *config.NodeConfig) {
		c.Spec.Readiness.LifecycleHook = "nodeagent-ready"
	}))
	inst.AutoScalingGroup = "nodes"
	return env, bootNodeBinds(t, env, inst, bin, binds)
}

// continuedOnce is the lifecycle worker's invariant: Auto Scaling takes one
// completion (a second CONTINUE is refused by the emulator, and counted by
// the agent only as its own earlier one), and the state records it.
func continuedOnce(env *testenv.Env) func(*testing.T, *testenv.Node, *bootstrap.State) []string {
	return func(_ *testing.T, n *testenv.Node, st *bootstrap.State) []string {
		var bad []string
		if got := env.Emu.LifecycleResults()[n.InstanceID]; got != "CONTINUE" {
			bad = append(bad, fmt.Sprintf("launch action result %q, want CONTINUE", got))
		}
		if st.Readiness.Lifecycle != "CONTINUE" {
			bad = append(bad, fmt.Sprintf("state records lifecycle %q, want CONTINUE", st.Readiness.Lifecycle))
		}
		return bad
	}
}

// loneMasterUnfinished are the phases a master alone cannot finish: etcd
// waits for its peers, readiness for an API server with quorum behind it.
var loneMasterUnfinished = []string{"etcd-health", "readiness"}

// bootWith boots a master in az running the agent bin.
func (h *haLab) bootWith(bin, id, az string) *haNode {
	h.t.Helper()
	saved := builtAgent
	builtAgent = bin
	defer func() { builtAgent = saved }()
	return h.boot(context.Background(), id, config.RoleControlPlane, az)
}

// volumeInvariants are a master chain's: AttachVolume called attaches times
// in all (one per volume per node), each volume attached to instanceID with a
// filesystem, and that filesystem the first one seen on it (uuids, by volume:
// filled in as filesystems first show): never formatted twice.
func volumeInvariants(h *haLab, vols []string, uuids map[string]string, attaches int, instanceID string) func(*testing.T, *testenv.Node, *bootstrap.State) []string {
	return func(t *testing.T, _ *testenv.Node, _ *bootstrap.State) []string {
		var bad []string
		if got := h.env.Emu.Calls(awsemu.ServiceEC2, "AttachVolume"); got != attaches {
			bad = append(bad, fmt.Sprintf("AttachVolume called %d times, want %d (one per volume per node)", got, attaches))
		}
		for id, uuid := range volumeUUIDs(t, h, vols) {
			switch {
			case uuid == "":
				bad = append(bad, id+": no filesystem")
			case uuids[id] == "":
				uuids[id] = uuid
			case uuid != uuids[id]:
				bad = append(bad, fmt.Sprintf("%s: filesystem UUID %s, %s before: formatted twice", id, uuid, uuids[id]))
			}
			if vs, _ := h.env.Emu.VolumeStatus(id); vs.InstanceID != instanceID {
				bad = append(bad, fmt.Sprintf("%s attached to %q, want %s", id, vs.InstanceID, instanceID))
			}
		}
		return bad
	}
}

// quiesce stops the daemon a converged run started, so that the next armed
// run, not the daemon, does the work that reaches its point.
func quiesce(t *testing.T, n *testenv.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, errOut, err := n.M.Exec(ctx, nil, "systemctl", "stop", "nodeagent.service"); err != nil {
		t.Fatalf("stop nodeagent.service: %v: %s", err, errOut)
	}
}

// redo quiesces the node and removes the files matching each glob (at least
// one each), for the next run to write them again.
func redo(globs ...string) func(*testing.T, *testenv.Node) {
	return redoAt(nil, globs...)
}

// redoAt is redo on a node whose host paths at gives (nil: n.M.Path).
func redoAt(at func(string) string, globs ...string) func(*testing.T, *testenv.Node) {
	return func(t *testing.T, n *testenv.Node) {
		t.Helper()
		quiesce(t, n)
		if at == nil {
			at = n.M.Path
		}
		for _, g := range globs {
			ms, err := filepath.Glob(at(g))
			if err != nil || len(ms) == 0 {
				t.Fatalf("nothing to remove at %s (%v)", g, err)
			}
			for _, m := range ms {
				if err := os.Remove(m); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// removeAsset quiesces the node and removes the installed asset named name
// (one of list, the node's config), and with uncached its verified copy in
// the asset cache too.
func removeAsset(list []config.Asset, name string, uncached bool) func(*testing.T, *testenv.Node) {
	return removeAssetAt(nil, list, name, uncached)
}

// removeAssetAt is removeAsset on a node some of whose directories are on a
// disk of their own (at: where the host sees a path of the machine; nil for
// the machine's root directory).
func removeAssetAt(at func(string) string, list []config.Asset, name string, uncached bool) func(*testing.T, *testenv.Node) {
	return func(t *testing.T, n *testenv.Node) {
		t.Helper()
		quiesce(t, n)
		where := at
		if where == nil {
			where = n.M.Path
		}
		i := slices.IndexFunc(list, func(a config.Asset) bool { return a.Name == name && a.Archive == nil })
		if i < 0 {
			t.Fatalf("the node's config has no plain asset %s", name)
		}
		paths := []string{assets.InstallPath(list[i])}
		if uncached {
			paths = append(paths, filepath.Join(assets.DefaultCacheDir, strings.ToLower(list[i].SHA256)))
		}
		for _, p := range paths {
			if err := os.Remove(where(p)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// issuedPair says what is wrong with the key/certificate pair at base.{crt,key}
// (at: where the host sees a path of the machine):
// they must match, and the certificate must verify against caPEM ("" when all is well).
func issuedPair(at func(string) string, base string, caPEM []byte) string {
	pair, err := tls.LoadX509KeyPair(at(base+".crt"), at(base+".key"))
	if err != nil {
		return fmt.Sprintf("%s pair: %v", base, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Sprintf("%s.crt: %v", base, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return "the cluster CA does not parse"
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Sprintf("%s.crt is not the cluster CA's: %v", base, err)
	}
	return ""
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

// crashChain runs each case on n: the armed run, to its crash, and the checks
// of what a crash must never leave; then an unarmed run that must converge as
// cv says, whose wall time is the case's recovery.
func crashChain(t *testing.T, n *testenv.Node, chain string, cases []crashCase, record func(crashRow), cv convergence) {
	t.Helper()
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
		row := crashRow{chain: chain, point: c.String(), outcome: "pass", run: r.Wall}
		switch {
		case !bytes.Contains(r.Stderr, []byte("failpoint "+c.failpoint+" (")):
			row.outcome = fmt.Sprintf("FAIL: never reached (exit %d)", r.Code)
			t.Errorf("%s: the run never reached the failpoint (exit %d)\n%s", c, r.Code, r.Stderr)
		case r.Code == 0:
			row.outcome = "FAIL: exit 0 after SIGKILL"
			t.Errorf("%s: exit 0 after the failpoint", c)
		default:
			if why := crashDamage(n); why != "" {
				row.outcome = "FAIL: " + why
				t.Errorf("%s: %s", c, why)
			}
		}
		if c.after != nil {
			c.after(t, n)
		}
		row.recovery, row.outcome = convergeAfter(t, n, cv, c, "the crash", row.outcome)
		record(row)
	}
}

// convergeAfter runs the unarmed bootstrap that must converge after case c's
// cut (what names the cut in errors), and returns its time and the case's
// outcome: unchanged, or failed when an outcome that was a pass did not converge.
func convergeAfter(t *testing.T, n *testenv.Node, cv convergence, c crashCase, what, outcome string) (time.Duration, string) {
	t.Helper()
	took, why := converge(t, n, cv)
	if why != "" {
		t.Errorf("%s: the unarmed run after %s did not converge: %s", c, what, why)
		if outcome == "pass" {
			outcome = "FAIL: not converged: " + why
		}
	}
	return took, outcome
}

// converge runs bootstrap unarmed and says what did not converge ("" when
// all did). The run is judged by its own record, State.Boot: the daemon it
// leaves running starts a reconcile at once, which rewrites State.Phases but
// never Boot.
func converge(t *testing.T, n *testenv.Node, cv convergence) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	r := run(t, n, "bootstrap")
	var bad []string
	at := cv.hostPath(n)
	st, err := readStateAt(at)
	switch {
	case err != nil:
		bad = append(bad, err.Error())
	case st.Boot == nil || st.Boot.StartedAt.Before(start):
		bad = append(bad, "the run left no boot record of its own")
	default:
		var took []string
		for _, p := range st.Boot.Phases {
			if d := time.Duration(p.Duration); d >= 500*time.Millisecond {
				took = append(took, fmt.Sprintf("%s %s", p.Name, d.Round(100*time.Millisecond)))
			}
		}
		t.Logf("unarmed run: exit %d in %s (%s)", r.Code, r.Wall.Round(100*time.Millisecond), strings.Join(took, ", "))
		for _, p := range st.Boot.Phases {
			if !slices.Contains(cv.unfinished, p.Name) && p.State != bootstrap.PhaseDone {
				bad = append(bad, fmt.Sprintf("phase %s is %s", p.Name, p.State))
			}
		}
		if len(cv.unfinished) == 0 && r.Code != 0 {
			bad = append(bad, fmt.Sprintf("exit %d", r.Code))
		}
		if cv.invariants != nil {
			for _, why := range cv.invariants(t, n, st) {
				if why != "" {
					bad = append(bad, why)
				}
			}
		}
	}
	if why := crashDamageAt(at); why != "" {
		bad = append(bad, why)
	}
	if len(bad) > 0 && st != nil && st.Error != "" {
		bad = append(bad, "state error: "+st.Error)
	}
	return r.Wall, strings.Join(bad, "; ")
}

// readState reads the node's state file from the host.
func readState(n *testenv.Node) (*bootstrap.State, error) { return readStateAt(n.M.Path) }

// readStateAt is readState with at telling where the host sees a path of the machine.
func readStateAt(at func(string) string) (*bootstrap.State, error) {
	b, err := os.ReadFile(at("/var/lib/nodeagent/state.json"))
	if err != nil {
		return nil, err
	}
	var st bootstrap.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state.json is not valid: %w", err)
	}
	return &st, nil
}

// crashDamage is what a crash must not leave: a state file that does not
// parse, or an empty file among those the agent writes.
func crashDamage(n *testenv.Node) string { return crashDamageAt(n.M.Path) }

// crashDamageAt is crashDamage with at telling where the host sees a path of the machine.
func crashDamageAt(at func(string) string) string {
	if _, err := readStateAt(at); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err.Error()
	}
	if empty := emptyFiles(at); len(empty) > 0 {
		return "empty files: " + strings.Join(empty, ", ")
	}
	return ""
}

// agentWrittenDirs hold the files the agent writes on a worker.
var agentWrittenDirs = []string{"/var/lib/nodeagent", "/etc/kubernetes", "/etc/systemd/system", "/usr/local/bin",
	"/opt/cni/bin", "/var/lib/kubelet", "/etc/containerd", "/etc/sysctl.d", "/etc/modules-load.d", "/etc/nodeagent"}

// emptyFiles lists zero-length regular files under the agent's directories
// (a write torn by a crash shows as one), hostPath telling where the host sees
// a path of the machine.
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
