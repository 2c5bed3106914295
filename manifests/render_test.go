package manifests_test

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/manifests"
)

var update = flag.Bool("update", false, "rewrite testdata/<case>/*.golden from the current output")

const clusterName = "proyecto.k8s.local"

// members is this node's place in each etcd cluster: member b of a,b,c.
func members(clusters ...string) []manifests.EtcdMember {
	out := make([]manifests.EtcdMember, len(clusters))
	for i, c := range clusters {
		out[i] = manifests.EtcdMember{Cluster: c, Member: "b", Members: []string{"a", "b", "c"}, DataDir: "/mnt/master-vol-0" + c}
	}
	return out
}

func controlPlaneOptions() manifests.Options {
	return manifests.Options{
		Config: &config.NodeConfig{
			APIVersion: config.APIVersion, Kind: config.Kind,
			Spec: config.Spec{
				Cluster:           config.Cluster{Name: clusterName},
				Role:              config.RoleControlPlane,
				KubernetesVersion: "v1.31.2",
			},
		},
		NodeName: "ip-10-0-1-5.eu-west-1.compute.internal",
		NodeIP:   net.ParseIP("10.0.1.5"),
		Etcd:     members("main", "events"),
	}
}

func workerOptions() manifests.Options {
	return manifests.Options{
		Config: &config.NodeConfig{
			APIVersion: config.APIVersion, Kind: config.Kind,
			Spec: config.Spec{
				Cluster:           config.Cluster{Name: clusterName},
				Role:              config.RoleNode,
				KubernetesVersion: "v1.31.2",
			},
		},
		NodeName: "ip-10-0-2-9.eu-west-1.compute.internal",
		NodeIP:   net.ParseIP("10.0.2.9"),
	}
}

// customOptions moves everything that can move: registry with a port and a path,
// etcd version, ranges, kops' old etcd ports and a third etcd cluster. The config
// is defaulted the way the agent does it, so the defaults path is covered too.
func customOptions() manifests.Options {
	o := controlPlaneOptions()
	c := o.Config
	c.Spec.KubernetesVersion = "v1.32.0"
	c.Spec.Images.Registry = "mirror.example.com:5000/k8s-images/"
	c.Spec.Etcd = &config.Etcd{Version: "3.5.15-0", Clusters: []config.EtcdCluster{
		{Name: "main", ClientPort: 4001, PeerPort: 2380},
		{Name: "events", ClientPort: 4002, PeerPort: 2381},
		{Name: "cilium", ClientPort: 4003, PeerPort: 2382},
	}}
	c.Spec.Networking = config.Networking{ServiceCIDR: "10.96.0.0/12", PodCIDR: "10.244.0.0/16"}
	c.SetDefaults()
	o.Etcd = members("main", "events", "cilium")
	return o
}

