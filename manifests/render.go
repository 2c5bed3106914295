package manifests

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/lazyre"
	"github.com/nodeagent/nodeagent/pki"
)

// Ports the control plane listens on with host networking. etcd's own client and
// peer ports come from spec.etcd.clusters.
const (
	APIServerPort         = 443
	ControllerManagerPort = 10257 // kube-controller-manager --secure-port default
	SchedulerPort         = 10259 // kube-scheduler --secure-port default
	KubeProxyHealthzPort  = 10256 // kube-proxy --healthz-bind-address default
	KubeProxyMetricsPort  = 10249 // kube-proxy --metrics-bind-address default
	KubeletPort           = 10250 // not ours, but nothing may collide with it

	// EtcdMetricsBasePort is where etcd's plain-HTTP /health and /metrics listener
	// (--listen-metrics-urls, bound to 127.0.0.1) goes: the i-th cluster of
	// spec.etcd.clusters gets EtcdMetricsBasePort+i, so main is 8081 and events
	// 8082 with the default clusters. Liveness probes use it because the client port
	// demands a client certificate, which kubelet's probes cannot present.
	EtcdMetricsBasePort = 8081
)

// paths is the layout the pki phase writes; containers see each file at its host path.
var paths = pki.DefaultPaths()

const etcdDataMountPath = "/var/lib/etcd"

// Pod names (and, with ".yaml", file names) of the static pods.
const (
	podAPIServer         = "kube-apiserver"
	podControllerManager = "kube-controller-manager"
	podScheduler         = "kube-scheduler"
	podKubeProxy         = "kube-proxy"
)

// EtcdPodName is the static pod of one etcd cluster, e.g. etcd-main.
func EtcdPodName(cluster string) string { return "etcd-" + cluster }

