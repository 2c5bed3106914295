//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/iam"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/netns"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
)

// The HA harness: the seeds' cluster, for real. Every node is an nspawn machine
// with real systemd in a network namespace of its own on one bridge (the VPC
// subnet); the emulated AWS endpoints listen on the bridge's address, as AWS is
// reached from an instance; each attached EBS volume is a loop device whose node
// and NVMe link appear inside the machine it is attached to. Control planes run
// etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
// source, as static pods through containerd, from image archives the agent
// imports without a registry.

const (
	haCluster  = "ha.k8s.local"
	haSubnet   = "10.123.0"
	haHook     = "nodeagent-ready"
	haStateBkt = "state"
	// Image archives from hack/images, next to the binaries they pack.
	defaultImagesDir = "/var/cache/nodeagent-e2e/images"
	defaultK8sDir    = "/var/cache/nodeagent-e2e/k8s-v1.34.4"
	haEtcdVersion    = "3.5.35-0"
	haHelloImage     = "nodeagent.test/hello:1"
	haVolumeMiB      = 512
	haMachineSlots   = 6 // 3 masters, a worker, a replacement master, a spare
)

// haZones are the three AZs of the seeds' cluster, member a in the first.
var haZones = []struct{ az, member string }{{"us-east-1a", "a"}, {"us-east-1b", "b"}, {"us-east-1c", "c"}}

// haLab is one cluster's world: the network, the emulator, the machines.
type haLab struct {
	t      *testing.T
	net    *netns.Lab
	env    *testenv.Env
	linker *machineLinker
	ca     []byte // cluster CA certificate (PEM)
	images []imageEntry
	// volumeDir holds the volumes' backing files (<volume-id>.img); a test may
	// put data in one before the volume is first attached.
	volumeDir string
	// readinessTimeout is the launch template's spec.readiness.timeout.
	readinessTimeout string
	// extra edits the launch templates' NodeConfig further, when set.
	extra func(*config.NodeConfig)

	mu    sync.Mutex
	nodes []*haNode
	slot  int
}

// haNode is one instance of the cluster.
type haNode struct {
	*testenv.Node
	Inst awsemu.Instance
	IP   string
	Role config.Role
}

