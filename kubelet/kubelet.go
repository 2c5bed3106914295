// Package kubelet configures and starts kubelet: its KubeletConfiguration (agent
// defaults with the user's fields merged over them, strictly typed), its
// kubeconfig for the node's mode, and its systemd unit.
package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/lazyre"
	"github.com/nodeagent/nodeagent/systemd"
	kubeletapis "k8s.io/kubelet/pkg/apis"
	"sigs.k8s.io/yaml"
)

// PhaseName is the phase's name in status.
const PhaseName = "kubelet"

// Unit is kubelet's systemd unit.
const Unit = "kubelet.service"

// DropInPath holds kubelet's arguments for this node.
const DropInPath = systemd.UnitDir + "/kubelet.service.d/10-nodeagent.conf"

// KubeconfigMode is how kubelet reaches the API server.
type KubeconfigMode interface{ isMode() }

// Standalone runs kubelet without an API server: it only runs static pods. For a
// node that has no CA and no cluster to join.
type Standalone struct{}

// Bootstrap joins with spec.kubelet.bootstrapToken through TLS bootstrapping: the
// token goes in a 0600 bootstrap kubeconfig, kubelet requests its client
// certificate and writes /var/lib/kubelet/kubeconfig itself.
type Bootstrap struct{}

// ClientCert uses the client certificate the pki package issued
// (/var/lib/kubelet/pki/kubelet-client.{crt,key}).
type ClientCert struct{}

func (Standalone) isMode() {}
func (Bootstrap) isMode()  {}
func (ClientCert) isMode() {}

// Options configure the kubelet phase.
type Options struct {
	Root       fsutil.Root
	Config     *config.NodeConfig
	NodeName   string
	NodeIP     string
	Labels     map[string]string // merged over spec.kubelet.nodeLabels
	Kubeconfig KubeconfigMode    // nil means Standalone
	Systemd    func(context.Context) (*systemd.Manager, error)
	Log        *slog.Logger
	// BinDir holds the kubelet binary; default /usr/local/bin.
	BinDir string
}

