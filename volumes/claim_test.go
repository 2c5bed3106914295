package volumes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const testCluster = "proyecto.k8s.local"

var bothEtcd = []config.EtcdCluster{{Name: "main", ClientPort: 2379, PeerPort: 2380}, {Name: "events", ClientPort: 4002, PeerPort: 2381}}

// node is one emulated control-plane instance with its own host root, under which
// the emulator makes its device links and the phase mounts its volumes.
type node struct {
	id, az, typ string
	root        string
}

func etcdVolume(id, az, etcdCluster, member, members string) awsemu.Volume {
	return awsemu.Volume{ID: id, AvailabilityZone: az, SizeMiB: 32, Tags: map[string]string{
		"KubernetesCluster":                    testCluster,
		"kubernetes.io/cluster/" + testCluster: "owned",
		"k8s.io/etcd/" + etcdCluster:           member + "/" + members,
		"k8s.io/role/master":                   "1",
	}}
}

// emu starts the wire-level emulator with the nodes as instances and returns an
// EC2 client for it made the way the agent makes one: cloud.LoadConfig reading the
// SDK's standard environment.
func emu(t testing.TB, nodes []*node, vols []awsemu.Volume, mod func(*awsemu.World)) (*awsemu.Running, EC2) {
	t.Helper()
	return emuOpts(t, nodes, vols, mod, awsemu.Options{Seed: 7})
}

func emuOpts(t testing.TB, nodes []*node, vols []awsemu.Volume, mod func(*awsemu.World), o awsemu.Options) (*awsemu.Running, EC2) {
	t.Helper()
	needRoot(t)
	w := &awsemu.World{Volumes: vols}
	for _, n := range nodes {
		n.root = t.TempDir()
		w.Instances = append(w.Instances, awsemu.Instance{
			ID: n.id, Type: n.typ, AvailabilityZone: n.az, State: "running", DevRoot: n.root,
			Tags: map[string]string{"KubernetesCluster": testCluster},
		})
	}
	if mod != nil {
		mod(w)
	}
	r := awsemu.Start(t, w, o)
	// Registered after Start, so it runs before the emulator detaches the loops.
	t.Cleanup(func() {
		for _, n := range nodes {
			unmountUnder(t, n.root)
			releaseMountPoints(t, n.root)
		}
	})
	r.Setenv(t, "")
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r, cloud.NewEC2(cfg)
}

// unmountUnder unmounts every mount below dir, deepest first.
func unmountUnder(t testing.TB, dir string) {
	mounts, err := readMountInfo()
	if err != nil {
		t.Error(err)
		return
	}
	real, _ := filepath.EvalSymlinks(dir)
	for i := len(mounts) - 1; i >= 0; i-- {
		if m := mounts[i].MountPoint; strings.HasPrefix(m, real+"/") {
			if err := unix.Unmount(m, 0); err != nil {
				t.Errorf("unmount %s: %v", m, err)
			}
		}
	}
}

// releaseMountPoints clears the immutable guard on the mount points so the test's
// temporary directory can be removed.
func releaseMountPoints(t testing.TB, root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "mnt", "master-*"))
	for _, d := range dirs {
		if err := setImmutable(d, false); err != nil {
			t.Errorf("chattr -i %s: %v", d, err)
		}
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newPhase(t testing.TB, c EC2, n *node, etcd []config.EtcdCluster) *ClaimPhase {
	p := NewClaimPhase(Options{
		EC2: c, Root: fsutil.Root(n.root), ClusterName: testCluster, InstanceID: n.id, InstanceType: n.typ,
		AvailabilityZone: n.az, EtcdClusters: etcd, Log: testLogger(t),
		AttachTimeout: 30 * time.Second, DeviceTimeout: 10 * time.Second,
	})
	p.poll = pollConfig{
		attach: backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		device: backoff{Initial: 5 * time.Millisecond, Max: 100 * time.Millisecond},
	}
	return p
}

// converge runs the phase the way bootstrap.Runner does.
func converge(ctx context.Context, p *ClaimPhase) ([]bootstrap.Change, error) {
	changes, err := p.Check(ctx)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	if len(changes) > 0 {
		if err := p.Act(ctx); err != nil {
			return changes, fmt.Errorf("act: %w", err)
		}
	}
	if err := p.Verify(ctx); err != nil {
		return changes, fmt.Errorf("verify: %w", err)
	}
	return changes, nil
}

// assertMounted checks a claim against the host: the device is mounted at the
// mount point under the node's root, and fstab names it by its UUID.
func assertMounted(t *testing.T, n *node, c Claim) {
	t.Helper()
	target := filepath.Join(n.root, c.MountPoint)
	if st, err := checkMount(c.Device, target); err != nil || st != mountedCorrectly {
		t.Errorf("%s: %s not mounted at %s: %v", n.id, c.Device, target, err)
	}
	// A filesystem this agent made has a private root; an existing one keeps its modes.
	if fi, err := os.Stat(target); err != nil {
		t.Error(err)
	} else if c.Formatted && fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mount point %s has mode %v, want 0700", n.id, target, fi.Mode().Perm())
	}
	content, err := ProbeDevice(c.Device)
	if err != nil || content.Type != "ext4" {
		t.Errorf("%s: %s holds %v (%v), want ext4", n.id, c.Device, content, err)
	}
	fstab, _ := os.ReadFile(filepath.Join(n.root, "etc/fstab"))
	want := fmt.Sprintf("UUID=%s %s ext4 defaults,noatime,nofail 0 2\n", content.UUID, c.MountPoint)
	if !strings.Contains(string(fstab), want) {
		t.Errorf("%s: fstab lacks %q:\n%s", n.id, want, fstab)
	}
}