type imageEntry struct {
	Name   string `json:"name"`
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// newHALab builds the network, the state store (CA, service-account key, gossip
// key: what `kops update cluster` writes) and the emulator with the etcd volumes
// of the three zones, tagged as kops tags them.
func newHALab(t *testing.T, extraVolumes ...awsemu.Volume) *haLab {
	t.Helper()
	if why := netns.Available(); why != "" {
		t.Fatalf("network namespaces: %s", why)
	}
	images := loadImages(t)
	bins, archives := workerAssets(t, images...)

	lab := netns.New(t, "ha", haSubnet, haMachineSlots)
	for _, n := range lab.Nodes {
		// Service IPs are routed like any off-subnet address (kube-proxy DNATs
		// them on the way out): the nodes need a default route, as in a VPC.
		if out, err := exec.Command("ip", "-n", n.NS, "route", "add", "default", "via", lab.Router.String()).CombinedOutput(); err != nil {
			t.Fatalf("default route in %s: %v: %s", n.NS, err, out)
		}
	}

	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := pki.GenerateServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	// Every instance signs with its own instance-profile credentials under the
	// shipped IAM policies: workers cannot read the CA key, masters sign for them.
	policies := map[string]string{}
	for _, role := range []string{iam.Masters, iam.Nodes} {
		if policies[role], err = iam.Policy(role, "s3://"+haStateBkt+"/"+haCluster, "s3://"+testenv.AssetsBucket+"/assets"); err != nil {
			t.Fatal(err)
		}
	}
	world := &awsemu.World{Policies: policies, Buckets: map[string]map[string]string{haStateBkt: {
		haCluster + "/" + cloud.CACertKey:            string(caCert),
		haCluster + "/" + cloud.CAKeyKey:             string(caKey),
		haCluster + "/" + cloud.ServiceAccountKeyKey: string(saKey),
		haCluster + "/" + cloud.GossipKeyKey:         "0123456789abcdef0123456789abcdef",
	}}}
	for _, z := range haZones {
		for _, ec := range []string{"main", "events"} {
			world.Volumes = append(world.Volumes, haVolume(ec, z.member, "a,b,c", z.az))
		}
		world.LifecycleHooks = append(world.LifecycleHooks, awsemu.LifecycleHook{AutoScalingGroup: masterASG(z.az), Name: haHook},
			awsemu.LifecycleHook{AutoScalingGroup: masterASG(z.az), Name: haTermHook, Transition: awsemu.TransitionTerminating})
	}
	world.LifecycleHooks = append(world.LifecycleHooks, awsemu.LifecycleHook{AutoScalingGroup: "nodes", Name: haHook},
		awsemu.LifecycleHook{AutoScalingGroup: "nodes", Name: haTermHook, Transition: awsemu.TransitionTerminating})
	world.Volumes = append(world.Volumes, extraVolumes...)

	h := &haLab{t: t, net: lab, ca: caCert, images: images, volumeDir: t.TempDir(), readinessTimeout: "15m"}
	h.linker = &machineLinker{machines: map[string]*nspawn.Machine{}}
	env, err := testenv.Start(testenv.Options{
		Binaries:  bins,
		Archives:  archives,
		VolumeDir: h.volumeDir,
		Log:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Listen:    func() (net.Listener, error) { return netns.ListenIn(lab.Bridge, "tcp", lab.Router.String()+":0") },
		Devices:   h.linker,
	}, world)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the lab, so it runs first: the machines are gone before
	// the emulator detaches their loop devices and the namespaces go.
	t.Cleanup(func() { _ = env.Close() })
	h.env = env
	t.Cleanup(h.closeNodes)
	return h
}

func masterASG(az string) string { return "master-" + az + ".masters." + haCluster }

// haVolume is one etcd volume as kops tags it: member of the members listed.
func haVolume(etcdCluster, member, members, az string) awsemu.Volume {
	return awsemu.Volume{ID: "vol-0" + etcdCluster + member, AvailabilityZone: az, SizeMiB: haVolumeMiB, Tags: map[string]string{
		"KubernetesCluster":                  haCluster,
		"kubernetes.io/cluster/" + haCluster: "owned",
		"k8s.io/role/master":                 "1",
		"k8s.io/etcd/" + etcdCluster:         member + "/" + members,
	}}
}

func imagesDir() string {
	if d := os.Getenv("NODEAGENT_E2E_IMAGES"); d != "" {
		return d
	}
	return defaultImagesDir
}

// loadImages reads what hack/images built; a missing set is a loud failure.
func loadImages(t *testing.T) []imageEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(imagesDir(), "images.json"))
	if err != nil {
		t.Fatalf("image archives: %v (run `go run ./hack/images` after hack/build-k8s.sh and hack/build-etcd.sh; make e2e does)", err)
	}
	var out []imageEntry
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("images.json: %v", err)
	}
	return out
}

// imageAssetName names an archive as a served file; the user-data moves these
// from spec.assets to spec.images.archives.
func imageAssetName(im imageEntry) string { return "image-" + strings.TrimSuffix(im.File, ".tar") }