var (
	dns1123Label = lazyre.New(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// registryRef is a registry host (optionally with port) followed by path
	// components, as image references allow before the repository name.
	registryRef = lazyre.New(`^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$`)
	imageTag    = lazyre.New(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// Render returns the static pod manifests this node should run, file name → YAML.
// It reads nothing from disk; the same inputs always give the same bytes.
func Render(o Options) (map[string][]byte, error) {
	files, _, err := render(o)
	return files, err
}

// EtcdDataDir is the host directory an etcd member keeps its data in: a
// subdirectory of the claimed volume's mount point.
func EtcdDataDir(m EtcdMember) string { return path.Join(m.DataDir, "data") }

// render also returns the etcd data directories the pods expect on the host.
func render(o Options) (map[string][]byte, []string, error) {
	in, err := resolve(o)
	if err != nil {
		return nil, nil, err
	}
	var dataDirs []string
	for _, e := range in.etcd {
		dataDirs = append(dataDirs, EtcdDataDir(e.EtcdMember))
	}
	pods := []*corev1.Pod{in.kubeProxy()}
	if in.controlPlane {
		for _, e := range in.etcd {
			pods = append(pods, in.etcdPod(e))
		}
		pods = append(pods, in.apiserver(), in.controllerManager(), in.scheduler())
	}
	out := make(map[string][]byte, len(pods))
	for _, p := range pods {
		b, err := encode(p)
		if err != nil {
			return nil, nil, err
		}
		out[p.Name+".yaml"] = b
	}
	return out, dataDirs, nil
}

const header = "# Static pod written by nodeagent. Edits are overwritten; the " + ManagedAnnotation + "\n" +
	"# annotation lets nodeagent delete this file once the node no longer needs it.\n"

func encode(p *corev1.Pod) ([]byte, error) {
	b, err := yaml.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", p.Name, err)
	}
	return append([]byte(header), b...), nil
}

// inputs is Options checked and defaulted: everything a pod builder needs.
type inputs struct {
	clusterName  string
	version      string
	registry     string
	serviceCIDR  string
	podCIDR      string
	nodeName     string
	nodeIP       net.IP
	controlPlane bool
	etcdImage    string
	etcd         []etcdInput
	// conntrackMaxPerCore is spec.kubeProxy.conntrackMaxPerCore ("": kube-proxy's default).
	conntrackMaxPerCore string
}

type etcdInput struct {
	config.EtcdCluster
	EtcdMember
	metricsPort int
}

// resolve validates Options and applies the config defaults without touching the
// caller's config, so Render works on a raw config as well as a defaulted one.
func resolve(o Options) (*inputs, error) {
	if o.Config == nil {
		return nil, errors.New("render manifests: no node config")
	}
	s := o.Config.Spec
	in := &inputs{
		clusterName:  s.Cluster.Name,
		version:      s.KubernetesVersion,
		registry:     strings.TrimSuffix(orDefault(s.Images.Registry, config.DefaultRegistry), "/"),
		serviceCIDR:  orDefault(s.Networking.ServiceCIDR, config.DefaultServiceCIDR),
		podCIDR:      orDefault(s.Networking.PodCIDR, config.DefaultPodCIDR),
		nodeName:     o.NodeName,
		nodeIP:       o.NodeIP,
		controlPlane: s.Role == config.RoleControlPlane,
	}
	if n := s.KubeProxy.ConntrackMaxPerCore; n != nil {
		in.conntrackMaxPerCore = strconv.Itoa(int(*n))
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !config.IsDNS1123Subdomain(in.clusterName) {
		bad("spec.cluster.name %q is not a DNS-1123 subdomain", in.clusterName)
	}
	switch s.Role {
	case config.RoleControlPlane, config.RoleNode:
	default:
		bad("spec.role %q is neither %s nor %s", s.Role, config.RoleControlPlane, config.RoleNode)
	}
	if !imageTag().MatchString(in.version) {
		bad("spec.kubernetesVersion %q is not usable as an image tag (e.g. v1.31.2)", in.version)
	}
	if !registryRef().MatchString(in.registry) {
		bad("spec.images.registry %q is not a registry reference such as registry.k8s.io or mirror.example:5000/k8s", in.registry)
	}
	for _, c := range []struct{ field, v string }{
		{"spec.networking.serviceCIDR", in.serviceCIDR}, {"spec.networking.podCIDR", in.podCIDR},
	} {
		if _, _, err := net.ParseCIDR(c.v); err != nil {
			bad("%s %q is not a CIDR", c.field, c.v)
		}
	}
	if !config.IsDNS1123Subdomain(in.nodeName) {
		bad("node name %q is not a DNS-1123 subdomain", in.nodeName)
	}
	if in.controlPlane {
		if in.nodeIP == nil || in.nodeIP.IsUnspecified() {
			bad("a control-plane node needs its IP address (kube-apiserver --advertise-address)")
		}
		gossip := s.Gossip.Port
		if gossip == 0 {
			gossip = config.DefaultGossipPort
		}
		etcd, err := resolveEtcd(o, s.Etcd, gossip)
		if err != nil {
			errs = append(errs, err)
		}
		in.etcd = etcd
		in.etcdImage = EtcdImage(s)
		if _, tag, _ := strings.Cut(strings.TrimPrefix(in.etcdImage, in.registry+"/"), ":"); !imageTag().MatchString(tag) {
			bad("spec.etcd.version %q is not usable as an image tag (e.g. 3.5.16-0)", s.Etcd.Version)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("render manifests: %w", oneLine(errs))
	}
	return in, nil
}

// oneLine joins problems with "; ": the boot's failure reason is a single line.
func oneLine(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

// resolveEtcd pairs each configured etcd cluster with the membership the volumes
// phase found, and checks that every port the node's host-network pods listen on
// is distinct.
func resolveEtcd(o Options, e *config.Etcd, gossipPort int) ([]etcdInput, error) {
	clusters := config.DefaultEtcdClusters
	if e != nil && len(e.Clusters) > 0 {
		clusters = e.Clusters
	}
	members := o.Etcd
	if len(members) == 0 {
		return nil, errors.New("etcd membership of this node is unknown: the volumes phase must claim the etcd volumes first")
	}
	byCluster := map[string]EtcdMember{}
	for _, m := range members {
		if _, dup := byCluster[m.Cluster]; dup {
			return nil, fmt.Errorf("etcd cluster %q: this node holds two memberships", m.Cluster)
		}
		byCluster[m.Cluster] = m
	}

	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ports := map[int]string{
		APIServerPort: "kube-apiserver", ControllerManagerPort: "kube-controller-manager",
		SchedulerPort: "kube-scheduler", KubeProxyHealthzPort: "kube-proxy healthz",
		KubeProxyMetricsPort: "kube-proxy metrics", KubeletPort: "kubelet",
		gossipPort: "nodeagent gossip",
	}
	claim := func(port int, what string) {
		if port < 1 || port > 65535 {
			bad("%s: port %d is outside 1-65535", what, port)
			return
		}
		if other, taken := ports[port]; taken {
			bad("%s: port %d is already used by %s", what, port, other)
			return
		}
		ports[port] = what
	}

	out := make([]etcdInput, 0, len(clusters))
	hasMain := false
	for i, c := range clusters {
		where := "etcd cluster " + strconv.Quote(c.Name)
		if !dns1123Label().MatchString(c.Name) {
			bad("%s: name is not a DNS-1123 label", where)
			continue
		}
		hasMain = hasMain || c.Name == "main"
		m, ok := byCluster[c.Name]
		if !ok {
			bad("%s: no claimed volume tells this node's member name", where)
			continue
		}
		delete(byCluster, c.Name)
		in := etcdInput{EtcdCluster: c, EtcdMember: m, metricsPort: EtcdMetricsBasePort + i}
		claim(c.ClientPort, where+" clientPort")
		claim(c.PeerPort, where+" peerPort")
		claim(in.metricsPort, where+" metrics")
		if err := checkMember(m); err != nil {
			bad("%s: %w", where, err)
			continue
		}
		out = append(out, in)
	}
	if !hasMain {
		bad("spec.etcd.clusters has no cluster named main, which kube-apiserver stores its data in")
	}
	for _, name := range slices.Sorted(maps.Keys(byCluster)) {
		bad("etcd cluster %q: a volume was claimed for it but spec.etcd.clusters does not list it", name)
	}
	dataDirs := map[string]string{}
	for _, e := range out {
		d := EtcdDataDir(e.EtcdMember)
		if other, dup := dataDirs[d]; dup {
			bad("etcd clusters %q and %q would share the data directory %s", other, e.Cluster, d)
		}
		dataDirs[d] = e.Cluster
	}
	if len(errs) > 0 {
		return nil, oneLine(errs)
	}
	return out, nil
}

func checkMember(m EtcdMember) error {
	if !dns1123Label().MatchString(m.Member) {
		return fmt.Errorf("member name %q is not a DNS-1123 label", m.Member)
	}
	if len(m.Members) == 0 {
		return fmt.Errorf("member %q: the member list is empty", m.Member)
	}
	seen := map[string]bool{}
	for _, n := range m.Members {
		if !dns1123Label().MatchString(n) {
			return fmt.Errorf("member list %v: %q is not a DNS-1123 label", m.Members, n)
		}
		if seen[n] {
			return fmt.Errorf("member list %v names %q twice", m.Members, n)
		}
		seen[n] = true
	}
	if !seen[m.Member] {
		return fmt.Errorf("member %q is not in the member list %v", m.Member, m.Members)
	}
	if !path.IsAbs(m.DataDir) || path.Clean(m.DataDir) != m.DataDir || m.DataDir == "/" {
		return fmt.Errorf("member %q: data directory %q must be a clean absolute path below /", m.Member, m.DataDir)
	}
	return nil
}

func (in *inputs) image(name, tag string) string { return in.registry + "/" + name + ":" + tag }

// EtcdImage is the image the etcd static pods run: spec.images.registry's
// etcd at spec.etcd.version (or their defaults). Its etcdutl checks and
// restores that etcd's snapshots.
func EtcdImage(s config.Spec) string {
	v := config.DefaultEtcdVersion
	if s.Etcd != nil && s.Etcd.Version != "" {
		v = s.Etcd.Version
	}
	return strings.TrimSuffix(orDefault(s.Images.Registry, config.DefaultRegistry), "/") + "/etcd:" + v
}

func (in *inputs) etcdPod(e etcdInput) *corev1.Pod {
	host := func(member string) string { return config.EtcdMemberHost(e.Cluster, member, in.clusterName) }
	peers := make([]string, len(e.Members))
	for i, m := range e.Members {
		peers[i] = m + "=" + httpsURL(host(m), e.PeerPort)
	}
	state := "new"
	if e.ClusterState != "" {
		state = e.ClusterState
	}
	if len(e.InitialCluster) > 0 {
		peers = e.InitialCluster
	}
	certDir := path.Dir(paths.EtcdServerCert(e.Cluster))
	cmd := append([]string{"etcd"}, flags(map[string]string{
		"name":                        e.Member,
		"data-dir":                    etcdDataMountPath,
		"listen-client-urls":          httpsURL("0.0.0.0", e.ClientPort),
		"advertise-client-urls":       httpsURL(host(e.Member), e.ClientPort),
		"listen-peer-urls":            httpsURL("0.0.0.0", e.PeerPort),
		"initial-advertise-peer-urls": httpsURL(host(e.Member), e.PeerPort),
		"initial-cluster":             strings.Join(peers, ","),
		// Only read when the data directory is empty; a member restarting on an
		// existing volume ignores it. "existing" when etcd-join added this
		// blank member to a live cluster.
		"initial-cluster-state": state,
		"initial-cluster-token": "etcd-cluster-" + e.Cluster + "-" + in.clusterName,
		"listen-metrics-urls":   "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(e.metricsPort)),
		"cert-file":             paths.EtcdServerCert(e.Cluster),
		"key-file":              paths.EtcdServerKey(e.Cluster),
		"trusted-ca-file":       paths.CACert,
		"client-cert-auth":      "true",
		"peer-cert-file":        paths.EtcdPeerCert(e.Cluster),
		"peer-key-file":         paths.EtcdPeerKey(e.Cluster),
		"peer-trusted-ca-file":  paths.CACert,
		"peer-client-cert-auth": "true",
	})...)
	cpu := "100m"
	if e.Cluster == "main" {
		cpu = "200m" // main carries every object; events is write-mostly and small
	}
	name := EtcdPodName(e.Cluster)
	c := corev1.Container{
		Name:      "etcd",
		Image:     in.etcdImage,
		Command:   cmd,
		Resources: requests(cpu, "100Mi"),
		Ports: []corev1.ContainerPort{
			hostPort("client", e.ClientPort), hostPort("peer", e.PeerPort), hostPort("metrics", e.metricsPort),
		},
		LivenessProbe: httpProbe("/health?exclude=NOSPACE&serializable=true", e.metricsPort, corev1.URISchemeHTTP, 8),
		// A member joining a large cluster may take minutes to catch up.
		StartupProbe: httpProbe("/health?serializable=false", e.metricsPort, corev1.URISchemeHTTP, 24),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "etcd-data", MountPath: etcdDataMountPath},
			{Name: "etcd-certs", MountPath: certDir, ReadOnly: true},
			{Name: "ca-cert", MountPath: paths.CACert, ReadOnly: true},
		},
	}
	return in.pod(name, c, []corev1.Volume{
		// Directory, not DirectoryOrCreate: the phase creates it on the mounted
		// volume, so if the volume is not mounted after a reboot kubelet refuses to
		// start etcd instead of letting it form an empty cluster on the root disk.
		hostPathVolume("etcd-data", EtcdDataDir(e.EtcdMember), corev1.HostPathDirectory),
		hostPathVolume("etcd-certs", certDir, corev1.HostPathDirectory),
		hostPathVolume("ca-cert", paths.CACert, corev1.HostPathFile),
	}, true)
}

func (in *inputs) apiserver() *corev1.Pod {
	f := map[string]string{
		"advertise-address":                in.nodeIP.String(),
		"allow-privileged":                 "true",
		"authorization-mode":               "Node,RBAC",
		"client-ca-file":                   paths.CACert,
		"enable-admission-plugins":         "NodeRestriction",
		"etcd-cafile":                      paths.CACert,
		"etcd-certfile":                    paths.APIServerEtcdClientCert,
		"etcd-keyfile":                     paths.APIServerEtcdClientKey,
		"kubelet-client-certificate":       paths.APIServerKubeletClientCert,
		"kubelet-client-key":               paths.APIServerKubeletClientKey,
		"kubelet-preferred-address-types":  "InternalIP,Hostname,ExternalIP",
		"secure-port":                      strconv.Itoa(APIServerPort),
		"service-account-issuer":           "https://" + config.APIInternalName(in.clusterName),
		"service-account-key-file":         paths.ServiceAccountPub,
		"service-account-signing-key-file": paths.ServiceAccountKey,
		"service-cluster-ip-range":         in.serviceCIDR,
		"tls-cert-file":                    paths.APIServerCert,
		"tls-private-key-file":             paths.APIServerKey,
	}
	for _, e := range in.etcd {
		switch e.Cluster {
		case "main":
			f["etcd-servers"] = httpsURL("127.0.0.1", e.ClientPort)
		case "events":
			f["etcd-servers-overrides"] = "/events#" + httpsURL("127.0.0.1", e.ClientPort)
		}
	}
	c := corev1.Container{
		Name:           podAPIServer,
		Image:          in.image(podAPIServer, in.version),
		Command:        append([]string{podAPIServer}, flags(f)...),
		Resources:      requests("250m", "256Mi"),
		Ports:          []corev1.ContainerPort{hostPort("https", APIServerPort)},
		LivenessProbe:  httpProbe("/livez", APIServerPort, corev1.URISchemeHTTPS, 8),
		ReadinessProbe: httpProbe("/readyz", APIServerPort, corev1.URISchemeHTTPS, 3),
		StartupProbe:   httpProbe("/livez", APIServerPort, corev1.URISchemeHTTPS, 24),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "pki", MountPath: paths.Dir, ReadOnly: true},
			{Name: "ca-certs", MountPath: "/etc/ssl/certs", ReadOnly: true},
		},
	}
	c.ReadinessProbe.PeriodSeconds = 1
	return in.pod(podAPIServer, c, []corev1.Volume{
		hostPathVolume("pki", paths.Dir, corev1.HostPathDirectory),
		hostPathVolume("ca-certs", "/etc/ssl/certs", corev1.HostPathDirectoryOrCreate),
	}, true)
}

func (in *inputs) controllerManager() *corev1.Pod {
	c := corev1.Container{
		Name:  podControllerManager,
		Image: in.image(podControllerManager, in.version),
		Command: append([]string{podControllerManager}, flags(map[string]string{
			"allocate-node-cidrs":       "true",
			"authentication-kubeconfig": paths.ControllerManagerConf,
			"authorization-kubeconfig":  paths.ControllerManagerConf,
			"bind-address":              "127.0.0.1",
			"client-ca-file":            paths.CACert,
			"cluster-cidr":              in.podCIDR,
			"cluster-name":              in.clusterName,
			"cluster-signing-cert-file": paths.CACert,
			"cluster-signing-key-file":  paths.CAKey,
			// bootstrapsigner and tokencleaner are off by default; nodes joining
			// with spec.kubelet.bootstrapToken need them.
			"controllers":                      "*,bootstrapsigner,tokencleaner",
			"kubeconfig":                       paths.ControllerManagerConf,
			"leader-elect":                     "true",
			"root-ca-file":                     paths.CACert,
			"secure-port":                      strconv.Itoa(ControllerManagerPort),
			"service-account-private-key-file": paths.ServiceAccountKey,
			"service-cluster-ip-range":         in.serviceCIDR,
			"use-service-account-credentials":  "true",
		})...),
		Resources:     requests("200m", "128Mi"),
		Ports:         []corev1.ContainerPort{hostPort("https", ControllerManagerPort)},
		LivenessProbe: httpProbe("/healthz", ControllerManagerPort, corev1.URISchemeHTTPS, 8),
		StartupProbe:  httpProbe("/healthz", ControllerManagerPort, corev1.URISchemeHTTPS, 24),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "pki", MountPath: paths.Dir, ReadOnly: true},
			{Name: "kubeconfig", MountPath: paths.ControllerManagerConf, ReadOnly: true},
			{Name: "ca-certs", MountPath: "/etc/ssl/certs", ReadOnly: true},
		},
	}
	return in.pod(podControllerManager, c, []corev1.Volume{
		hostPathVolume("pki", paths.Dir, corev1.HostPathDirectory),
		hostPathVolume("kubeconfig", paths.ControllerManagerConf, corev1.HostPathFile),
		hostPathVolume("ca-certs", "/etc/ssl/certs", corev1.HostPathDirectoryOrCreate),
	}, true)
}

