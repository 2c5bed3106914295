package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/procfs"
	"github.com/nodeagent/nodeagent/manifests"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/volumes"
)

const cpCluster = "cp.example.com"

// cpCAFile and cpCAKeyFile are where the operator put the cluster CA on each
// node; spec.pki points the agent at them.
const (
	cpCAFile    = "/etc/nodeagent/ca/ca.crt"
	cpCAKeyFile = "/etc/nodeagent/ca/ca.key"
	cpSAKeyFile = "/etc/nodeagent/ca/service-account.key"
)

// cpNode is one emulated control-plane instance with its own host root.
type cpNode struct {
	member string // zone letter, which is also its etcd member name
	id, az string
	ip     string
	root   string
	cfg    string // NodeConfig file

	opts Options
	node *Node
	ps   *phaseSet
}

func (c *cpNode) runner(log *slog.Logger) *bootstrap.Runner {
	return &bootstrap.Runner{Store: c.opts.store(), Log: log, Node: c.node.Info(), ConfigHash: c.node.ConfigHash}
}

// cpPorts are the etcd ports of the test cluster. They are picked free on this
// host because the test starts a real etcd on them.
type cpPorts struct{ mainClient, mainPeer, eventsClient, eventsPeer int }

func cpNodeConfig(p cpPorts) string {
	return fmt.Sprintf(`apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: %s}
  role: ControlPlane
  kubernetesVersion: v1.34.4
  etcd:
    clusters:
    - {name: main, clientPort: %d, peerPort: %d}
    - {name: events, clientPort: %d, peerPort: %d}
  pki: {caCertFile: %s, caKeyFile: %s, serviceAccountKeyFile: %s}
`, cpCluster, p.mainClient, p.mainPeer, p.eventsClient, p.eventsPeer, cpCAFile, cpCAKeyFile, cpSAKeyFile)
}

func cpEtcdVolume(etcdCluster, member, az string) awsemu.Volume {
	return awsemu.Volume{ID: cpVolumeID(etcdCluster, member), AvailabilityZone: az, SizeMiB: cpVolumeMiB, Tags: map[string]string{
		"KubernetesCluster":          cpCluster,
		"k8s.io/role/master":         "1",
		"k8s.io/etcd/" + etcdCluster: member + "/a,b,c",
	}}
}

// cpVolumeMiB leaves room for etcd's preallocated 64 MiB WAL segment and its
// database; the backing files are sparse.
const cpVolumeMiB = 256

func cpVolumeID(etcdCluster, member string) string { return "vol-0" + etcdCluster + member }

// cpPhases picks the named phases out of the node's boot, in boot order, so the
// test runs exactly what the agent composed.
func cpPhases(t *testing.T, ps *phaseSet, names ...string) []bootstrap.Phase {
	t.Helper()
	var out []bootstrap.Phase
	for _, p := range ps.phases {
		if slices.Contains(names, p.Name()) {
			out = append(out, p)
		}
	}
	if len(out) != len(names) {
		got := make([]string, len(ps.phases))
		for i, p := range ps.phases {
			got[i] = p.Name()
		}
		t.Fatalf("phases %v not all in the agent's boot %v", names, got)
	}
	return out
}

func cpLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return quietLog()
}

func cpFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestControlPlaneThroughAgent boots the etcd-bearing part of a control-plane node
// through the agent's own composition (LoadNode, buildPhases, bootstrap.Runner)
// against the wire-level AWS emulator, with real loop devices, real mounts and a
// real etcd started from the certificates the agent issued:
//
//   - nodes a and b boot volumes, pki and manifests at the same time, each claims
//     its own zone's main and events volume, formats it once and mounts it;
//   - etcd-health is done once etcd runs on node a's volume, and the node's status
//     can be published into it;
//   - a second run, in the same process and in a new one, changes nothing;
//   - `nodeagent status` shows the volumes and the manifests.
func TestControlPlaneThroughAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: loop devices and mounts")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed", tool)
		}
	}
	ctx := context.Background()
	log := cpLog()
	top := t // etcd lives until the whole test ends, not just the subtest that starts it

	nodes := []*cpNode{
		{member: "a", id: "i-0cpa", az: "us-east-1a", ip: "10.0.1.10"},
		{member: "b", id: "i-0cpb", az: "us-east-1b", ip: "10.0.2.10"},
		{member: "c", id: "i-0cpc", az: "us-east-1c", ip: "10.0.3.10"},
	}
	a, b := nodes[0], nodes[1]
	world := &awsemu.World{}
	for _, n := range nodes {
		n.root = t.TempDir()
		world.Instances = append(world.Instances, awsemu.Instance{
			ID: n.id, Type: "m5.large", AvailabilityZone: n.az, PrivateIP: n.ip, State: "running", DevRoot: n.root,
			Tags: map[string]string{"KubernetesCluster": cpCluster, "kubernetes.io/cluster/" + cpCluster: "owned"},
		})
		for _, ec := range []string{"main", "events"} {
			world.Volumes = append(world.Volumes, cpEtcdVolume(ec, n.member, n.az))
		}
	}
	emu := awsemu.Start(t, world, awsemu.Options{Seed: 11})
	// Registered after Start, so it runs before the emulator detaches the loops
	// (and after etcd, registered later, has stopped writing to the volumes).
	t.Cleanup(func() {
		for _, n := range nodes {
			cpUnmountUnder(t, n.root)
		}
	})

	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := pki.GenerateServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	ports := cpPorts{cpFreePort(t), cpFreePort(t), cpFreePort(t), cpFreePort(t)}
	for _, n := range nodes {
		root := fsutil.Root(n.root)
		if err := os.MkdirAll(filepath.Dir(root.Path(cpCAFile)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root.Path(cpCAFile), caCert, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root.Path(cpCAKeyFile), caKey, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root.Path(cpSAKeyFile), saKey, 0o600); err != nil {
			t.Fatal(err)
		}
		n.cfg = filepath.Join(t.TempDir(), "node.yaml")
		if err := os.WriteFile(n.cfg, []byte(cpNodeConfig(ports)), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// load does what `nodeagent bootstrap` does before it runs anything, as the
	// process on instance n would: the SDK environment names n's IMDS.
	load := func(t *testing.T, n *cpNode) {
		t.Helper()
		emu.Setenv(t, n.id)
		n.opts = Options{Root: fsutil.Root(n.root), ConfigFile: n.cfg, Log: log}
		node, err := LoadNode(ctx, n.opts, needIdentity)
		if err != nil {
			t.Fatalf("%s: load node: %v", n.id, err)
		}
		ps, err := buildPhases(ctx, n.opts, node)
		if err != nil {
			t.Fatalf("%s: build phases: %v", n.id, err)
		}
		n.node, n.ps = node, ps
	}
	load(t, a)
	load(t, b)
	if a.node.Identity.AvailabilityZone != a.az || a.node.Name == "" || !a.node.IsControlPlane() {
		t.Fatalf("node a identity %+v name %q", a.node.Identity, a.node.Name)
	}

	boot := []string{volumes.PhaseName, "pki", "manifests"}
	uuids := map[string]string{} // volume -> filesystem UUID after the first boot

	if !t.Run("two nodes boot volumes, pki and manifests at once", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, n := range []*cpNode{a, b} {
			phases := cpPhases(t, n.ps, boot...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := n.runner(log).Run(ctx, phases); err != nil {
					errs[i] = fmt.Errorf("%s: %w", n.id, err)
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if got := emu.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 4 {
			t.Errorf("AttachVolume calls = %d, want 4: one per node and etcd cluster", got)
		}
		for _, n := range []*cpNode{a, b} {
			st, err := n.opts.store().Load()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range boot {
				if p := st.Phase(name); p == nil || p.State != bootstrap.PhaseDone || !p.Changed {
					t.Errorf("%s: phase %s = %+v, want done with changes", n.id, name, p)
				}
			}
			claims := cpAssertClaims(t, emu, n, true)
			for _, c := range claims {
				content, err := volumes.ProbeDevice(c.Device)
				if err != nil || content.Type != "ext4" || content.UUID == "" {
					t.Errorf("%s: %s holds %+v (%v), want ext4 with a UUID", n.id, c.VolumeID, content, err)
				}
				uuids[c.VolumeID] = content.UUID
			}
			if p := st.Phase("pki"); p != nil && len(p.Warnings) > 0 {
				t.Errorf("%s: pki warnings %q", n.id, p.Warnings)
			}
			cpAssertPKI(t, n)
			cpAssertManifests(t, n, ports)
		}
		// Node c never booted: its volumes stay free for it.
		for _, ec := range []string{"main", "events"} {
			if st, _ := emu.E.VolumeStatus(cpVolumeID(ec, "c")); st.InstanceID != "" {
				t.Errorf("%s is attached to %s; only node c may take it", cpVolumeID(ec, "c"), st.InstanceID)
			}
		}
	}) {
		return
	}

	if !t.Run("etcd-health is done against a real etcd on the volume", func(t *testing.T) {
		health := cpPhases(t, a.ps, "etcd-health")
		// Nothing listens yet: the phase has each local member to wait for.
		changes, err := health[0].Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var waits []string
		for _, c := range changes {
			waits = append(waits, c.Action+" "+c.Target)
		}
		if strings.Join(waits, ",") != "wait main,wait events" {
			t.Fatalf("etcd-health before etcd runs: %v, want to wait for main and events", changes)
		}
		for _, c := range a.ps.volumes.Claims() {
			client, peer := ports.mainClient, ports.mainPeer
			if c.EtcdCluster == "events" {
				client, peer = ports.eventsClient, ports.eventsPeer
			}
			cpStartEtcd(top, fsutil.Root(a.root), c, client, peer)
		}
		if err := a.runner(log).Run(ctx, health); err != nil {
			t.Fatal(err)
		}
		st, err := a.opts.store().Load()
		if err != nil {
			t.Fatal(err)
		}
		if p := st.Phase("etcd-health"); p == nil || p.State != bootstrap.PhaseDone {
			t.Fatalf("etcd-health = %+v, want done", p)
		}
		// The phase, given the claims as facts, probed the claimed member of each cluster.
		built := health[0].(*etcd.HealthPhase)
		for _, r := range built.Results() {
			if r.Err != "" || r.Health.Name != "a" || r.Name != "a" {
				t.Errorf("etcd-health result %+v, want member a healthy", r)
			}
		}
	}) {
		return
	}

	// The status goes into main, whichever order spec.etcd.clusters lists the
	// clusters in; events is never written to.
	etcdClient := func(t *testing.T, cluster string, port int) *clientv3.Client {
		t.Helper()
		tlsCfg, err := pki.ClientTLS(fsutil.Root(a.root), cluster)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: []string{fmt.Sprintf("https://127.0.0.1:%d", port)}, TLS: tlsCfg,
			DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	for _, tc := range []struct {
		name  string
		order []string
	}{{"main listed first", []string{"main", "events"}}, {"events listed first", []string{"events", "main"}}} {
		t.Run("status is published into main etcd/"+tc.name, func(t *testing.T) {
			node := *a.node
			cfg := *node.Config
			ec := *cfg.Spec.Etcd
			ec.Clusters = nil
			for _, name := range tc.order {
				i := slices.IndexFunc(a.node.Config.Spec.Etcd.Clusters, func(c config.EtcdCluster) bool { return c.Name == name })
				ec.Clusters = append(ec.Clusters, a.node.Config.Spec.Etcd.Clusters[i])
			}
			cfg.Spec.Etcd = &ec
			node.Config = &cfg

			pubCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			mainCli := etcdClient(t, "main", ports.mainClient)
			key := etcd.KeyPrefix + a.node.Name
			if r, err := mainCli.Get(pubCtx, key); err != nil || len(r.Kvs) != 0 {
				t.Fatalf("before publishing, main holds %s (%v)", key, err)
			}
			pub := newEtcdPublisher(a.opts, &node, log)
			if err := pub.tryPublish(pubCtx, a.opts.store()); err != nil {
				pub.close()
				t.Fatal(err)
			}
			resp, err := mainCli.Get(pubCtx, key)
			pub.close()
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) != 1 {
				t.Fatalf("main etcd: %d keys %s, want 1", len(resp.Kvs), key)
			}
			kv := resp.Kvs[0]
			if kv.Lease == 0 {
				t.Errorf("%s was put without a lease: it would outlive the node", key)
			}
			var st bootstrap.State
			if err := json.Unmarshal(kv.Value, &st); err != nil {
				t.Fatalf("%s holds no state: %v", key, err)
			}
			if st.Node.Name != a.node.Name || st.Node.InstanceID != a.id || len(st.Volumes) != 2 {
				t.Errorf("published state node %+v, %d volumes; want %s (%s) with 2 volumes", st.Node, len(st.Volumes), a.node.Name, a.id)
			}
			r, err := etcdClient(t, "events", ports.eventsClient).Get(pubCtx, etcd.KeyPrefix, clientv3.WithPrefix())
			if err != nil || len(r.Kvs) != 0 {
				t.Errorf("events etcd holds %d status keys (%v), want none", len(r.Kvs), err)
			}
			// Closing revokes the lease: a node that goes away takes its key with it.
			if r, err := mainCli.Get(pubCtx, key); err != nil || len(r.Kvs) != 0 {
				t.Errorf("after close, main still holds %s (%v)", key, err)
			}
		})
	}

	// A re-run finds everything converged, both when the daemon reconciles with the
	// phases it already has and when a new agent process builds them afresh.
	for _, rerun := range []struct {
		name  string
		fresh bool
	}{{"same process", false}, {"new process", true}} {
		t.Run("re-run changes nothing/"+rerun.name, func(t *testing.T) {
			if rerun.fresh {
				load(t, a)
			}
			before := cpMtimes(t, a.root)
			attaches := emu.E.Calls(awsemu.ServiceEC2, "AttachVolume")
			if err := a.runner(log).Run(ctx, cpPhases(t, a.ps, boot...)); err != nil {
				t.Fatal(err)
			}
			st, err := a.opts.store().Load()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range boot {
				if p := st.Phase(name); p == nil || p.State != bootstrap.PhaseDone || p.Changed {
					t.Errorf("phase %s = %+v, want done without changes", name, p)
				}
			}
			if got := emu.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != attaches {
				t.Errorf("re-run made %d AttachVolume calls", got-attaches)
			}
			for _, c := range cpAssertClaims(t, emu, a, !rerun.fresh) {
				if content, _ := volumes.ProbeDevice(c.Device); content.UUID != uuids[c.VolumeID] {
					t.Errorf("%s: filesystem UUID %s -> %s: formatted again", c.VolumeID, uuids[c.VolumeID], content.UUID)
				}
			}
			after := cpMtimes(t, a.root)
			if len(before) < 8 {
				t.Fatalf("only %d managed files found: %v", len(before), before)
			}
			for f, m := range before {
				if !after[f].Equal(m) {
					t.Errorf("%s rewritten (mtime %s -> %s)", f, m.Format(time.RFC3339Nano), after[f].Format(time.RFC3339Nano))
				}
			}
		})
	}

	t.Run("status table shows volumes and manifests", func(t *testing.T) {
		st, err := a.opts.store().Load()
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := WriteStatusTable(&out, st); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		t.Logf("nodeagent status:\n%s", text)
		if !strings.Contains(text, "Cluster:   "+cpCluster+"  role: ControlPlane") || !strings.Contains(text, a.id) {
			t.Errorf("status header lacks the node:\n%s", text)
		}
		wantRows := []string{`(?m)^VOLUME\s+ETCD\s+MEMBER\s+DEVICE\s+MOUNT\s+STATE$`, `(?m)^MANIFEST\s+PATH\s+SHA256$`}
		for _, c := range a.ps.volumes.Claims() {
			wantRows = append(wantRows, fmt.Sprintf(`(?m)^%s\s+%s\s+a of a,b,c\s+%s\s+%s\s+mounted$`,
				regexp.QuoteMeta(c.VolumeID), c.EtcdCluster, regexp.QuoteMeta(c.Device), regexp.QuoteMeta(c.MountPoint)))
		}
		for _, pod := range []string{"etcd-events", "etcd-main", "kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler"} {
			wantRows = append(wantRows, fmt.Sprintf(`(?m)^%s\s+%s\s+[0-9a-f]{12}$`, pod, regexp.QuoteMeta(manifests.DefaultDir+"/"+pod+".yaml")))
		}
		for _, re := range wantRows {
			if !regexp.MustCompile(re).MatchString(text) {
				t.Errorf("status table lacks a line matching %s:\n%s", re, text)
			}
		}
	})
}

// cpAssertClaims checks that n holds exactly its own zone's volume of each etcd
// cluster, attached to it in EC2 and mounted once under its root, and returns
// the claims.
func cpAssertClaims(t *testing.T, emu *awsemu.Running, n *cpNode, wantFormatted bool) []volumes.Claim {
	t.Helper()
	claims := n.ps.volumes.Claims()
	if len(claims) != 2 {
		t.Fatalf("%s: claims %+v, want one for main and one for events", n.id, claims)
	}
	mounts := cpMountInfo(t)
	realRoot, err := filepath.EvalSymlinks(n.root)
	if err != nil {
		t.Fatal(err)
	}
	for i, ec := range []string{"main", "events"} {
		c := claims[i]
		vol := cpVolumeID(ec, n.member)
		if c.EtcdCluster != ec || c.VolumeID != vol || c.Member != n.member || strings.Join(c.Members, ",") != "a,b,c" ||
			c.MountPoint != "/mnt/master-"+vol || c.Formatted != wantFormatted {
			t.Errorf("%s: claim %+v, want %s as member %s of a,b,c at /mnt/master-%s, formatted %v", n.id, c, vol, n.member, vol, wantFormatted)
		}
		st, ok := emu.E.VolumeStatus(vol)
		if !ok || st.InstanceID != n.id || st.AttachState != "attached" || st.LoopDevice != c.Device {
			t.Errorf("%s: emulator has %+v; claim says %s on %s", vol, st, c.Device, n.id)
		}
		target := filepath.Join(realRoot, c.MountPoint)
		var at []cpMount
		for _, m := range mounts {
			if m.point == target {
				at = append(at, m)
			}
		}
		if len(at) != 1 || at[0].source != c.Device || at[0].fstype != "ext4" {
			t.Errorf("%s: mounts at %s = %+v, want %s (ext4) once", n.id, target, at, c.Device)
		}
	}
	return claims
}

// cpAssertPKI checks the certificates etcd and the control plane need exist and
// that no private key is readable by anyone but root.
func cpAssertPKI(t *testing.T, n *cpNode) {
	t.Helper()
	root := fsutil.Root(n.root)
	p := pki.DefaultPaths()
	want := []string{p.CACert, p.APIServerCert, p.APIServerKey, p.APIServerEtcdClientCert, p.APIServerEtcdClientKey,
		p.ServiceAccountKey, p.ServiceAccountPub, p.KubeletClientCert, p.KubeletClientKey}
	for _, ec := range []string{"main", "events"} {
		want = append(want, p.EtcdServerCert(ec), p.EtcdServerKey(ec), p.EtcdPeerCert(ec), p.EtcdPeerKey(ec),
			p.EtcdClientCert(ec), p.EtcdClientKey(ec))
	}
	for _, f := range want {
		if _, err := os.Stat(root.Path(f)); err != nil {
			t.Errorf("%s: %v", n.id, err)
		}
	}
	keys := 0
	for _, dir := range []string{p.Dir, filepath.Dir(p.KubeletClientKey)} {
		err := filepath.WalkDir(root.Path(dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".key") {
				return err
			}
			keys++
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: key %s has mode %v, want 0600", n.id, path, fi.Mode().Perm())
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	if keys < 10 {
		t.Errorf("%s: %d private keys found, want at least 10", n.id, keys)
	}
}

// cpAssertManifests checks the static pods are written and that etcd-main joins
// the three members and keeps its data on the claimed volume.
func cpAssertManifests(t *testing.T, n *cpNode, ports cpPorts) {
	t.Helper()
	root := fsutil.Root(n.root)
	for _, name := range []string{"etcd-main", "etcd-events", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		if _, err := os.Stat(root.Path(manifests.DefaultDir + "/" + name + ".yaml")); err != nil {
			t.Errorf("%s: %v", n.id, err)
		}
	}
	for _, tc := range []struct {
		cluster    string
		client     int
		peer       int
		hostPrefix string
	}{{"main", ports.mainClient, ports.mainPeer, "etcd-"}, {"events", ports.eventsClient, ports.eventsPeer, "etcd-events-"}} {
		raw, err := os.ReadFile(root.Path(manifests.DefaultDir + "/etcd-" + tc.cluster + ".yaml"))
		if err != nil {
			continue // reported above
		}
		var pod corev1.Pod
		if err := yaml.Unmarshal(raw, &pod); err != nil || len(pod.Spec.Containers) != 1 {
			t.Errorf("%s: etcd-%s is not a one-container pod: %v", n.id, tc.cluster, err)
			continue
		}
		flags := map[string]string{}
		for _, arg := range pod.Spec.Containers[0].Command[1:] {
			k, v, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
			flags[k] = v
		}
		var peers []string
		for _, m := range []string{"a", "b", "c"} {
			peers = append(peers, fmt.Sprintf("%s=https://%s%s.internal.%s:%d", m, tc.hostPrefix, m, cpCluster, tc.peer))
		}
		if got := flags["initial-cluster"]; got != strings.Join(peers, ",") {
			t.Errorf("%s: etcd-%s --initial-cluster=%s, want %s", n.id, tc.cluster, got, strings.Join(peers, ","))
		}
		if flags["name"] != n.member || flags["listen-client-urls"] != "https://0.0.0.0:"+strconv.Itoa(tc.client) {
			t.Errorf("%s: etcd-%s --name=%s --listen-client-urls=%s", n.id, tc.cluster, flags["name"], flags["listen-client-urls"])
		}
		wantData := "/mnt/master-" + cpVolumeID(tc.cluster, n.member) + "/data"
		var hostData string
		for _, v := range pod.Spec.Volumes {
			if v.Name == "etcd-data" && v.HostPath != nil {
				hostData = v.HostPath.Path
			}
		}
		if hostData != wantData {
			t.Errorf("%s: etcd-%s keeps its data in %q, want %q on the claimed volume", n.id, tc.cluster, hostData, wantData)
		}
		// The directory is on the volume's filesystem, not on the root disk below it.
		var data, host unix.Stat_t
		if err := unix.Stat(root.Path(wantData), &data); err != nil {
			t.Errorf("%s: %v", n.id, err)
		} else if err := unix.Stat(n.root, &host); err != nil || data.Dev == host.Dev {
			t.Errorf("%s: %s is on the root's filesystem, not on the volume (%v)", n.id, wantData, err)
		}
	}
}

// cpStartEtcd runs one real etcd member the way the etcd-<cluster> static pod
// would: the claimed member name, the data directory on the volume and the
// certificates the pki phase issued, on loopback.
func cpStartEtcd(t *testing.T, root fsutil.Root, c volumes.Claim, clientPort, peerPort int) {
	t.Helper()
	p := pki.DefaultPaths()
	tlsInfo := func(cert, key string) transport.TLSInfo {
		return transport.TLSInfo{CertFile: root.Path(cert), KeyFile: root.Path(key), TrustedCAFile: root.Path(p.CACert), ClientCertAuth: true}
	}
	cu := url.URL{Scheme: "https", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	pu := url.URL{Scheme: "https", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg := embed.NewConfig()
	cfg.Name = c.Member
	cfg.Dir = root.Path(manifests.EtcdDataDir(manifests.EtcdMember{DataDir: c.MountPoint}))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = c.Member + "=" + pu.String()
	cfg.InitialClusterToken = "etcd-cluster-" + c.EtcdCluster + "-" + cpCluster
	cfg.ClientTLSInfo = tlsInfo(p.EtcdServerCert(c.EtcdCluster), p.EtcdServerKey(c.EtcdCluster))
	cfg.PeerTLSInfo = tlsInfo(p.EtcdPeerCert(c.EtcdCluster), p.EtcdPeerKey(c.EtcdCluster))
	// etcd logs through zap straight to stderr, and at "error" it reports its own
	// orderly shutdown; a failed start is still returned by StartEtcd.
	cfg.LogLevel = "fatal"
	if testing.Verbose() {
		cfg.LogLevel = "error"
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd %s: %v", c.EtcdCluster, err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd %s failed: %v", c.EtcdCluster, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("etcd %s not ready after 60s", c.EtcdCluster)
	}
	// etcd wrote its member directory onto the volume.
	if _, err := os.Stat(filepath.Join(cfg.Dir, "member", "wal")); err != nil {
		t.Errorf("etcd %s: no WAL on the volume: %v", c.EtcdCluster, err)
	}
}

// cpMtimes records the modification time of every file the three phases manage.
func cpMtimes(t *testing.T, root string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	for _, dir := range []string{pki.DefaultPaths().Dir, "/etc/kubernetes", manifests.DefaultDir, "/var/lib/kubelet/pki", "/etc/fstab"} {
		_ = filepath.WalkDir(fsutil.Root(root).Path(dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				out[path] = fi.ModTime()
			}
			return nil
		})
	}
	return out
}

type cpMount struct{ point, fstype, source string }

// cpMountInfo reads the kernel's mount table of this process.
func cpMountInfo(t *testing.T) []cpMount {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []cpMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, after := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(after) < 2 {
			continue
		}
		out = append(out, cpMount{point: procfs.Unescape(fields[4]), fstype: after[0], source: procfs.Unescape(after[1])})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// cpUnmountUnder unmounts everything below dir, deepest first, and clears the
// immutable guard the volumes phase sets on its mount points so the temporary
// directory can be removed.
func cpUnmountUnder(t *testing.T, dir string) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return
	}
	mounts := cpMountInfo(t)
	for i := len(mounts) - 1; i >= 0; i-- {
		if m := mounts[i].point; strings.HasPrefix(m, real+"/") {
			if err := unix.Unmount(m, 0); err != nil {
				// Something (an etcd that failed half-way) still holds it: detach it
				// lazily so the loop device can still go.
				t.Errorf("unmount %s: %v", m, err)
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
	points, _ := filepath.Glob(filepath.Join(real, "mnt", "master-*"))
	for _, p := range points {
		if err := cpClearImmutable(p); err != nil {
			t.Errorf("chattr -i %s: %v", p, err)
		}
	}
}

func cpClearImmutable(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return nil // the filesystem has no such flags: nothing was set
	}
	const immutable = 0x10 // FS_IMMUTABLE_FL
	if flags&immutable == 0 {
		return nil
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags&^immutable))
}