// userData is what the launch template of a role carries.
func (h *haLab) userData(role config.Role) []byte {
	h.t.Helper()
	ud, err := testenv.UserData(testenv.NodeSpec{
		Cluster: haCluster, Role: role, Runtime: config.RuntimeContainerd,
		Assets: h.env.Assets, Kubelet: testenv.ContainerKubeletConfig(),
		Extra: func(c *config.NodeConfig) {
			c.Spec.Cluster.StateStore = "s3://" + haStateBkt + "/" + haCluster
			c.Spec.Readiness.LifecycleHook = haHook
			c.Spec.Readiness.Timeout = h.readinessTimeout
			var assets []config.Asset
			byName := map[string]imageEntry{}
			for _, im := range h.images {
				byName[imageAssetName(im)] = im
			}
			for _, a := range c.Spec.Assets {
				switch {
				case strings.HasPrefix(a.Name, "image-"):
					im := byName[a.Name]
					c.Spec.Images.Archives = append(c.Spec.Images.Archives, config.ImageArchive{Name: im.Name, URLs: a.URLs, SHA256: a.SHA256})
				default:
					assets = append(assets, a)
				}
			}
			c.Spec.Assets = assets
			// A machine's kube-proxy cannot set the host kernel's conntrack table
			// size (its network namespace is not the host's): keep the limit, as
			// kind does for its node containers.
			noConntrackMax := int32(0)
			c.Spec.KubeProxy.ConntrackMaxPerCore = &noConntrackMax
			if role == config.RoleControlPlane {
				c.Spec.Etcd = &config.Etcd{Version: haEtcdVersion}
			}
			if h.extra != nil {
				h.extra(c)
			}
		},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return ud
}

// boot starts a new instance of role in az on the next free address.
func (h *haLab) boot(ctx context.Context, id string, role config.Role, az string) *haNode {
	h.t.Helper()
	h.mu.Lock()
	slot := h.slot
	h.slot++
	h.mu.Unlock()
	if slot >= len(h.net.Nodes) {
		h.t.Fatalf("no free machine slot for %s", id)
	}
	ns := h.net.Nodes[slot]
	asg, profile := "nodes", iam.Nodes
	if role == config.RoleControlPlane {
		asg, profile = masterASG(az), iam.Masters
	}
	inst := awsemu.Instance{
		ID: id, Type: "m5.large", AvailabilityZone: az, PrivateIP: ns.IP.String(), State: "running",
		Tags:             map[string]string{"KubernetesCluster": haCluster, "kubernetes.io/cluster/" + haCluster: "owned"},
		UserData:         string(h.userData(role)),
		AutoScalingGroup: asg,
		InstanceProfile:  profile,
	}
	var console io.Writer
	if *verbose {
		console = testWriter{h.t}
	}
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	// The machine gets its slot's network namespace: its own eth0, its own
	// ports, its own iptables, as an instance has.
	n, err := testenv.BootNode(bctx, h.env, inst, builtAgent, console, ns.NS)
	if err != nil {
		h.t.Fatal(err)
	}
	h.linker.add(id, n.M)
	node := &haNode{Node: n, Inst: inst, IP: ns.IP.String(), Role: role}
	h.mu.Lock()
	h.nodes = append(h.nodes, node)
	h.mu.Unlock()
	return node
}

// kill stops a node hard, as a terminated instance: the machine dies with
// SIGKILL, then EC2 marks the instance terminated and detaches its volumes.
func (h *haLab) kill(ctx context.Context, n *haNode) {
	h.t.Helper()
	if err := n.M.Kill(ctx); err != nil {
		h.t.Fatal(err)
	}
	h.env.Emu.SetInstanceState(n.InstanceID, "terminated")
	if err := n.M.Close(); err != nil {
		h.t.Logf("remove killed machine %s: %v", n.InstanceID, err)
	}
}

func (h *haLab) closeNodes() {
	h.mu.Lock()
	nodes := h.nodes
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.M.Close(); err != nil {
				h.t.Logf("close %s: %v", n.InstanceID, err)
			}
		}()
	}
	wg.Wait()
}