func (in *inputs) scheduler() *corev1.Pod {
	c := corev1.Container{
		Name:  podScheduler,
		Image: in.image(podScheduler, in.version),
		Command: append([]string{podScheduler}, flags(map[string]string{
			"authentication-kubeconfig": paths.SchedulerConf,
			"authorization-kubeconfig":  paths.SchedulerConf,
			"bind-address":              "127.0.0.1",
			"kubeconfig":                paths.SchedulerConf,
			"leader-elect":              "true",
			"secure-port":               strconv.Itoa(SchedulerPort),
		})...),
		Resources:     requests("100m", "64Mi"),
		Ports:         []corev1.ContainerPort{hostPort("https", SchedulerPort)},
		LivenessProbe: httpProbe("/healthz", SchedulerPort, corev1.URISchemeHTTPS, 8),
		StartupProbe:  httpProbe("/healthz", SchedulerPort, corev1.URISchemeHTTPS, 24),
		VolumeMounts:  []corev1.VolumeMount{{Name: "kubeconfig", MountPath: paths.SchedulerConf, ReadOnly: true}},
	}
	return in.pod(podScheduler, c, []corev1.Volume{
		hostPathVolume("kubeconfig", paths.SchedulerConf, corev1.HostPathFile),
	}, true)
}

func (in *inputs) kubeProxyFlags() map[string]string {
	f := map[string]string{
		"cluster-cidr":      in.podCIDR,
		"hostname-override": in.nodeName,
		"kubeconfig":        paths.KubeProxyConf,
	}
	if in.conntrackMaxPerCore != "" {
		f["conntrack-max-per-core"] = in.conntrackMaxPerCore
	}
	return f
}

