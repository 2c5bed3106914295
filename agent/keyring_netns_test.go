package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/iam"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/netns"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

// The key rotation runs between real hosts: one network namespace per node,
// each node this test binary re-executed inside it (TestMain), running the
// daemon's gossip seat as `nodeagent run` does (LoadNode, startGossip) against
// the emulated AWS account served on the lab's bridge, with instance-profile
// credentials from IMDS and the IAM policies of iam/.

const netnsChildEnv = "AGENT_NETNS_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(netnsChildEnv); mode != "" {
		if err := runKeyringChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "netns child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childReport is what a child writes every 100 ms for the test to read.
type childReport struct {
	Self    string               `json:"self"`
	Keyring gossip.KeyringStatus `json:"keyring"`
	Status  gossip.Status        `json:"status"`
	Events  map[string]uint64    `json:"events"`
	Members []ClusterMember      `json:"members"`
	Hosts   map[string][]string  `json:"-"`
}

const rotCluster = "rot.k8s.local"

// TestKeyRotationInNamespaces: a five-node ring (two masters, three workers
// whose instance profile is denied every EC2 call) rotates its key through the
// state store while two workers keep changing the names they publish. No member
// leaves or dies, no name leaves any hosts file, every node ends on the new
// generation (status shows it); a worker stopped before the rotation boots
// after it with the new key; a node holding only the removed key is refused.
func TestKeyRotationInNamespaces(t *testing.T) {
	if why := netns.Available(); why != "" {
		t.Fatal(why)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const n = 6 // 0-1 masters, 2-4 workers, 5 the holder of the removed key
	lab := netns.New(t, fmt.Sprintf("k%d", os.Getpid()%100000), "10.97.0", n)

	oldKey := []byte("0123456789abcdef0123456789abcdef")
	tags := map[string]string{"KubernetesCluster": rotCluster, "kubernetes.io/cluster/" + rotCluster: "owned"}
	world := &awsemu.World{
		Buckets:  map[string]map[string]string{"kops-state": {rotCluster + "/" + cloud.GossipKeyKey: string(oldKey) + "\n"}},
		Policies: map[string]string{},
	}
	for _, role := range []string{iam.Masters, iam.Nodes} {
		p, err := iam.Policy(role, "s3://kops-state/"+rotCluster, "s3://assets/assets")
		if err != nil {
			t.Fatal(err)
		}
		if role == iam.Nodes {
			p = denyAllEC2(t, p)
		}
		world.Policies[role] = p
	}
	for i, node := range lab.Nodes {
		profile := iam.Nodes
		if i < 2 {
			profile = iam.Masters
		}
		world.Instances = append(world.Instances, awsemu.Instance{ID: fmt.Sprintf("i-0rot%d", i), Type: "m5.large",
			AvailabilityZone: "us-east-1a", PrivateIP: node.IP.String(), State: "running", Tags: tags, InstanceProfile: profile})
	}
	env, err := testenv.Start(testenv.Options{
		Listen: func() (net.Listener, error) { return netns.ListenIn(lab.Bridge, "tcp", lab.Router.String()+":0") },
	}, world)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })

	dir := t.TempDir()
	type child struct {
		root, report, names string
		cmd                 *exec.Cmd
		exited              chan error
	}
	children := make([]*child, n)
	for i := range children {
		c := &child{root: filepath.Join(dir, fmt.Sprint(i))}
		c.report, c.names = filepath.Join(c.root, "report.json"), filepath.Join(c.root, "names")
		if err := os.MkdirAll(filepath.Join(c.root, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.root, "etc/hosts"), []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		role := "Node"
		if i < 2 {
			role = "ControlPlane"
			if err := os.WriteFile(c.names, []byte(config.APIInternalName(rotCluster)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(c.root, "node.yaml"), fmt.Appendf(nil, `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: %s, stateStore: s3://kops-state/%s}
  role: %s
  kubernetesVersion: v1.34.4
`, rotCluster, rotCluster, role), 0o600); err != nil {
			t.Fatal(err)
		}
		children[i] = c
	}
	command := func(i int, mode string, extra ...string) *exec.Cmd {
		t.Helper()
		awsEnv, err := env.AWSEnv(fmt.Sprintf("i-0rot%d", i))
		if err != nil {
			t.Fatal(err)
		}
		cmd := lab.Command(context.Background(), i, exe)
		cmd.Env = append(os.Environ(), netnsChildEnv+"="+mode, "CHILD_ROOT="+children[i].root, "CHILD_ROUTER="+lab.Router.String())
		for _, kv := range awsEnv {
			// Instance-profile credentials from IMDS, not the account's
			// root key: the role's IAM policy decides.
			if !strings.HasPrefix(kv, "AWS_ACCESS_KEY_ID=") && !strings.HasPrefix(kv, "AWS_SECRET_ACCESS_KEY=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, extra...)
		return cmd
	}
	start := func(i int, mode string, extra ...string) *child {
		t.Helper()
		c := children[i]
		os.Remove(c.report)
		cmd := command(i, mode, extra...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if !testing.Verbose() {
			cmd.Stdout, cmd.Stderr = nil, nil
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.cmd, c.exited = cmd, make(chan error, 1)
		go func() { c.exited <- cmd.Wait() }()
		return c
	}
	stop := func(i int) {
		t.Helper()
		c := children[i]
		if c.cmd == nil {
			return
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(15 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
			t.Errorf("node %d did not stop on SIGTERM", i)
		}
		c.cmd = nil
	}
	t.Cleanup(func() {
		for i := range children {
			if c := children[i]; c.cmd != nil {
				c.cmd.Process.Kill()
				<-c.exited
			}
		}
	})
	report := func(i int) (childReport, error) {
		var r childReport
		b, err := os.ReadFile(children[i].report)
		if err != nil {
			return r, err
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return r, fmt.Errorf("node %d report: %w", i, err)
		}
		hosts, err := os.ReadFile(filepath.Join(children[i].root, "etc/hosts"))
		if err != nil {
			return r, err
		}
		r.Hosts = managedHosts(hosts)
		return r, nil
	}
	ring := []int{0, 1, 2, 3, 4}
	// The masters first: the workers' only way in is the seed list they
	// publish (a worker that finds none backs off, which only costs time).
	start(0, "gossip")
	start(1, "gossip")
	pollUntil(t, 30*time.Second, "the masters' seed list", func() error {
		b, ok := env.Emu.Object("kops-state", rotCluster+"/"+cloud.GossipSeedsKey)
		if want := fmt.Sprintf("%q,%q", lab.Nodes[0].IP, lab.Nodes[1].IP); !ok || !strings.Contains(string(b), want) {
			return fmt.Errorf("seed list %q, want both masters", b)
		}
		return nil
	})
	for _, i := range ring[2:] {
		start(i, "gossip")
	}
	// Every node knows every node's name, and the masters' API name.
	names := map[int]string{}
	hasAll := func(idx []int, want []string) error {
		for _, i := range idx {
			r, err := report(i)
			if err != nil {
				return err
			}
			for _, name := range want {
				if len(r.Hosts[name]) == 0 {
					return fmt.Errorf("node %d (%s): no %s in its hosts file", i, r.Self, name)
				}
			}
		}
		return nil
	}
	formed := time.Now()
	pollUntil(t, 60*time.Second, "ring of five formed, workers included", func() error {
		for _, i := range ring {
			r, err := report(i)
			if err != nil {
				return err
			}
			names[i] = r.Self
		}
		want := []string{config.APIInternalName(rotCluster)}
		for _, i := range ring {
			want = append(want, names[i])
		}
		return hasAll(ring, want)
	})
	t.Logf("five namespaces formed a ring in %v; the workers (every EC2 call denied) found it through the state store's seed list", time.Since(formed).Round(time.Millisecond))
	if got := env.Emu.Calls(awsemu.ServiceEC2, "DescribeInstances"); got == 0 {
		t.Error("the masters never listed instances: the test does not show who may call EC2")
	}

	// Worker 4 goes down before the rotation.
	stop(4)
	stable := []string{config.APIInternalName(rotCluster), names[0], names[1], names[2], names[3]}
	pollUntil(t, 30*time.Second, "node 4 gone from every hosts file", func() error {
		for _, i := range ring[:4] {
			r, err := report(i)
			if err != nil {
				return err
			}
			if len(r.Hosts[names[4]]) != 0 {
				return fmt.Errorf("node %d still lists %s", i, names[4])
			}
		}
		return nil
	})
	baseline := map[int]uint64{}
	for _, i := range ring[:4] {
		r, err := report(i)
		if err != nil {
			t.Fatal(err)
		}
		baseline[i] = r.Events["dead"] + r.Events["left"]
	}

	// The rotation, as `nodeagent gossip rotate-key --wait 1m` on master 0:
	// it requests, then follows the document until the rotation is done.
	rot := command(0, "rotate", "CHILD_WAIT=1m")
	var rotOut bytes.Buffer
	rot.Stdout = &rotOut
	if err := rot.Start(); err != nil {
		t.Fatal(err)
	}
	rotDone := make(chan error, 1)
	go func() { rotDone <- rot.Wait() }()
	t.Cleanup(func() {
		rot.Process.Kill()
		<-rotDone
	})
	doc := func() (gossip.KeyringDoc, error) {
		b, ok := env.Emu.Object("kops-state", rotCluster+"/"+cloud.GossipKeyringKey)
		if !ok {
			return gossip.KeyringDoc{}, errors.New("no keyring document")
		}
		return gossip.DecodeKeyring(b)
	}
	var d gossip.KeyringDoc
	pollUntil(t, 30*time.Second, "the rotation requested", func() (err error) {
		d, err = doc()
		return err
	})
	if d.Step() != "install" || d.Generation != 1 || !bytes.Equal(d.Primary().Key, oldKey) {
		t.Fatalf("the request wrote %s; want the old key as generation 1 beside an installed generation 2", d.Encode())
	}

	// Meanwhile workers 2 and 3 keep changing their published names; no
	// stable name may leave any hosts file.
	rotStart := time.Now()
	steps := []string{"install"}
	svc := 0
	lastChange := time.Time{}
	pollUntil(t, 90*time.Second, "rotation done on every node", func() error {
		if time.Since(lastChange) > 300*time.Millisecond {
			svc++
			for _, i := range []int{2, 3} {
				if err := os.WriteFile(children[i].names, fmt.Appendf(nil, "svc-%d-%d.internal.%s", i, svc, rotCluster), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			lastChange = time.Now()
		}
		if err := hasAll(ring[:4], stable); err != nil {
			t.Fatalf("a name was lost during the rotation: %v", err)
		}
		d, err := doc()
		if err != nil {
			t.Fatalf("keyring document: %v", err)
		}
		if s := d.Step(); s != steps[len(steps)-1] {
			steps = append(steps, s)
		}
		if d.Step() != "" {
			return fmt.Errorf("document at step %q", d.Step())
		}
		for _, i := range ring[:4] {
			r, err := report(i)
			if err != nil {
				return err
			}
			if r.Keyring.Generation != 2 || !slices.Equal(r.Keyring.Generations, []uint64{2}) {
				return fmt.Errorf("node %d keyring %+v", i, r.Keyring)
			}
		}
		return nil
	})
	t.Logf("rotation to generation 2 through steps %v on four nodes in %v while workers 2 and 3 changed their names %d times", steps, time.Since(rotStart).Round(time.Millisecond), svc)
	if !slices.Equal(steps, []string{"install", "use", ""}) {
		t.Errorf("steps %v, want install, use, done", steps)
	}
	select {
	case err := <-rotDone:
		rotDone <- err // for the clean-up
		if err != nil || !strings.Contains(rotOut.String(), "the old key is removed: done") {
			t.Errorf("rotate-key --wait: %v\n%s", err, rotOut.String())
		}
		t.Logf("rotate-key --wait on master 0:\n%s", rotOut.String())
	case <-time.After(15 * time.Second):
		t.Errorf("rotate-key --wait did not return after the rotation finished:\n%s", rotOut.String())
	}
	final := []string{fmt.Sprintf("svc-2-%d.internal.%s", svc, rotCluster), fmt.Sprintf("svc-3-%d.internal.%s", svc, rotCluster)}
	pollUntil(t, 15*time.Second, "the workers' last names everywhere", func() error { return hasAll(ring[:4], append(stable, final...)) })
	for _, i := range ring[:4] {
		r, err := report(i)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Events["dead"] + r.Events["left"]; got != baseline[i] {
			t.Errorf("node %d saw %d members die or leave during the rotation", i, got-baseline[i])
		}
		if r.Status.KeyRejects != 0 {
			t.Errorf("node %d refused %d packets for their key: %s", i, r.Status.KeyRejects, r.Status.LastKeyError)
		}
	}
	// `nodeagent status -o json` shows the generation in use.
	var out bytes.Buffer
	if _, err := Status(Options{Root: fsutil.Root(children[3].root)}, &out, "json"); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Gossip struct {
			KeyGeneration uint64 `json:"keyGeneration"`
		} `json:"gossip"`
	}
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Gossip.KeyGeneration != 2 {
		t.Fatalf("status of worker 3: gossip key generation %d (%v), want 2:\n%s", st.Gossip.KeyGeneration, err, out.String())
	}

	// Worker 4, down during the rotation, boots with the new key.
	start(4, "gossip")
	pollUntil(t, 30*time.Second, "node 4 back with generation 2", func() error {
		if err := hasAll(ring, append(stable, names[4])); err != nil {
			return err
		}
		r, err := report(4)
		if err != nil {
			return err
		}
		if r.Keyring.Generation != 2 {
			return fmt.Errorf("node 4 keyring %+v", r.Keyring)
		}
		return nil
	})

	// A node holding only the removed key cannot join, and says why.
	masters := lab.Nodes[0].IP.String() + "," + lab.Nodes[1].IP.String()
	start(5, "oldkey", "CHILD_KEY="+string(oldKey), "CHILD_SEEDS="+masters)
	pollUntil(t, 30*time.Second, "the old key's holder refused", func() error {
		r, err := report(5)
		if err != nil {
			return err
		}
		if !strings.Contains(r.Status.LastJoinError, "encryption key mismatch") {
			return fmt.Errorf("join error %q", r.Status.LastJoinError)
		}
		return nil
	})
	for _, i := range ring {
		r, err := report(i)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Hosts["ip-10-97-0-15"]) != 0 || len(r.Members) != 5 {
			t.Errorf("node %d lets the old key's holder in: %d members", i, len(r.Members))
		}
	}
}

// denyAllEC2 adds an explicit Deny of every EC2 action to a policy document.
func denyAllEC2(t *testing.T, policy string) string {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal([]byte(policy), &doc); err != nil {
		t.Fatal(err)
	}
	doc["Statement"] = append(doc["Statement"].([]any), map[string]any{"Sid": "DenyEC2", "Effect": "Deny", "Action": "ec2:*", "Resource": "*"})
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// managedHosts parses the gossip block of a hosts file: name → IPs.
func managedHosts(b []byte) map[string][]string {
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == gossip.HostsBegin:
			in = true
		case line == gossip.HostsEnd:
			in = false
		case in:
			f := strings.Fields(line)
			for _, name := range f[1:] {
				out[name] = append(out[name], f[0])
			}
		}
	}
	return out
}

// runKeyringChild is one node of TestKeyRotationInNamespaces, inside its
// namespace: "gossip" runs the daemon's gossip seat, "rotate" requests a
// rotation as the CLI does, "oldkey" runs a bare agent with a fixed key.
func runKeyringChild(mode string) error {
	root := os.Getenv("CHILD_ROOT")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", filepath.Base(root), "mode", mode)
	o := Options{Root: fsutil.Root(root), ConfigFile: filepath.Join(root, "node.yaml"), Log: log}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch mode {
	case "rotate":
		wait, err := time.ParseDuration(os.Getenv("CHILD_WAIT"))
		if err != nil {
			return err
		}
		return GossipRotateKey(ctx, o, os.Stdout, "", wait)
	case "oldkey":
		return runOldKeyChild(ctx, root, log)
	}
	keyringFollowEvery, keyringRecordEvery = time.Second, 200*time.Millisecond
	n, err := LoadNode(ctx, o, needIdentity)
	if err != nil {
		return err
	}
	readNames := func() []string {
		b, _ := os.ReadFile(filepath.Join(root, "names"))
		if s := strings.TrimSpace(string(b)); s != "" {
			return strings.Split(s, ",")
		}
		return nil
	}
	g, err := startGossip(ctx, o, n, readNames())
	if err != nil {
		return err
	}
	defer g.stop()
	for {
		if err := g.setNames(readNames()); err != nil {
			return err
		}
		ev := map[string]uint64{}
		for i, c := range g.agent.EventCounts() {
			ev[gossip.EventNames[i]] = c
		}
		if err := writeReport(root, childReport{Self: n.Name, Keyring: g.agent.Keyring(), Status: g.agent.Status(), Events: ev, Members: g.members()}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func runOldKeyChild(ctx context.Context, root string, log *slog.Logger) error {
	ip, err := gossip.NodeIP(net.ParseIP(os.Getenv("CHILD_ROUTER")))
	if err != nil {
		return err
	}
	a, err := gossip.Start(ctx, gossip.Config{ClusterName: rotCluster, NodeName: "ip-10-97-0-15", BindIP: ip,
		SecretKey: []byte(os.Getenv("CHILD_KEY")), Seeds: gossip.StaticSeeds(strings.Split(os.Getenv("CHILD_SEEDS"), ",")),
		SeedRefresh: time.Second, HostsFile: filepath.Join(root, "etc/hosts"), Log: log})
	if err != nil {
		return err
	}
	defer a.Shutdown()
	for {
		if err := writeReport(root, childReport{Self: "ip-10-97-0-15", Status: a.Status()}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeReport(root string, r childReport) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(root, "report.json"), b, 0o644)
}