func TestRenderGolden(t *testing.T) {
	cases := []struct {
		name        string
		opts        manifests.Options
		files       []string
		k8sImage    string // prefix:tag of every Kubernetes component image
		etcdImage   string
		etcdMetrics map[string]int // etcd cluster → metrics port
	}{
		{
			name: "control-plane",
			opts: controlPlaneOptions(),
			files: []string{"etcd-events.yaml", "etcd-main.yaml", "kube-apiserver.yaml",
				"kube-controller-manager.yaml", "kube-proxy.yaml", "kube-scheduler.yaml"},
			k8sImage:    "registry.k8s.io/%s:v1.31.2",
			etcdImage:   "registry.k8s.io/etcd:3.5.16-0",
			etcdMetrics: map[string]int{"main": 8081, "events": 8082},
		},
		{
			name:     "worker",
			opts:     workerOptions(),
			files:    []string{"kube-proxy.yaml"},
			k8sImage: "registry.k8s.io/%s:v1.31.2",
		},
		{
			name: "custom-registry",
			opts: customOptions(),
			files: []string{"etcd-cilium.yaml", "etcd-events.yaml", "etcd-main.yaml", "kube-apiserver.yaml",
				"kube-controller-manager.yaml", "kube-proxy.yaml", "kube-scheduler.yaml"},
			k8sImage:    "mirror.example.com:5000/k8s-images/%s:v1.32.0",
			etcdImage:   "mirror.example.com:5000/k8s-images/etcd:3.5.15-0",
			etcdMetrics: map[string]int{"main": 8081, "events": 8082, "cilium": 8083},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := manifests.Render(tc.opts)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if got := sortedNames(out); strings.Join(got, " ") != strings.Join(tc.files, " ") {
				t.Fatalf("files = %v, want %v", got, tc.files)
			}
			again, err := manifests.Render(tc.opts)
			if err != nil {
				t.Fatalf("second Render: %v", err)
			}
			pods := map[string]*corev1.Pod{}
			for name, data := range out {
				if !bytes.Equal(again[name], data) {
					t.Errorf("%s: two renders of the same input differ", name)
				}
				compareGolden(t, filepath.Join("testdata", tc.name, name+".golden"), data)
				pod := decodeStrict(t, name, data)
				validatePod(t, name, pod)
				pods[name] = pod

				c := pod.Spec.Containers[0]
				want := fmt.Sprintf(tc.k8sImage, pod.Name)
				if strings.HasPrefix(pod.Name, "etcd-") {
					want = tc.etcdImage
					cluster := strings.TrimPrefix(pod.Name, "etcd-")
					port := tc.etcdMetrics[cluster]
					if !hasArg(c.Command, fmt.Sprintf("--listen-metrics-urls=http://127.0.0.1:%d", port)) ||
						c.LivenessProbe.HTTPGet.Port.IntValue() != port {
						t.Errorf("%s: etcd metrics/liveness not on 127.0.0.1:%d", name, port)
					}
				}
				if c.Image != want {
					t.Errorf("%s: image %q, want %q", name, c.Image, want)
				}
			}
			checkHostPortsDistinct(t, pods)
		})
	}
}

// TestRenderControlPlaneWiring checks, on top of the golden files, the facts that
// must agree between pods: apiserver points at the local etcd client ports, etcd
// advertises the names the gossip ring publishes, and the initial cluster lists
// every member in the volume tag's order.
func TestRenderControlPlaneWiring(t *testing.T) {
	out, err := manifests.Render(customOptions())
	if err != nil {
		t.Fatal(err)
	}
	api := decodeStrict(t, "kube-apiserver.yaml", out["kube-apiserver.yaml"]).Spec.Containers[0].Command
	for _, want := range []string{
		"--etcd-servers=https://127.0.0.1:4001",
		"--etcd-servers-overrides=/events#https://127.0.0.1:4002",
		"--advertise-address=10.0.1.5",
		"--secure-port=443",
		"--service-cluster-ip-range=10.96.0.0/12",
		"--service-account-issuer=https://api.internal." + clusterName,
	} {
		if !hasArg(api, want) {
			t.Errorf("kube-apiserver lacks %s", want)
		}
	}
	kcm := decodeStrict(t, "kube-controller-manager.yaml", out["kube-controller-manager.yaml"]).Spec.Containers[0].Command
	for _, want := range []string{"--cluster-cidr=10.244.0.0/16", "--allocate-node-cidrs=true", "--leader-elect=true"} {
		if !hasArg(kcm, want) {
			t.Errorf("kube-controller-manager lacks %s", want)
		}
	}

	for cluster, peerPort := range map[string]int{"main": 2380, "events": 2381, "cilium": 2382} {
		file := "etcd-" + cluster + ".yaml"
		pod := decodeStrict(t, file, out[file])
		cmd := pod.Spec.Containers[0].Command
		host := func(m string) string { return config.EtcdMemberHost(cluster, m, clusterName) }
		initial := fmt.Sprintf("--initial-cluster=a=https://%s:%d,b=https://%s:%d,c=https://%s:%d",
			host("a"), peerPort, host("b"), peerPort, host("c"), peerPort)
		for _, want := range []string{
			"--name=b",
			initial,
			fmt.Sprintf("--initial-advertise-peer-urls=https://%s:%d", host("b"), peerPort),
			"--initial-cluster-token=etcd-cluster-" + cluster + "-" + clusterName,
			"--cert-file=/etc/kubernetes/pki/etcd/" + cluster + "/server.crt",
			"--peer-key-file=/etc/kubernetes/pki/etcd/" + cluster + "/peer.key",
		} {
			if !hasArg(cmd, want) {
				t.Errorf("%s lacks %s", file, want)
			}
		}
		if got := pod.Spec.Volumes[0].HostPath.Path; got != "/mnt/master-vol-0"+cluster+"/data" {
			t.Errorf("%s: data hostPath %s", file, got)
		}
	}
	if got := config.EtcdMemberHost("events", "b", clusterName); got != "etcd-events-b.internal."+clusterName {
		t.Errorf("events member host %s does not follow the gossip name etcd-events-<member>.internal.<cluster>", got)
	}
}