func (in *inputs) kubeProxy() *corev1.Pod {
	privileged := true
	c := corev1.Container{
		Name:      podKubeProxy,
		Image:     in.image(podKubeProxy, in.version),
		Command:   append([]string{podKubeProxy}, flags(in.kubeProxyFlags())...),
		Resources: requests("100m", "64Mi"),
		Ports: []corev1.ContainerPort{
			hostPort("healthz", KubeProxyHealthzPort), hostPort("metrics", KubeProxyMetricsPort),
		},
		LivenessProbe: httpProbe("/healthz", KubeProxyHealthzPort, corev1.URISchemeHTTP, 8),
		// kube-proxy rewrites iptables and loads kernel modules.
		SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "kubeconfig", MountPath: paths.KubeProxyConf, ReadOnly: true},
			// The client certificate a worker's node signer renews (a directory:
			// a file mount would keep the replaced file's old content).
			{Name: "credentials", MountPath: paths.KubeProxyDir, ReadOnly: true},
			{Name: "lib-modules", MountPath: "/lib/modules", ReadOnly: true},
			// Shared with every other iptables user on the host so their writes serialize.
			{Name: "xtables-lock", MountPath: "/run/xtables.lock"},
		},
	}
	return in.pod(podKubeProxy, c, []corev1.Volume{
		hostPathVolume("kubeconfig", paths.KubeProxyConf, corev1.HostPathFile),
		hostPathVolume("credentials", paths.KubeProxyDir, corev1.HostPathDirectoryOrCreate),
		hostPathVolume("lib-modules", "/lib/modules", corev1.HostPathDirectory),
		hostPathVolume("xtables-lock", "/run/xtables.lock", corev1.HostPathFileOrCreate),
	}, false)
}

