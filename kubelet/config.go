package kubelet

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	corev1 "k8s.io/api/core/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	k8sjson "sigs.k8s.io/json"
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
	b, err := json.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("encode KubeletConfiguration: %w", err)
	}
	// The v1beta1 types carry struct-valued fields (durations, logging) that
	// encoding/json cannot omit; they would render as "0s" and {} and read as if
	// the agent had chosen them. Prune them so the file says only what was set.
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("encode KubeletConfiguration: %w", err)
	}
	zero, err := zeroJSON()
	if err != nil {
		return nil, fmt.Errorf("encode KubeletConfiguration: %w", err)
	}
	pruneZero(m, zero)
	out, err := yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode KubeletConfiguration: %w", err)
	}
	return out, nil
}

func defaultConfig(spec config.Spec, p configParams) *kubeletv1beta1.KubeletConfiguration {
	t, f := true, false
	port := int32(HealthzPort)
	kc := &kubeletv1beta1.KubeletConfiguration{
		CgroupDriver:             "systemd",
		StaticPodPath:            StaticPodPath,
		ContainerRuntimeEndpoint: cri.CRIEndpoint(runtimeOf(spec)),
		ClusterDomain:            ClusterDomain,
		HealthzBindAddress:       HealthzBindAddress,
		HealthzPort:              &port,
		ServerTLSBootstrap:       false,
		FailSwapOn:               &t,
	}
	kc.APIVersion = kubeletv1beta1.SchemeGroupVersion.String()
	kc.Kind = "KubeletConfiguration"
	if spec.Networking.ClusterDNS != "" {
		kc.ClusterDNS = []string{spec.Networking.ClusterDNS}
	}
	if spec.Role == config.RoleControlPlane && !p.Standalone {
		kc.RegisterWithTaints = []corev1.Taint{{Key: ControlPlaneTaint, Effect: corev1.TaintEffectNoSchedule}}
	}
	kc.Authentication.Anonymous.Enabled = &f
	kc.Authentication.X509.ClientCAFile = p.ClientCAFile
	if p.Standalone {
		kc.Authentication.Webhook.Enabled = &f
		kc.Authorization.Mode = kubeletv1beta1.KubeletAuthorizationModeAlwaysAllow
	} else {
		kc.Authentication.Webhook.Enabled = &t
		kc.Authorization.Mode = kubeletv1beta1.KubeletAuthorizationModeWebhook
		kc.RotateCertificates = true
	}
	return kc
}

func runtimeOf(spec config.Spec) config.Runtime {
	if spec.ContainerRuntime == "" {
		return config.RuntimeContainerd
	}
	return spec.ContainerRuntime
}

// mergedConfig deep-merges spec.kubelet.config over the defaults in their JSON
// form and decodes the result strictly into the typed configuration, so a typo
// or a wrong type is refused rather than silently ignored by kubelet.
func mergedConfig(spec config.Spec, p configParams) (*kubeletv1beta1.KubeletConfiguration, error) {
	def := defaultConfig(spec, p)
	b, err := json.Marshal(def)
	if err != nil {
		return nil, fmt.Errorf("encode default KubeletConfiguration: %w", err)
	}
	var base map[string]any
	if err := json.Unmarshal(b, &base); err != nil {
		return nil, fmt.Errorf("encode default KubeletConfiguration: %w", err)
	}
	merged := mergeJSON(base, spec.Kubelet.Config)
	mb, err := json.Marshal(merged)
	if err != nil {
		return nil, fmt.Errorf("spec.kubelet.config: %w", err)
	}
	var kc kubeletv1beta1.KubeletConfiguration
	strict, err := k8sjson.UnmarshalStrict(mb, &kc)
	if err != nil {
		return nil, fmt.Errorf("spec.kubelet.config: %w", err)
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return nil, fmt.Errorf("spec.kubelet.config: %s", strings.Join(msgs, "; "))
	}
	if kc.APIVersion != def.APIVersion || kc.Kind != def.Kind {
		return nil, fmt.Errorf("spec.kubelet.config: apiVersion/kind must be %s %s (or left out), not %q %q",
			def.APIVersion, def.Kind, kc.APIVersion, kc.Kind)
	}
	return &kc, nil
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

// pruneZero removes from m every value equal to the one the zero
// KubeletConfiguration marshals to at the same place. Those are the struct-valued
// fields encoding/json cannot omit (durations as "0s", logging, memorySwap); a
// value that means something (a pointer set to 0, a non-empty object) differs
// from zero's and stays.
func pruneZero(m, zero map[string]any) {
	for _, k := range slices.Collect(maps.Keys(m)) {
		z, ok := zero[k]
		if !ok {
			continue
		}
		if reflect.DeepEqual(m[k], z) {
			delete(m, k)
			continue
		}
		mm, ok1 := m[k].(map[string]any)
		zm, ok2 := z.(map[string]any)
		if ok1 && ok2 {
			pruneZero(mm, zm)
			if len(mm) == 0 {
				delete(m, k)
			}
		}
	}
}

// zeroJSON is the zero KubeletConfiguration in its JSON form.
func zeroJSON() (map[string]any, error) {
	b, err := json.Marshal(kubeletv1beta1.KubeletConfiguration{})
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}