// TestRenderJoinedMember: a member that etcd-join added to a live cluster
// starts "existing" with the cluster's member list; one without a decision
// starts "new" from the tags.
func TestRenderJoinedMember(t *testing.T) {
	o := controlPlaneOptions()
	joined := []string{"a=https://etcd-a.internal.x:2380", "b=https://etcd-b.internal.x:2380", "c=https://etcd-c.internal.x:2380"}
	o.Etcd[0].ClusterState, o.Etcd[0].InitialCluster = "existing", joined
	out, err := manifests.Render(o)
	if err != nil {
		t.Fatal(err)
	}
	main := decodeStrict(t, "etcd-main.yaml", out["etcd-main.yaml"]).Spec.Containers[0].Command
	for _, want := range []string{"--initial-cluster-state=existing", "--initial-cluster=" + strings.Join(joined, ",")} {
		if !hasArg(main, want) {
			t.Errorf("etcd-main lacks %s: %v", want, main)
		}
	}
	events := decodeStrict(t, "etcd-events.yaml", out["etcd-events.yaml"]).Spec.Containers[0].Command
	if !hasArg(events, "--initial-cluster-state=new") {
		t.Errorf("etcd-events without a join decision: %v", events)
	}
}

func TestRenderRefusesBadInput(t *testing.T) {
	cp := func(mut func(o *manifests.Options)) manifests.Options {
		o := controlPlaneOptions()
		mut(&o)
		return o
	}
	withMembers := func(ms ...manifests.EtcdMember) func(o *manifests.Options) {
		return func(o *manifests.Options) { o.Etcd = ms }
	}
	m := func(cluster, member string, all ...string) manifests.EtcdMember {
		return manifests.EtcdMember{Cluster: cluster, Member: member, Members: all, DataDir: "/mnt/master-vol-1"}
	}
	cases := []struct {
		name string
		opts manifests.Options
		want string
	}{
		{"no config", manifests.Options{NodeName: "n"}, "no node config"},
		{"control plane before the volumes phase (no Etcd func)", cp(func(o *manifests.Options) { o.Etcd = nil }), "volumes phase"},
		{"control plane before the volumes phase (no claims)", cp(withMembers()), "volumes phase"},
		{"member not in member list", cp(withMembers(m("main", "d", "a", "b", "c"), m("events", "b", "a", "b", "c"))), `member "d" is not in the member list`},
		{"membership missing for a configured cluster", cp(withMembers(m("main", "b", "a", "b", "c"))), `etcd cluster "events": no claimed volume`},
		{"membership for an unconfigured cluster", cp(withMembers(m("main", "b", "b"), m("events", "b", "b"), m("cilium", "b", "b"))), `"cilium": a volume was claimed for it but spec.etcd.clusters does not list it`},
		{"two memberships of one cluster", cp(withMembers(m("main", "b", "b"), m("main", "a", "a"))), "two memberships"},
		{"member name unusable in a host name", cp(withMembers(m("main", "B_1", "B_1"), m("events", "b", "b"))), "not a DNS-1123 label"},
		{"member listed twice", cp(withMembers(m("main", "b", "a", "b", "b"), m("events", "b", "b"))), `names "b" twice`},
		{"empty member list", cp(withMembers(m("main", "b"), m("events", "b", "b"))), "member list is empty"},
		{"relative data dir", cp(withMembers(manifests.EtcdMember{Cluster: "main", Member: "b", Members: []string{"b"}, DataDir: "mnt/x"}, m("events", "b", "b"))), "data directory"},
		{"root as data dir", cp(withMembers(manifests.EtcdMember{Cluster: "main", Member: "b", Members: []string{"b"}, DataDir: "/"}, m("events", "b", "b"))), "data directory"},
		{"two clusters on one volume", cp(withMembers(m("main", "b", "b"), m("events", "b", "b"))), `etcd clusters "main" and "events" would share the data directory /mnt/master-vol-1/data`},
		{"no main etcd cluster", cp(func(o *manifests.Options) {
			o.Config.Spec.Etcd = &config.Etcd{Clusters: []config.EtcdCluster{{Name: "events", ClientPort: 4002, PeerPort: 2381}}}
			o.Etcd = members("events")
		}), "no cluster named main"},
		{"etcd port collides with kube-apiserver", cp(func(o *manifests.Options) {
			o.Config.Spec.Etcd = &config.Etcd{Clusters: []config.EtcdCluster{{Name: "main", ClientPort: 443, PeerPort: 2380}}}
			o.Etcd = members("main")
		}), "port 443 is already used by kube-apiserver"},
		{"etcd port collides with an etcd metrics port", cp(func(o *manifests.Options) {
			o.Config.Spec.Etcd = &config.Etcd{Clusters: []config.EtcdCluster{{Name: "main", ClientPort: 2379, PeerPort: 2380}, {Name: "events", ClientPort: 8081, PeerPort: 2381}}}
		}), "port 8081 is already used by etcd cluster \"main\" metrics"},
		{"etcd port collides with gossip", cp(func(o *manifests.Options) {
			o.Config.Spec.Etcd = &config.Etcd{Clusters: []config.EtcdCluster{{Name: "main", ClientPort: 3999, PeerPort: 2380}}}
			o.Etcd = members("main")
		}), "already used by nodeagent gossip"},
		{"etcd port out of range", cp(func(o *manifests.Options) {
			o.Config.Spec.Etcd = &config.Etcd{Clusters: []config.EtcdCluster{{Name: "main", ClientPort: 0, PeerPort: 2380}}}
			o.Etcd = members("main")
		}), "port 0 is outside 1-65535"},
		{"no kubernetes version", cp(func(o *manifests.Options) { o.Config.Spec.KubernetesVersion = "" }), "spec.kubernetesVersion"},
		{"kubernetes version not a tag", cp(func(o *manifests.Options) { o.Config.Spec.KubernetesVersion = "v1.31.2+k3s" }), "spec.kubernetesVersion"},
		{"etcd version not a tag", cp(func(o *manifests.Options) { o.Config.Spec.Etcd = &config.Etcd{Version: "3.5 16"} }), "spec.etcd.version"},
		{"registry with a scheme", cp(func(o *manifests.Options) { o.Config.Spec.Images.Registry = "https://registry.k8s.io" }), "spec.images.registry"},
		{"bad pod CIDR", cp(func(o *manifests.Options) { o.Config.Spec.Networking.PodCIDR = "100.96.0.0" }), "spec.networking.podCIDR"},
		{"bad service CIDR", cp(func(o *manifests.Options) { o.Config.Spec.Networking.ServiceCIDR = "x" }), "spec.networking.serviceCIDR"},
		{"no cluster name", cp(func(o *manifests.Options) { o.Config.Spec.Cluster.Name = "" }), "spec.cluster.name"},
		{"no node name", cp(func(o *manifests.Options) { o.NodeName = "" }), "node name"},
		{"control plane without an IP", cp(func(o *manifests.Options) { o.NodeIP = nil }), "needs its IP address"},
		{"control plane with an unspecified IP", cp(func(o *manifests.Options) { o.NodeIP = net.IPv4zero }), "needs its IP address"},
		{"unknown role", cp(func(o *manifests.Options) { o.Config.Spec.Role = "Master" }), `spec.role "Master"`},
		{"worker without a version", func() manifests.Options {
			o := workerOptions()
			o.Config.Spec.KubernetesVersion = ""
			return o
		}(), "spec.kubernetesVersion"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := manifests.Render(tc.opts)
			if err == nil {
				t.Fatalf("Render accepted it and produced %v", sortedNames(out))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if out != nil {
				t.Errorf("Render returned manifests along with the error")
			}
		})
	}
}