// TestClaimThreeZones: kops' layout, one node per zone and per zone one volume of
// each etcd cluster, plus volumes that must never be taken. Each node claims
// exactly its zone's member of main and of events; a second run changes nothing
// and attaches nothing.
func TestClaimThreeZones(t *testing.T) {
	nodes := []*node{
		{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"},  // Nitro: NVMe by-id
		{id: "i-0bbb", az: "us-east-1b", typ: "t2.medium"}, // Xen: /dev/xvdX
		{id: "i-0ccc", az: "us-east-1c", typ: "c5.large"},
	}
	var vols []awsemu.Volume
	for _, ec := range []string{"main", "events"} {
		for i, m := range []string{"a", "b", "c"} {
			vols = append(vols, etcdVolume(fmt.Sprintf("vol-0%s%s", ec[:1], m), nodes[i].az, ec, m, "a,b,c"))
		}
	}
	foreign := etcdVolume("vol-0foreign", "us-east-1a", "main", "a", "a,b,c")
	foreign.Tags["KubernetesCluster"] = "other.k8s.local"
	notMaster := etcdVolume("vol-0nomaster", "us-east-1b", "main", "b", "a,b,c")
	delete(notMaster.Tags, "k8s.io/role/master")
	malformed := etcdVolume("vol-00malformed", "us-east-1c", "main", "c", "a,b,c")
	malformed.Tags["k8s.io/etcd/main"] = "c-a,b,c" // no '/'
	vols = append(vols, foreign, notMaster, malformed)
	r, c := emu(t, nodes, vols, nil)

	ctx := context.Background()
	phases := make([]*ClaimPhase, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		phases[i] = newPhase(t, c, n, bothEtcd)
		wg.Add(1)
		go func() {
			defer wg.Done()
			changes, err := converge(ctx, phases[i])
			if err == nil && len(changes) == 0 {
				err = errors.New("first run reported no changes")
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", nodes[i].id, err)
		}
	}
	for i, n := range nodes {
		claims := phases[i].Claims()
		if len(claims) != 2 {
			t.Fatalf("%s: claims = %+v, want main and events", n.id, claims)
		}
		member := string("abc"[i])
		for j, ec := range []string{"main", "events"} {
			cl := claims[j]
			wantVol := fmt.Sprintf("vol-0%s%s", ec[:1], member)
			if cl.EtcdCluster != ec || cl.VolumeID != wantVol || cl.Member != member ||
				strings.Join(cl.Members, ",") != "a,b,c" || cl.MountPoint != "/mnt/master-"+wantVol || !cl.Formatted {
				t.Errorf("%s claim %d = %+v, want %s member %s of %s, formatted", n.id, j, cl, wantVol, member, ec)
			}
			st, _ := r.E.VolumeStatus(wantVol)
			if st.InstanceID != n.id || st.AttachState != "attached" || st.LoopDevice != cl.Device {
				t.Errorf("%s: emulator says %+v, claim says device %s", wantVol, st, cl.Device)
			}
			assertMounted(t, n, cl)
		}
	}
	var skipped []string
	for _, w := range phases[2].Warnings() {
		if strings.HasPrefix(w, "skipping ") { // others may say the mount point's filesystem cannot hold chattr +i
			skipped = append(skipped, w)
		}
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0], "vol-00malformed: malformed tag k8s.io/etcd/main") {
		t.Errorf("node c skipped %q, want only the malformed volume", skipped)
	}
	for _, id := range []string{"vol-0foreign", "vol-0nomaster", "vol-00malformed"} {
		if st, _ := r.E.VolumeStatus(id); st.InstanceID != "" {
			t.Errorf("%s was attached to %s", id, st.InstanceID)
		}
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 6 {
		t.Errorf("AttachVolume calls = %d, want 6 (one per claim)", got)
	}

	// Reboot, as far as the claim can tell: a new agent process, the volume still
	// attached and mounted. Nothing to do, nothing attached.
	attaches := r.E.Calls(awsemu.ServiceEC2, "AttachVolume")
	for i, n := range nodes {
		p := newPhase(t, c, n, bothEtcd)
		changes, err := converge(ctx, p)
		if err != nil || len(changes) != 0 {
			t.Fatalf("%s re-run: changes %v, err %v", n.id, changes, err)
		}
		if got, want := p.Claims(), phases[i].Claims(); len(got) != 2 || got[0].VolumeID != want[0].VolumeID || got[1].VolumeID != want[1].VolumeID || got[0].Formatted {
			t.Errorf("%s re-run claims = %+v, want %+v (not formatted this time)", n.id, got, want)
		}
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != attaches {
		t.Errorf("re-run made %d AttachVolume calls", got-attaches)
	}
}

// TestClaimAfterRebootRemounts: after a real reboot the mount is gone but the
// volume is still attached. The plan is a mount only; acting mounts the same
// filesystem again, with no attach and no format.
func TestClaimAfterRebootRemounts(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	r, c := emu(t, []*node{n}, []awsemu.Volume{etcdVolume("vol-0main", n.az, "main", "a", "a")}, nil)
	ctx := context.Background()
	first := newPhase(t, c, n, bothEtcd[:1])
	if _, err := converge(ctx, first); err != nil {
		t.Fatal(err)
	}
	cl := first.Claims()[0]
	marker := filepath.Join(n.root, cl.MountPoint, "member-data")
	if err := os.WriteFile(marker, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := ProbeDevice(cl.Device)
	unmountUnder(t, n.root)
	// Unmounted, the mount point takes no writes: etcd cannot start afresh on the
	// root disk in place of its volume.
	guarded := !slices.ContainsFunc(first.Warnings(), func(w string) bool { return strings.Contains(w, "not guarded") })
	if err := os.WriteFile(filepath.Join(n.root, cl.MountPoint, "member-data"), nil, 0o600); guarded && !errors.Is(err, os.ErrPermission) {
		t.Errorf("write into the unmounted mount point: %v, want permission denied", err)
	}

	p := newPhase(t, c, n, bothEtcd[:1])
	changes, err := p.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].Action != "mount" || changes[0].Target != "vol-0main" {
		t.Fatalf("plan after reboot = %v, want only a mount of vol-0main", changes)
	}
	attaches := r.E.Calls(awsemu.ServiceEC2, "AttachVolume")
	if _, err := converge(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != attaches {
		t.Errorf("remount made %d AttachVolume calls", got-attaches)
	}
	after, _ := ProbeDevice(cl.Device)
	if b, err := os.ReadFile(marker); err != nil || string(b) != "keep me" || before.UUID != after.UUID || p.Claims()[0].Formatted {
		t.Fatalf("data after remount: %q %v; UUID %s -> %s; claim %+v", b, err, before.UUID, after.UUID, p.Claims())
	}
}

// gatedEC2 holds each AttachVolume until `parties` callers are waiting on the same
// volume, so two nodes really do ask EC2 for it at the same moment.
type gatedEC2 struct {
	EC2
	gate *attachGate
}

type attachGate struct {
	mu      sync.Mutex
	parties int
	waiting map[string]chan struct{}
	count   map[string]int
}

func (g *gatedEC2) AttachVolume(ctx context.Context, in *ec2.AttachVolumeInput, o ...func(*ec2.Options)) (*ec2.AttachVolumeOutput, error) {
	id := *in.VolumeId
	g.gate.mu.Lock()
	ch, ok := g.gate.waiting[id]
	if !ok {
		ch = make(chan struct{})
		g.gate.waiting[id] = ch
	}
	g.gate.count[id]++
	if g.gate.count[id] == g.gate.parties {
		close(ch)
	}
	g.gate.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(2 * time.Second): // the other node went elsewhere: go on alone
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.EC2.AttachVolume(ctx, in, o...)
}

// TestClaimRace: two nodes in one zone attach the same volume at the same time.
// EC2 lets one win; the other is told VolumeInUse and takes the next volume.
// Every volume is attached once and formatted once.
func TestClaimRace(t *testing.T) {
	nodes := []*node{{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}, {id: "i-0bbb", az: "us-east-1a", typ: "t3.large"}}
	vols := []awsemu.Volume{
		etcdVolume("vol-01", "us-east-1a", "main", "a", "a,b"),
		etcdVolume("vol-02", "us-east-1a", "main", "b", "a,b"),
		etcdVolume("vol-03", "us-east-1a", "events", "a", "a,b"),
		etcdVolume("vol-04", "us-east-1a", "events", "b", "a,b"),
	}
	r, c := emu(t, nodes, vols, func(w *awsemu.World) { w.AttachLatency = 100 * time.Millisecond })
	gate := &attachGate{parties: 2, waiting: map[string]chan struct{}{}, count: map[string]int{}}
	ctx := context.Background()
	phases := make([]*ClaimPhase, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, n := range nodes {
		phases[i] = newPhase(t, &gatedEC2{EC2: c, gate: gate}, n, bothEtcd)
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = converge(ctx, phases[i]) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for i, n := range nodes {
		for _, cl := range phases[i].Claims() {
			if prev, ok := owner[cl.VolumeID]; ok {
				t.Errorf("%s claimed by both %s and %s", cl.VolumeID, prev, n.id)
			}
			owner[cl.VolumeID] = n.id
			if !cl.Formatted {
				t.Errorf("%s: %s was not formatted by its only owner", n.id, cl.VolumeID)
			}
			assertMounted(t, n, cl)
		}
	}
	if len(owner) != 4 {
		t.Fatalf("owners = %v, want all four volumes claimed", owner)
	}
	for _, id := range []string{"vol-01", "vol-03"} {
		if gate.count[id] != 2 {
			t.Errorf("%s: %d attach attempts, want both nodes to race for it", id, gate.count[id])
		}
	}
	// Two winners and two losers of the race, then the losers' attaches of the
	// next volumes: six in all.
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 6 {
		t.Errorf("AttachVolume calls = %d, want 6", got)
	}
}

// TestClaimStuckAttaching: a volume that never leaves "attaching" ends in a clear
// error after AttachTimeout, with exactly one AttachVolume, also across re-runs.
func TestClaimStuckAttaching(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	r, c := emu(t, []*node{n}, []awsemu.Volume{
		etcdVolume("vol-0stuck", n.az, "main", "a", "a"),
		etcdVolume("vol-0spare", n.az, "main", "a", "a"),
	}, func(w *awsemu.World) { w.StuckAttaching = []string{"vol-0spare", "vol-0stuck"} })
	ctx := context.Background()
	for run := 1; run <= 2; run++ {
		p := newPhase(t, c, n, bothEtcd[:1])
		p.o.AttachTimeout = 1500 * time.Millisecond
		start := time.Now()
		_, err := converge(ctx, p)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "volume vol-0spare still attaching to i-0aaa") || !strings.Contains(err.Error(), "not attaching it again") {
			t.Fatalf("run %d: err = %v, want a stuck-attaching error for vol-0spare", run, err)
		}
		if took > 5*time.Second {
			t.Errorf("run %d took %s; the wait is not bounded by AttachTimeout", run, took)
		}
		if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 1 {
			t.Fatalf("run %d: AttachVolume calls = %d, want 1", run, got)
		}
	}
	if st, _ := r.E.VolumeStatus("vol-0stuck"); st.InstanceID != "" {
		t.Errorf("a second volume was attached while the first was stuck: %+v", st)
	}
}

// TestClaimLostAttachAnswer: EC2 attaches the volume but its answer is lost (the
// emulator acts, then resets the connection); the SDK's retry is answered
// VolumeInUse. The claim recognises the volume as its own and does not go on to
// attach a second one.
func TestClaimLostAttachAnswer(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	r, c := emu(t, []*node{n}, []awsemu.Volume{
		etcdVolume("vol-01", n.az, "main", "a", "a"),
		etcdVolume("vol-02", n.az, "main", "a", "a"),
	}, nil)
	r.E.SetFaults(awsemu.ServiceEC2, awsemu.Faults{LoseAnswerRate: 1, Actions: []string{"AttachVolume"}, Limit: 1})
	p := newPhase(t, c, n, bothEtcd[:1])
	if _, err := converge(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if cl := p.Claims(); len(cl) != 1 || cl[0].VolumeID != "vol-01" {
		t.Fatalf("claims = %+v, want vol-01", cl)
	}
	if st, _ := r.E.VolumeStatus("vol-02"); st.InstanceID != "" {
		t.Fatalf("vol-02 was attached too: %+v", st)
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 2 {
		t.Errorf("%d AttachVolume requests, want 2 (the one whose answer was lost, the SDK's retry)", got)
	}
}

// TestClaimRefusesTwoAttached: two volumes of one etcd cluster already on this
// instance is not a state the agent makes; it refuses to choose between them.
func TestClaimRefusesTwoAttached(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	a, b := etcdVolume("vol-01", n.az, "main", "a", "a,b"), etcdVolume("vol-02", n.az, "main", "b", "a,b")
	a.AttachedTo, a.Device, a.State = n.id, "/dev/xvdu", "in-use"
	b.AttachedTo, b.Device, b.State = n.id, "/dev/xvdv", "in-use"
	_, c := emu(t, []*node{n}, []awsemu.Volume{a, b}, nil)
	p := newPhase(t, c, n, bothEtcd[:1])
	want := "etcd main: 2 of its volumes are attached to this instance (vol-01, vol-02); refusing to pick one"
	if _, err := p.Check(context.Background()); err == nil || err.Error() != want {
		t.Fatalf("check: %v, want %q", err, want)
	}
	if err := p.Act(context.Background()); err == nil || err.Error() != want {
		t.Fatalf("act: %v, want %q", err, want)
	}
}

// TestClaimThrottled: with 30% of EC2 calls throttled, every node still claims.
func TestClaimThrottled(t *testing.T) {
	nodes := []*node{
		{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"},
		{id: "i-0bbb", az: "us-east-1b", typ: "m5.large"},
		{id: "i-0ccc", az: "us-east-1c", typ: "m5.large"},
	}
	var vols []awsemu.Volume
	for _, ec := range []string{"main", "events"} {
		for i, m := range []string{"a", "b", "c"} {
			vols = append(vols, etcdVolume(fmt.Sprintf("vol-0%s%s", ec[:1], m), nodes[i].az, ec, m, "a,b,c"))
		}
	}
	r, c := emu(t, nodes, vols, func(w *awsemu.World) {
		w.AttachLatency = 50 * time.Millisecond
		w.Faults = map[string]awsemu.Faults{awsemu.ServiceEC2: {ThrottleRate: 0.3}}
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	phases := make([]*ClaimPhase, len(nodes))
	for i, n := range nodes {
		phases[i] = newPhase(t, c, n, bothEtcd)
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = converge(ctx, phases[i]) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if cl := phases[i].Claims(); len(cl) != 2 {
			t.Fatalf("%s claims = %+v", n.id, cl)
		} else {
			for _, x := range cl {
				assertMounted(t, n, x)
			}
		}
	}
	if r.E.Calls(awsemu.ServiceEC2, "DescribeVolumes") < 10 {
		t.Errorf("suspiciously few EC2 calls; were faults applied?")
	}
}

// TestClaimRefusesMultiAttach: a volume with EBS Multi-Attach enabled could be
// attached by a second instance while we hold it, so it is never claimed; the
// zone's ordinary volume is taken instead, and the refusal is a warning.
func TestClaimRefusesMultiAttach(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	multi := etcdVolume("vol-01multi", n.az, "main", "a", "a,b")
	multi.MultiAttachEnabled = true
	plain := etcdVolume("vol-02plain", n.az, "main", "b", "a,b")
	r, c := emu(t, []*node{n}, []awsemu.Volume{multi, plain}, nil)
	p := newPhase(t, c, n, bothEtcd[:1])
	if _, err := converge(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if cl := p.Claims(); len(cl) != 1 || cl[0].VolumeID != "vol-02plain" {
		t.Fatalf("claims %+v, want vol-02plain only", cl)
	}
	if st, _ := r.E.VolumeStatus("vol-01multi"); st.State != "available" {
		t.Errorf("multi-attach volume is %s, want never attached", st.State)
	}
	if !slices.ContainsFunc(p.Warnings(), func(w string) bool {
		return strings.Contains(w, "vol-01multi has Multi-Attach enabled") && strings.Contains(w, "refused")
	}) {
		t.Errorf("warnings %q lack the multi-attach refusal", p.Warnings())
	}

	// Alone in its zone, a multi-attach volume leaves the node waiting, unattached.
	n2 := &node{id: "i-0bbb", az: "us-east-1b", typ: "m5.large"}
	only := etcdVolume("vol-03multi", n2.az, "main", "c", "c")
	only.MultiAttachEnabled = true
	r2, c2 := emu(t, []*node{n2}, []awsemu.Volume{only}, nil)
	p2 := newPhase(t, c2, n2, bothEtcd[:1])
	p2.o.AttachTimeout = 300 * time.Millisecond
	if err := p2.Act(context.Background()); !bootstrap.IsWaiting(err) {
		t.Fatalf("act = %v, want waiting (no usable volume)", err)
	}
	if got := r2.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 0 {
		t.Errorf("%d AttachVolume calls for a multi-attach volume", got)
	}
}

// TestReconcileTakesOnlyItsOwnVolume: once a node's state records the volume it
// claimed, the periodic reconcile re-attaches that volume only. While it is held
// elsewhere the node waits, and another member's free volume in the same zone
// stays free.
func TestReconcileTakesOnlyItsOwnVolume(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	own := etcdVolume("vol-02own", n.az, "main", "b", "a,b")
	own.AttachedTo, own.Device, own.State = "i-0other", "/dev/xvdu", "in-use"
	other := etcdVolume("vol-01other", n.az, "main", "a", "a,b")
	r, c := emu(t, []*node{n}, []awsemu.Volume{other, own}, func(w *awsemu.World) {
		w.Instances = append(w.Instances, awsemu.Instance{ID: "i-0other", Type: "m5.large", AvailabilityZone: n.az, State: "running",
			DevRoot: t.TempDir(), Tags: map[string]string{"KubernetesCluster": testCluster}})
	})
	facts := bootstrap.Facts{EtcdMembers: []bootstrap.EtcdMemberFact{{
		Cluster: "main", Member: "b", Members: []string{"a", "b"}, VolumeID: "vol-02own", MountPoint: "/mnt/master-vol-02own",
	}}}
	ctx := context.Background()

	p := newPhase(t, c, n, bothEtcd[:1])
	p.o.AttachTimeout = 500 * time.Millisecond
	p.UseFacts(facts)
	changes, err := p.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) == 0 || !strings.Contains(changes[0].Detail, "wait for this node's own volume") ||
		!strings.Contains(changes[0].Detail, "attached to i-0other") {
		t.Fatalf("plan %v, want a wait for vol-02own", changes)
	}
	err = p.Act(ctx)
	if !bootstrap.IsWaiting(err) || !strings.Contains(err.Error(), "takes no other member's volume while it owns one") {
		t.Fatalf("act = %v, want waiting for its own volume", err)
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 0 {
		t.Fatalf("%d AttachVolume calls while its own volume is held elsewhere", got)
	}
	if st, _ := r.E.VolumeStatus("vol-01other"); st.State != "available" {
		t.Fatalf("another member's volume is %s", st.State)
	}

	// A first boot (no recorded claim) may take any free volume: vol-01other
	// sorts first. With the claim recorded, the node takes its own once free.
	fresh := newPhase(t, c, n, bothEtcd[:1])
	if ch, err := fresh.Check(ctx); err != nil || !strings.Contains(ch[0].Detail, "vol-01other") {
		t.Fatalf("first-boot plan %v %v, want vol-01other offered", ch, err)
	}
	detach(t, r, "vol-02own")
	p2 := newPhase(t, c, n, bothEtcd[:1])
	p2.UseFacts(facts)
	if _, err := converge(ctx, p2); err != nil {
		t.Fatal(err)
	}
	if cl := p2.Claims(); len(cl) != 1 || cl[0].VolumeID != "vol-02own" || cl[0].Member != "b" {
		t.Fatalf("claims %+v, want its own vol-02own", cl)
	}
	if st, _ := r.E.VolumeStatus("vol-01other"); st.State != "available" {
		t.Errorf("another member's volume is %s", st.State)
	}
}

// detach detaches a volume through the emulator's EC2 API, as an operator or a
// terminated instance would, and waits until it is available.
func detach(t *testing.T, r *awsemu.Running, id string) {
	t.Helper()
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cloud.NewEC2(cfg).DetachVolume(context.Background(), &ec2.DetachVolumeInput{VolumeId: &id}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _ := r.E.VolumeStatus(id); st.State == "available" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not available 10s after detaching", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