// agent runs `nodeagent args...` on a node.
func (h *haLab) agent(ctx context.Context, n *haNode, args ...string) (stdout, stderr []byte, code int) {
	h.t.Helper()
	out, errOut, code, err := n.Agent(ctx, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out, errOut, code
}

// status reads `nodeagent status -o json` on a node.
func (h *haLab) status(ctx context.Context, n *haNode) (*bootstrap.State, int) {
	h.t.Helper()
	out, _, code := h.agent(ctx, n, "status", "-o", "json")
	var st bootstrap.State
	if err := json.Unmarshal(out, &st); err != nil {
		h.t.Fatalf("%s: status -o json is not a State: %v\n%s", n.InstanceID, err, out)
	}
	return &st, code
}

// dial connects from the lab's bridge, where the test stands as an operator's
// host inside the VPC would.
func (h *haLab) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netns.DialerIn(h.net.Bridge)(ctx, network, addr)
}

// etcdClient talks to the given members of one etcd cluster with the client
// certificate the agent issued on master n.
func (h *haLab) etcdClient(n *haNode, cluster string, endpoints ...string) *clientv3.Client {
	h.t.Helper()
	cli, err := h.newEtcdClient(n, cluster, endpoints)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// tryEtcdClient is etcdClient for a cluster still forming: nil until master n
// has its client certificate.
func (h *haLab) tryEtcdClient(n *haNode, cluster string, masters []*haNode) *clientv3.Client {
	var eps []string
	for _, m := range masters {
		eps = append(eps, net.JoinHostPort(m.IP, "2379"))
	}
	cli, err := h.newEtcdClient(n, cluster, eps)
	if err != nil {
		return nil
	}
	return cli
}

func (h *haLab) newEtcdClient(n *haNode, cluster string, endpoints []string) (*clientv3.Client, error) {
	tlsCfg, err := pki.ClientTLS(fsutil.Root(n.M.Dir), cluster)
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{
		Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return h.dial(ctx, "tcp", addr)
		})},
	})
}

// apiClient is an HTTPS client for the API servers, with master n's
// apiserver-kubelet-client identity (system:masters), that reaches addr through
// the lab and checks the serving certificate for api.internal.<cluster>.
func (h *haLab) apiClient(n *haNode, apiserverIP string) *http.Client {
	h.t.Helper()
	c, err := h.newAPIClient(n, apiserverIP)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// tryAPIClient is apiClient while master n may not have its certificate yet.
func (h *haLab) tryAPIClient(n *haNode, apiserverIP string) *http.Client {
	c, err := h.newAPIClient(n, apiserverIP)
	if err != nil {
		return nil
	}
	return c
}

func (h *haLab) newAPIClient(n *haNode, apiserverIP string) (*http.Client, error) {
	root := fsutil.Root(n.M.Dir)
	cert, err := tls.LoadX509KeyPair(root.Path("/etc/kubernetes/pki/apiserver-kubelet-client.crt"), root.Path("/etc/kubernetes/pki/apiserver-kubelet-client.key"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca)
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: config.APIInternalName(haCluster)},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return h.dial(ctx, network, net.JoinHostPort(apiserverIP, "443"))
		},
	}}, nil
}

// apiGet GETs path from the API server at ip and decodes JSON into out; it
// returns the HTTP status.
func apiGet(ctx context.Context, c *http.Client, path string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+config.APIInternalName(haCluster)+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s: %w", path, err)
		}
	}
	return resp.StatusCode, nil
}

// apiSend POSTs (or PUTs) a JSON or YAML object and returns the status code and body.
func apiSend(ctx context.Context, c *http.Client, method, path string, obj []byte) (int, []byte, error) {
	body, err := yaml.YAMLToJSON(obj)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+config.APIInternalName(haCluster)+path, strings.NewReader(string(body)))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// eventually polls cond until it holds or the deadline passes; the last reason
// it gave is the failure message.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := "never checked"
	for time.Since(start) < timeout {
		ok, why := cond()
		if ok {
			return time.Since(start)
		}
		last = why
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("%s: not after %s: %s", what, timeout, last)
	return 0
}

// machineLinker shows an attached volume inside the instance's machine: the loop
// device's node in its /dev and the NVMe by-id link to it, as the kernel and udev
// of an EC2 instance would make them.
type machineLinker struct {
	mu       sync.Mutex
	machines map[string]*nspawn.Machine
}