// TestRenderReportsEveryProblem: one pass names all problems, not just the first.
func TestRenderReportsEveryProblem(t *testing.T) {
	o := controlPlaneOptions()
	o.Config.Spec.KubernetesVersion = ""
	o.NodeIP = nil
	o.Etcd = nil
	_, err := manifests.Render(o)
	if err == nil {
		t.Fatal("Render accepted it")
	}
	for _, want := range []string{"spec.kubernetesVersion", "IP address", "volumes phase"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q spans lines; the boot's failure reason is one line", err)
	}
}

// TestRenderDoesNotChangeConfig: Render defaults locally; the caller's config is
// shared with every other phase.
func TestRenderDoesNotChangeConfig(t *testing.T) {
	o := controlPlaneOptions()
	before, _ := yaml.Marshal(o.Config)
	if _, err := manifests.Render(o); err != nil {
		t.Fatal(err)
	}
	after, _ := yaml.Marshal(o.Config)
	if !bytes.Equal(before, after) {
		t.Errorf("Render changed the config:\n%s\nto\n%s", before, after)
	}
}

func compareGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./manifests -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./manifests -update rewrites it):\n%s", file, lineDiff(string(want), string(got)))
	}
}

// lineDiff shows the first differing lines, enough to see what moved.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n- %s\n+ %s\n", i+1, wl, gl)
			if b.Len() > 2000 {
				break
			}
		}
	}
	return b.String()
}

