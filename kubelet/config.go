package kubelet

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/kubelet/configschema"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Paths kubelet reads.
const (
	ConfigPath              = "/var/lib/kubelet/config.yaml"
	KubeconfigPath          = "/var/lib/kubelet/kubeconfig"
	BootstrapKubeconfig     = "/var/lib/kubelet/bootstrap-kubeconfig"
	CACertPath              = "/etc/kubernetes/pki/ca.crt"
	ClientCertPath          = "/var/lib/kubelet/pki/kubelet-client.crt"
	ClientKeyPath           = "/var/lib/kubelet/pki/kubelet-client.key"
	StaticPodPath           = "/etc/kubernetes/manifests"
	HealthzBindAddress      = "127.0.0.1"
	HealthzPort         int = 10248
	ClusterDomain           = "cluster.local"
	// ControlPlaneTaint keeps ordinary pods (CoreDNS among them) off the
	// masters, as kops taints them; a control plane's kubelet registers with it.
	ControlPlaneTaint = "node-role.kubernetes.io/control-plane"
)

// configParams are the facts of the node, beyond the spec, that shape the config.
type configParams struct {
	// Standalone: no API server, so no webhook authn/authz and no cert rotation.
	Standalone bool
	// ClientCAFile verifies client certificates presented to kubelet's server.
	ClientCAFile string
}

// BuildConfig renders the KubeletConfiguration of a node that joins a cluster
// (webhook authentication and authorization, client CA /etc/kubernetes/pki/ca.crt),
// with spec.kubelet.config merged over the defaults. It refuses unknown fields and
// values of the wrong type, naming them.
func BuildConfig(spec config.Spec) ([]byte, error) {
	return buildConfig(spec, configParams{ClientCAFile: CACertPath})
}

func buildConfig(spec config.Spec, p configParams) ([]byte, error) {
	kc, err := mergedConfig(spec, p)
	if err != nil {
		return nil, err
	}
	out, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("encode KubeletConfiguration: %w", err)
	}
	return out, nil
}

// Type meta of the configuration file kubelet reads.
const (
	configAPIVersion = "kubelet.config.k8s.io/v1beta1"
	configKind       = "KubeletConfiguration"
)

// defaultConfig is the agent's KubeletConfiguration in its JSON form: only the
// fields the agent sets, so the file says what was chosen and nothing else.
func defaultConfig(spec config.Spec, p configParams) map[string]any {
	kc := map[string]any{
		"apiVersion":               configAPIVersion,
		"kind":                     configKind,
		"cgroupDriver":             "systemd",
		"staticPodPath":            StaticPodPath,
		"containerRuntimeEndpoint": cri.CRIEndpoint(runtimeOf(spec)),
		"clusterDomain":            ClusterDomain,
		"healthzBindAddress":       HealthzBindAddress,
		"healthzPort":              HealthzPort,
		"failSwapOn":               true,
	}
	if spec.Networking.ClusterDNS != "" {
		kc["clusterDNS"] = []any{spec.Networking.ClusterDNS}
	}
	if spec.Role == config.RoleControlPlane && !p.Standalone {
		kc["registerWithTaints"] = []any{map[string]any{"key": ControlPlaneTaint, "effect": string(corev1.TaintEffectNoSchedule)}}
	}
	authn := map[string]any{"anonymous": map[string]any{"enabled": false}}
	if p.ClientCAFile != "" {
		authn["x509"] = map[string]any{"clientCAFile": p.ClientCAFile}
	}
	if p.Standalone {
		authn["webhook"] = map[string]any{"enabled": false}
		kc["authorization"] = map[string]any{"mode": "AlwaysAllow"}
	} else {
		authn["webhook"] = map[string]any{"enabled": true}
		kc["authorization"] = map[string]any{"mode": "Webhook"}
		kc["rotateCertificates"] = true
	}
	kc["authentication"] = authn
	return kc
}

func runtimeOf(spec config.Spec) config.Runtime {
	if spec.ContainerRuntime == "" {
		return config.RuntimeContainerd
	}
	return spec.ContainerRuntime
}

// configSchema is the shape of kubelet's KubeletConfiguration (v1beta1),
// generated from k8s.io/kubelet's types (see package configschema).
//
//go:generate go run ../hack/kubeletschema -o configschema.json
//go:embed configschema.json
var configSchemaJSON []byte

var configSchema = sync.OnceValues(func() (*configschema.Node, error) { return configschema.Parse(configSchemaJSON) })

// mergedConfig deep-merges spec.kubelet.config over the defaults in their JSON
// form and checks the result against KubeletConfiguration's shape, so a typo
// or a wrong type is refused, by name, rather than silently ignored by kubelet.
func mergedConfig(spec config.Spec, p configParams) (map[string]any, error) {
	schema, err := configSchema()
	if err != nil {
		return nil, err
	}
	// The merge in its JSON form (numbers as float64), as a decode reads it.
	b, err := json.Marshal(mergeJSON(defaultConfig(spec, p), spec.Kubelet.Config))
	if err != nil {
		return nil, fmt.Errorf("spec.kubelet.config: %w", err)
	}
	var kc map[string]any
	if err := json.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("spec.kubelet.config: %w", err)
	}
	if errs := schema.Check(kc); len(errs) > 0 {
		return nil, fmt.Errorf("spec.kubelet.config: %s", strings.Join(errs, "; "))
	}
	if kc["apiVersion"] != configAPIVersion || kc["kind"] != configKind {
		return nil, fmt.Errorf("spec.kubelet.config: apiVersion/kind must be %s %s (or left out), not %q %q",
			configAPIVersion, configKind, kc["apiVersion"], kc["kind"])
	}
	return kc, nil
}

// mergeJSON returns base with over merged in: objects merge key by key, anything
// else (scalars, lists) in over replaces base, and a null in over removes the key
// so a user can drop a default.
func mergeJSON(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		bm, bok := out[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			out[k] = mergeJSON(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}