func (l *machineLinker) add(id string, m *nspawn.Machine) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.machines[id] = m
}

func (l *machineLinker) machine(id string) *nspawn.Machine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.machines[id]
}

// machineRegistration bounds how long an attach waits for the instance's
// machine to be registered: an image's own boot unit may claim its volumes
// before the test that booted the machine has added it.
const machineRegistration = time.Minute

func (l *machineLinker) Link(instanceID, loop, link string) error {
	var m *nspawn.Machine
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, machineRegistration, true,
		func(context.Context) (bool, error) { m = l.machine(instanceID); return m != nil, nil })
	if err != nil {
		return fmt.Errorf("instance %s has no machine to attach to: %w", instanceID, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		return fmt.Errorf("stat %s: %w", loop, err)
	}
	script := fmt.Sprintf(`set -e
[ -b %[1]s ] || mknod %[1]s b %[2]d %[3]d
mkdir -p "$(dirname %[4]s)"
ln -sfn %[1]s %[4]s`, loop, unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), link)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := m.Exec(ctx, nil, "sh", "-c", script); err != nil {
		return fmt.Errorf("show %s in %s: %w", loop, instanceID, err)
	}
	return nil
}

func (l *machineLinker) Unlink(instanceID, loop, link string) error {
	m := l.machine(instanceID)
	if m == nil {
		return nil
	}
	select {
	case <-m.Exited():
		return nil // the machine is gone, and its /dev with it
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script := fmt.Sprintf(`[ "$(readlink %[2]s)" != %[1]s ] || rm -f %[2]s; rm -f %[1]s`, loop, link)
	if _, _, err := m.Exec(ctx, nil, "sh", "-c", script); err != nil {
		return fmt.Errorf("remove %s from %s: %w", loop, instanceID, err)
	}
	return nil
}

// memory sums the proportional set size (shared pages split among their users)
// of every process in the running machines, so binaries mapped by several
// processes count once: what the whole cluster costs in memory.
func (h *haLab) memory() (total int64, byNode map[string]int64) {
	byNode = map[string]int64{}
	pidNS := map[string]string{} // pid namespace -> instance
	h.mu.Lock()
	for _, n := range h.nodes {
		select {
		case <-n.M.Exited():
			continue
		default:
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", n.M.Leader)); err == nil {
			pidNS[ns] = n.InstanceID
		}
	}
	h.mu.Unlock()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		ns, err := os.Readlink(p + "/ns/pid")
		if err != nil {
			continue // the process ended meanwhile
		}
		id, ok := pidNS[ns]
		if !ok {
			continue
		}
		b, err := os.ReadFile(p + "/smaps_rollup")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				byNode[id] += kb * 1024
				total += kb * 1024
			}
		}
	}
	return total, byNode
}

// bootMastersAtOnce boots three masters, one per zone (instance IDs idPrefix
// followed by 0, 1, 2), runs bootstrap in all at once, and waits until every
// one is ready.
func (h *haLab) bootMastersAtOnce(ctx context.Context, idPrefix string) []*haNode {
	h.t.Helper()
	var masters []*haNode
	for i, z := range haZones {
		masters = append(masters, h.boot(ctx, fmt.Sprintf("%s%07d", idPrefix, i), config.RoleControlPlane, z.az))
	}
	var wg sync.WaitGroup
	for _, m := range masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
			defer cancel()
			_, stderr, code := h.agent(bctx, m, "bootstrap")
			h.t.Logf("%s: bootstrap exit %d\n%s", m.InstanceID, code, lastLines(stderr, 5))
		}()
	}
	wg.Wait()
	eventually(h.t, 10*time.Minute, "every master ready", func() (bool, string) {
		for _, m := range masters {
			if st, code := h.status(ctx, m); code != 0 {
				return false, fmt.Sprintf("%s: %s (%s)", m.InstanceID, st.Readiness.Reason, st.Error)
			}
		}
		return true, ""
	})
	return masters
}