// decodeStrict decodes a manifest into v1.Pod, refusing unknown or duplicate
// fields, as a typo'd field would silently be dropped by kubelet.
func decodeStrict(t *testing.T, name string, data []byte) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s does not decode strictly into v1.Pod: %v", name, err)
	}
	if pod.APIVersion != "v1" || pod.Kind != "Pod" {
		t.Fatalf("%s: apiVersion/kind %s/%s", name, pod.APIVersion, pod.Kind)
	}
	return &pod
}

var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	ianaSvcName  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
)

// validatePod applies the subset of API validation kubelet runs on a static pod
// before it will start it, plus the node conventions this package promises.
func validatePod(t *testing.T, file string, pod *corev1.Pod) {
	t.Helper()
	for _, p := range podProblems(file, pod) {
		t.Error(p)
	}
}

func podProblems(file string, pod *corev1.Pod) []string {
	var problems []string
	fail := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: "+format, append([]any{file}, args...)...))
	}

	if file != pod.Name+".yaml" {
		fail("file name does not match pod name %q", pod.Name)
	}
	if len(pod.Name) > 253 || !dnsSubdomain.MatchString(pod.Name) {
		fail("pod name %q is not a DNS-1123 subdomain", pod.Name)
	}
	if pod.Namespace != "kube-system" {
		fail("namespace %q", pod.Namespace)
	}
	if pod.Labels["k8s-app"] != pod.Name {
		fail("label k8s-app=%q, want %q", pod.Labels["k8s-app"], pod.Name)
	}
	if pod.Annotations[manifests.ManagedAnnotation] != "true" {
		fail("no %s annotation", manifests.ManagedAnnotation)
	}
	if !pod.Spec.HostNetwork {
		fail("not hostNetwork")
	}
	if pod.Spec.PriorityClassName != "system-node-critical" {
		fail("priorityClassName %q", pod.Spec.PriorityClassName)
	}

	volumes := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if !dnsLabel.MatchString(v.Name) || len(v.Name) > 63 {
			fail("volume name %q is not a DNS-1123 label", v.Name)
		}
		if volumes[v.Name] {
			fail("volume %q declared twice", v.Name)
		}
		volumes[v.Name] = true
		hp := v.HostPath
		if hp == nil {
			fail("volume %q is not a hostPath", v.Name)
			continue
		}
		if !path.IsAbs(hp.Path) || path.Clean(hp.Path) != hp.Path {
			fail("volume %q: hostPath %q is not a clean absolute path", v.Name, hp.Path)
		}
		switch *hp.Type {
		case corev1.HostPathDirectory, corev1.HostPathDirectoryOrCreate, corev1.HostPathFile, corev1.HostPathFileOrCreate:
		default:
			fail("volume %q: hostPath type %q", v.Name, *hp.Type)
		}
	}

	if len(pod.Spec.Containers) == 0 {
		fail("no containers")
	}
	names := map[string]bool{}
	portNames := map[string]bool{}
	used := map[string]bool{}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if !dnsLabel.MatchString(c.Name) {
			fail("container name %q is not a DNS-1123 label", c.Name)
		}
		if names[c.Name] {
			fail("container name %q is used twice", c.Name)
		}
		names[c.Name] = true
		if c.Image == "" || strings.ContainsAny(c.Image, " \t\n") {
			fail("container %s: image %q", c.Name, c.Image)
		}
		if len(c.Command) == 0 {
			fail("container %s: no command", c.Name)
		}
		for _, p := range c.Ports {
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				fail("container %s: port %d out of range", c.Name, p.ContainerPort)
			}
			if p.HostPort != p.ContainerPort {
				fail("container %s: with hostNetwork hostPort (%d) must equal containerPort (%d)", c.Name, p.HostPort, p.ContainerPort)
			}
			if len(p.Name) > 15 || !ianaSvcName.MatchString(p.Name) || strings.Contains(p.Name, "--") {
				fail("container %s: port name %q is not an IANA service name", c.Name, p.Name)
			}
			if portNames[p.Name] {
				fail("port name %q used twice in the pod", p.Name)
			}
			portNames[p.Name] = true
			if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP && p.Protocol != corev1.ProtocolSCTP {
				fail("container %s: protocol %q", c.Name, p.Protocol)
			}
		}
		mountPaths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				fail("container %s: mount %q refers to no volume", c.Name, m.Name)
			}
			used[m.Name] = true
			if !path.IsAbs(m.MountPath) {
				fail("container %s: mount path %q is not absolute", c.Name, m.MountPath)
			}
			if mountPaths[m.MountPath] {
				fail("container %s: mount path %q used twice", c.Name, m.MountPath)
			}
			mountPaths[m.MountPath] = true
			// Everything the components read is configuration or a secret: only
			// etcd's data and the iptables lock may be written.
			writable := m.Name == "etcd-data" || m.Name == "xtables-lock"
			if m.ReadOnly == writable {
				fail("container %s: mount %q readOnly=%v", c.Name, m.Name, m.ReadOnly)
			}
		}
		// A file named on the command line must be visible in the container.
		for _, a := range c.Command {
			_, v, ok := strings.Cut(a, "=")
			if !ok || !strings.HasPrefix(v, "/") || strings.Contains(v, "#") {
				continue
			}
			covered := false
			for _, m := range c.VolumeMounts {
				covered = covered || v == m.MountPath || strings.HasPrefix(v, m.MountPath+"/")
			}
			if !covered {
				fail("container %s: %s names a path no volume mount provides", c.Name, a)
			}
		}
		if c.LivenessProbe == nil {
			fail("container %s: no liveness probe", c.Name)
		}
		for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			if p == nil {
				continue
			}
			g := p.HTTPGet
			if g == nil || p.Exec != nil || p.TCPSocket != nil || p.GRPC != nil {
				fail("container %s: %s probe must have exactly one handler, an HTTP GET", c.Name, kind)
				continue
			}
			if port := g.Port.IntValue(); port < 1 || port > 65535 {
				fail("container %s: %s probe port %v", c.Name, kind, g.Port)
			}
			if !strings.HasPrefix(g.Path, "/") {
				fail("container %s: %s probe path %q", c.Name, kind, g.Path)
			}
			if p.TimeoutSeconds < 1 || p.PeriodSeconds < 1 || p.FailureThreshold < 1 {
				fail("container %s: %s probe timing %+v", c.Name, kind, p)
			}
			if kind != "readiness" && p.SuccessThreshold > 1 {
				fail("container %s: %s probe successThreshold must be 1", c.Name, kind)
			}
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			q, ok := c.Resources.Requests[r]
			if !ok || q.Sign() <= 0 {
				fail("container %s: no positive %s request", c.Name, r)
			}
		}
	}
	for v := range volumes {
		if !used[v] {
			fail("volume %q is mounted nowhere", v)
		}
	}
	return problems
}