func (o Options) withDefaults() Options {
	if o.BinDir == "" {
		o.BinDir = "/usr/local/bin"
	}
	if o.Kubeconfig == nil {
		o.Kubeconfig = Standalone{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Rendered is kubelet's files for a node, and what could not be honoured.
type Rendered struct {
	Files []systemd.File
	// Warnings name node labels left out of --node-labels because kubelet refuses
	// to start with them.
	Warnings []string
}

// Render computes kubelet's files for the node. The client CA is referenced when
// the node joins a cluster or the CA file is already on the host.
func Render(o Options) (Rendered, error) {
	files, warnings, err := render(o)
	return Rendered{Files: files, Warnings: warnings}, err
}

func render(o Options) ([]systemd.File, []string, error) {
	o = o.withDefaults()
	if o.Config == nil {
		return nil, nil, errors.New("kubelet: no node configuration")
	}
	spec := o.Config.Spec
	_, standalone := o.Kubeconfig.(Standalone)
	p := configParams{Standalone: standalone}
	if _, err := os.Stat(o.Root.Path(CACertPath)); err == nil || !standalone {
		p.ClientCAFile = CACertPath
	}
	cfg, err := buildConfig(spec, p)
	if err != nil {
		return nil, nil, err
	}
	files := []systemd.File{{Path: ConfigPath, Content: cfg, Mode: 0o644, Unit: Unit}}

	var kubeArgs []string
	switch o.Kubeconfig.(type) {
	case Standalone:
	case Bootstrap:
		if spec.Kubelet.BootstrapToken == "" {
			return nil, nil, errors.New("kubelet: bootstrap mode needs spec.kubelet.bootstrapToken")
		}
		kc, err := renderKubeconfig(spec, "kubelet-bootstrap", map[string]any{"token": spec.Kubelet.BootstrapToken})
		if err != nil {
			return nil, nil, err
		}
		// 0600: the token lets anyone holding it register nodes.
		files = append(files, systemd.File{Path: BootstrapKubeconfig, Content: kc, Mode: 0o600, Unit: Unit})
		kubeArgs = []string{"--bootstrap-kubeconfig=" + BootstrapKubeconfig, "--kubeconfig=" + KubeconfigPath}
	case ClientCert:
		kc, err := renderKubeconfig(spec, "kubelet", map[string]any{
			"client-certificate": ClientCertPath, "client-key": ClientKeyPath,
		})
		if err != nil {
			return nil, nil, err
		}
		files = append(files, systemd.File{Path: KubeconfigPath, Content: kc, Mode: 0o600, Unit: Unit})
		kubeArgs = []string{"--kubeconfig=" + KubeconfigPath}
	default:
		return nil, nil, fmt.Errorf("kubelet: unknown kubeconfig mode %T", o.Kubeconfig)
	}

	args := append([]string{"--config=" + ConfigPath}, kubeArgs...)
	if o.NodeIP != "" {
		if net.ParseIP(o.NodeIP) == nil {
			return nil, nil, fmt.Errorf("kubelet: node IP %q is not an IP address", o.NodeIP)
		}
		args = append(args, "--node-ip="+o.NodeIP)
	}
	if o.NodeName != "" {
		if !nodeNameRE().MatchString(o.NodeName) {
			return nil, nil, fmt.Errorf("kubelet: node name %q is not a DNS-1123 subdomain", o.NodeName)
		}
		args = append(args, "--hostname-override="+o.NodeName)
	}
	labels, warnings, err := labelArg(spec.Kubelet.NodeLabels, o.Labels)
	if err != nil {
		return nil, nil, err
	}
	if labels != "" {
		args = append(args, "--node-labels="+labels)
	}
	files = append(files,
		systemd.File{Path: systemd.UnitDir + "/" + Unit, Content: unitFile(o.BinDir, runtimeOf(spec)), Mode: 0o644},
		systemd.File{Path: DropInPath, Content: dropIn(args), Mode: 0o644},
	)
	return files, warnings, nil
}

var (
	nodeNameRE = lazyre.New(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// Label keys are [prefix/]name; values are empty or alphanumeric with -_.
	// inside. Both also keep the systemd Environment= line free of quotes,
	// spaces, % and $.
	labelKeyRE   = lazyre.New(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	labelValueRE = lazyre.New(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
)

// labelArg renders --node-labels: spec labels with overrides on top, sorted so the
// unit does not change (and kubelet restart) from map order alone. Labels in the
// kubernetes.io and k8s.io namespaces that a kubelet may not set on its own Node
// (node-role.kubernetes.io/*, kops.k8s.io/*, ...) make kubelet exit at start;
// they are left out and named in the warnings, to be applied from the control
// plane instead.
func labelArg(spec, over map[string]string) (string, []string, error) {
	all := maps.Clone(spec)
	if all == nil {
		all = map[string]string{}
	}
	maps.Copy(all, over)
	var parts, warnings []string
	for _, k := range slices.Sorted(maps.Keys(all)) {
		v := all[k]
		if !labelKeyRE().MatchString(k) {
			return "", nil, fmt.Errorf("kubelet: node label key %q is invalid", k)
		}
		if !labelValueRE().MatchString(v) || len(v) > 63 {
			return "", nil, fmt.Errorf("kubelet: node label %s has an invalid value %q", k, v)
		}
		if kubeletRefuses(k) {
			warnings = append(warnings, fmt.Sprintf("node label %s is not passed to kubelet, which refuses kubernetes.io and k8s.io labels other than under %s and the well-known ones (topology.kubernetes.io/zone, node.kubernetes.io/instance-type, ...); apply it from the control plane",
				k, strings.Join(kubeletapis.KubeletLabelNamespaces(), ", ")))
			continue
		}
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ","), warnings, nil
}

// kubeletRefuses mirrors kubelet's own check of --node-labels.
func kubeletRefuses(key string) bool {
	ns, _, ok := strings.Cut(key, "/")
	if !ok {
		return false
	}
	k8s := ns == "kubernetes.io" || strings.HasSuffix(ns, ".kubernetes.io") || ns == "k8s.io" || strings.HasSuffix(ns, ".k8s.io")
	return k8s && !kubeletapis.IsKubeletLabel(key)
}

// apiServerURL is https://<spec.cluster.apiServer>, default api.internal.<cluster>:443.
func apiServerURL(spec config.Spec) (string, error) {
	if spec.Cluster.APIServer == "" && spec.Cluster.Name == "" {
		return "", errors.New("kubelet: neither spec.cluster.apiServer nor spec.cluster.name is set")
	}
	return config.APIServerURL(spec.Cluster), nil
}

// renderKubeconfig writes a kubeconfig (clientcmd v1 layout) with one cluster,
// one user and one context. The CA is referenced by path: the pki phase owns it.
func renderKubeconfig(spec config.Spec, user string, creds map[string]any) ([]byte, error) {
	server, err := apiServerURL(spec)
	if err != nil {
		return nil, err
	}
	cluster := spec.Cluster.Name
	if cluster == "" {
		cluster = "kubernetes"
	}
	kc := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{
			"name":    cluster,
			"cluster": map[string]any{"server": server, "certificate-authority": CACertPath},
		}},
		"users":           []any{map[string]any{"name": user, "user": creds}},
		"contexts":        []any{map[string]any{"name": user + "@" + cluster, "context": map[string]any{"cluster": cluster, "user": user}}},
		"current-context": user + "@" + cluster,
	}
	b, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("encode kubeconfig: %w", err)
	}
	return b, nil
}

func unitFile(binDir string, rt config.Runtime) []byte {
	deps := "containerd.service"
	if rt == config.RuntimeDocker {
		deps = "containerd.service docker.service cri-docker.service"
	}
	return []byte(fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=kubelet: the Kubernetes node agent
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
Wants=network-online.target %[1]s
After=network-online.target %[1]s
# kubelet exits when its runtime or API server is not there yet; keep retrying.
StartLimitIntervalSec=0

[Service]
ExecStart=%[2]s $KUBELET_ARGS
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
`, deps, systemd.ExecQuote(path.Join(binDir, "kubelet"))))
}

func dropIn(args []string) []byte {
	return []byte(fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Service]
Environment="KUBELET_ARGS=%s"
`, strings.Join(args, " ")))
}

// NewPhase returns the "kubelet" phase. Its files are rendered when it runs,
// since whether the CA is present depends on the pki phase before it.
func NewPhase(o Options) bootstrap.Phase {
	o = o.withDefaults()
	// kubelet's health is its healthz, which readiness polls: no settle wait here.
	return &phase{o: o, RenderedPhase: systemd.NewRenderedPhase(PhaseName, systemd.UnitSet{Root: o.Root, Systemd: o.Systemd, Log: o.Log, HealthChecked: true},
		func() (systemd.Rendered, error) {
			files, warnings, err := render(o)
			return systemd.Rendered{Files: files, Enable: []string{Unit}, Start: []string{Unit}, Warnings: warnings}, err
		})}
}

// phase is kubelet's unit set, started only when its CRI endpoint can exist.
type phase struct {
	*systemd.RenderedPhase
	o Options
}

var (
	_ bootstrap.Phase    = (*phase)(nil)
	_ bootstrap.Reporter = (*phase)(nil)
	_ bootstrap.Warner   = (*phase)(nil)
)

// Act refuses, before writing anything, to start a kubelet that could never
// reach its container runtime: on a Docker node the CRI endpoint is
// cri-dockerd's, and without its binary (installed by the assets phase) kubelet
// would only exit and restart for ever. The node is then plainly not ready, for
// that reason, instead of looking half up.
func (p *phase) Act(ctx context.Context) error {
	if p.o.Config != nil && runtimeOf(p.o.Config.Spec) == config.RuntimeDocker {
		bin := path.Join(p.o.BinDir, cri.CRIDockerdBinary)
		if fi, err := os.Stat(p.o.Root.Path(bin)); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("kubelet not started: containerRuntime docker needs cri-dockerd for its CRI endpoint %s, and %s is not installed; add %s to spec.assets",
				cri.CRIEndpoint(config.RuntimeDocker), bin, cri.CRIDockerdBinary)
		}
	}
	return p.RenderedPhase.Act(ctx)
}