// pod wraps one container in the static pod shape every manifest shares.
func (in *inputs) pod(name string, c corev1.Container, vols []corev1.Volume, seccomp bool) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   metav1.NamespaceSystem,
			Labels:      map[string]string{"k8s-app": name},
			Annotations: map[string]string{ManagedAnnotation: "true"},
		},
		Spec: corev1.PodSpec{
			HostNetwork:       true,
			PriorityClassName: "system-node-critical",
			Containers:        []corev1.Container{c},
			Volumes:           vols,
		},
	}
	if seccomp {
		// kube-proxy is privileged, which disables seccomp anyway.
		p.Spec.SecurityContext = &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
	}
	return p
}

// flags renders --name=value arguments sorted by name, so a map literal gives a
// stable command line.
func flags(f map[string]string) []string {
	out := make([]string, 0, len(f))
	for _, k := range slices.Sorted(maps.Keys(f)) {
		out = append(out, "--"+k+"="+f[k])
	}
	return out
}

func httpsURL(host string, port int) string {
	return "https://" + net.JoinHostPort(host, strconv.Itoa(port))
}

func hostPort(name string, port int) corev1.ContainerPort {
	// With host networking the container port is the host port; kubelet's
	// validation insists that both are equal.
	return corev1.ContainerPort{Name: name, ContainerPort: int32(port), HostPort: int32(port), Protocol: corev1.ProtocolTCP}
}

func httpProbe(path string, port int, scheme corev1.URIScheme, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Host: "127.0.0.1", Path: path, Port: intstr.FromInt32(int32(port)), Scheme: scheme,
		}},
		InitialDelaySeconds: 10,
		TimeoutSeconds:      15,
		PeriodSeconds:       10,
		FailureThreshold:    failures,
	}
}

func requests(cpu, memory string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(cpu),
		corev1.ResourceMemory: resource.MustParse(memory),
	}}
}

func hostPathVolume(name, hostPath string, t corev1.HostPathType) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: hostPath, Type: &t},
	}}
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