// TestPodValidatorCatches proves the checks above bite: each broken copy of a
// rendered pod must be reported.
func TestPodValidatorCatches(t *testing.T) {
	out, err := manifests.Render(controlPlaneOptions())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(p *corev1.Pod)
		want   string
	}{
		{"duplicate container", func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, p.Spec.Containers[0]) }, "used twice"},
		{"port out of range", func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 70000 }, "out of range"},
		{"host port differs", func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].HostPort = 1 }, "must equal containerPort"},
		{"mount without volume", func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts[0].Name = "nope" }, "refers to no volume"},
		{"writable certificates", func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts[1].ReadOnly = false }, "readOnly=false"},
		{"no liveness probe", func(p *corev1.Pod) { p.Spec.Containers[0].LivenessProbe = nil }, "no liveness probe"},
		{"not host network", func(p *corev1.Pod) { p.Spec.HostNetwork = false }, "not hostNetwork"},
		{"no marker", func(p *corev1.Pod) { p.Annotations = nil }, manifests.ManagedAnnotation},
		{"flag names an unmounted file", func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts = p.Spec.Containers[0].VolumeMounts[:2] }, "--trusted-ca-file=/etc/kubernetes/pki/ca.crt names a path no volume mount provides"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := decodeStrict(t, "etcd-main.yaml", out["etcd-main.yaml"])
			if p := podProblems("etcd-main.yaml", pod); len(p) > 0 {
				t.Fatalf("the rendered pod already has problems: %v", p)
			}
			tc.mutate(pod)
			problems := strings.Join(podProblems("etcd-main.yaml", pod), "\n")
			if !strings.Contains(problems, tc.want) {
				t.Errorf("problems %q do not mention %q", problems, tc.want)
			}
		})
	}
}

// TestStrictDecodeRefusesUnknownFields: the decoder used above would catch a
// misspelt field in a manifest.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	var pod corev1.Pod
	err := yaml.UnmarshalStrict([]byte("apiVersion: v1\nkind: Pod\nspec:\n  hostNetwrok: true\n"), &pod)
	if err == nil || !strings.Contains(err.Error(), "hostNetwrok") {
		t.Fatalf("strict decode accepted an unknown field: %v", err)
	}
}

// checkHostPortsDistinct: every pod shares the host's network, so no two may
// declare the same port.
func checkHostPortsDistinct(t *testing.T, pods map[string]*corev1.Pod) {
	t.Helper()
	owner := map[string]string{}
	for _, file := range sortedNames(pods) {
		for _, c := range pods[file].Spec.Containers {
			for _, p := range c.Ports {
				key := fmt.Sprintf("%s/%d", p.Protocol, p.HostPort)
				if other, dup := owner[key]; dup {
					t.Errorf("host port %s is declared by both %s and %s", key, other, file)
				}
				owner[key] = file
			}
		}
	}
}

func hasArg(cmd []string, arg string) bool {
	for _, a := range cmd {
		if a == arg {
			return true
		}
	}
	return false
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// spec.kubeProxy.conntrackMaxPerCore becomes kube-proxy's flag; unset, kube-proxy
// keeps its own default and the flag is absent.
func TestRenderKubeProxyConntrack(t *testing.T) {
	o := customOptions()
	if got := decodeStrict(t, "kube-proxy.yaml", mustRender(t, o)["kube-proxy.yaml"]).Spec.Containers[0].Command; slices.ContainsFunc(got, func(a string) bool {
		return strings.HasPrefix(a, "--conntrack-max-per-core")
	}) {
		t.Errorf("kube-proxy has a conntrack flag nobody asked for: %v", got)
	}
	zero := int32(0)
	o.Config.Spec.KubeProxy.ConntrackMaxPerCore = &zero
	if got := decodeStrict(t, "kube-proxy.yaml", mustRender(t, o)["kube-proxy.yaml"]).Spec.Containers[0].Command; !hasArg(got, "--conntrack-max-per-core=0") {
		t.Errorf("kube-proxy lacks --conntrack-max-per-core=0: %v", got)
	}
}

func mustRender(t *testing.T, o manifests.Options) map[string][]byte {
	t.Helper()
	out, err := manifests.Render(o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
