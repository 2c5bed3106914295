package kubelet

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/kubelet/configschema/gen"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (run with -update if intended):\n--- got\n%s\n--- want\n%s", name, p, got, want)
	}
}

// testSpec is a defaulted worker spec, as the agent hands it over.
func testSpec(t *testing.T, kubeletConfig string) config.Spec {
	t.Helper()
	nc := config.NodeConfig{Spec: config.Spec{
		Cluster:           config.Cluster{Name: "proyecto.k8s.local"},
		Role:              config.RoleNode,
		KubernetesVersion: "v1.31.2",
	}}
	if kubeletConfig != "" {
		if err := yaml.Unmarshal([]byte(kubeletConfig), &nc.Spec.Kubelet.Config); err != nil {
			t.Fatalf("test input: %v", err)
		}
	}
	nc.SetDefaults()
	return nc.Spec
}

func TestBuildConfigGolden(t *testing.T) {
	tests := []struct {
		golden  string
		userCfg string
		runtime config.Runtime
		params  *configParams // nil: BuildConfig
	}{
		{golden: "kubelet-config-defaults.yaml"},
		{golden: "kubelet-config-standalone.yaml", params: &configParams{Standalone: true}},
		{golden: "kubelet-config-docker.yaml", runtime: config.RuntimeDocker},
		{golden: "kubelet-config-overrides.yaml", userCfg: `
maxPods: 50
failSwapOn: false
clusterDNS: [169.254.20.10]
evictionHard: {memory.available: 200Mi}
authentication: {webhook: {cacheTTL: 30s}}
featureGates: {GracefulNodeShutdown: true}
shutdownGracePeriod: 30s
`},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			spec := testSpec(t, tc.userCfg)
			if tc.runtime != "" {
				spec.ContainerRuntime = tc.runtime
			}
			var got []byte
			var err error
			if tc.params == nil {
				got, err = BuildConfig(spec)
			} else {
				got, err = buildConfig(spec, *tc.params)
			}
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden, got)
			// What we write must read back strictly as the typed configuration.
			var kc kubeletv1beta1.KubeletConfiguration
			if err := yaml.UnmarshalStrict(got, &kc); err != nil {
				t.Fatalf("rendered config does not decode strictly: %v", err)
			}
			if kc.Kind != "KubeletConfiguration" || kc.APIVersion != "kubelet.config.k8s.io/v1beta1" {
				t.Fatalf("type meta %q %q", kc.APIVersion, kc.Kind)
			}
		})
	}
}

// The merge of spec.kubelet.config over the defaults, one rule per row.
func TestMerge(t *testing.T) {
	tests := []struct {
		name    string
		userCfg string
		check   func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration)
		wantErr string
	}{
		{
			name:    "no overrides keeps the defaults",
			userCfg: ``,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				if kc.CgroupDriver != "systemd" || kc.StaticPodPath != "/etc/kubernetes/manifests" || *kc.FailSwapOn != true ||
					kc.ContainerRuntimeEndpoint != "unix:///run/containerd/containerd.sock" || kc.ClusterDomain != "cluster.local" ||
					len(kc.ClusterDNS) != 1 || kc.ClusterDNS[0] != config.DefaultClusterDNS || *kc.HealthzPort != 10248 ||
					kc.HealthzBindAddress != "127.0.0.1" || !kc.RotateCertificates || kc.ServerTLSBootstrap {
					t.Errorf("defaults wrong: %+v", kc)
				}
			},
		},
		{
			name:    "a scalar replaces the default",
			userCfg: `{maxPods: 50, cgroupDriver: cgroupfs}`,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				if kc.MaxPods != 50 || kc.CgroupDriver != "cgroupfs" {
					t.Errorf("maxPods %d cgroupDriver %q", kc.MaxPods, kc.CgroupDriver)
				}
			},
		},
		{
			name:    "a pointer scalar can be turned off",
			userCfg: `{failSwapOn: false}`,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				if kc.FailSwapOn == nil || *kc.FailSwapOn {
					t.Errorf("failSwapOn %v", kc.FailSwapOn)
				}
			},
		},
		{
			name:    "a nested field merges into the nested default",
			userCfg: `{authentication: {webhook: {cacheTTL: 30s}}}`,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				a := kc.Authentication
				if a.Webhook.CacheTTL.Duration.String() != "30s" {
					t.Errorf("cacheTTL %v", a.Webhook.CacheTTL)
				}
				if a.Webhook.Enabled == nil || !*a.Webhook.Enabled || a.X509.ClientCAFile != CACertPath || a.Anonymous.Enabled == nil || *a.Anonymous.Enabled {
					t.Errorf("siblings of the override lost: %+v", a)
				}
			},
		},
		{
			name:    "a list replaces the default list",
			userCfg: `{clusterDNS: [10.0.0.10, 10.0.0.11]}`,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				if strings.Join(kc.ClusterDNS, ",") != "10.0.0.10,10.0.0.11" {
					t.Errorf("clusterDNS %v", kc.ClusterDNS)
				}
			},
		},
		{
			name:    "null removes a default",
			userCfg: `{clusterDNS: null}`,
			check: func(t *testing.T, kc *kubeletv1beta1.KubeletConfiguration) {
				if kc.ClusterDNS != nil {
					t.Errorf("clusterDNS %v", kc.ClusterDNS)
				}
			},
		},
		{
			name:    "an unknown field is refused by name",
			userCfg: `{maxPod: 50}`,
			wantErr: `spec.kubelet.config: unknown field "maxPod"`,
		},
		{
			name:    "an unknown nested field is refused with its path",
			userCfg: `{authentication: {webhok: {enabled: true}}}`,
			wantErr: `unknown field "authentication.webhok"`,
		},
		{
			name:    "field names are case-sensitive",
			userCfg: `{MaxPods: 50}`,
			wantErr: `unknown field "MaxPods"`,
		},
		{
			name:    "a wrong type is refused",
			userCfg: `{maxPods: fifty}`,
			wantErr: `maxPods of type int32`,
		},
		{
			name:    "a wrong nested type is refused",
			userCfg: `{authentication: {anonymous: {enabled: "yes"}}}`,
			wantErr: `enabled of type bool`,
		},
		{
			name:    "a bad duration is refused",
			userCfg: `{shutdownGracePeriod: soon}`,
			wantErr: `spec.kubelet.config:`,
		},
		{
			name:    "another kind is refused",
			userCfg: `{kind: KubeProxyConfiguration}`,
			wantErr: `must be kubelet.config.k8s.io/v1beta1 KubeletConfiguration`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kc, err := mergedConfig(testSpec(t, tc.userCfg), configParams{ClientCAFile: CACertPath})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, decodeStrict(t, kc))
		})
	}
}

// decodeStrict decodes a merged config into k8s.io/kubelet's own type, as
// kubelet reads the file: nothing the schema let through may fail here.
func decodeStrict(t *testing.T, kc map[string]any) *kubeletv1beta1.KubeletConfiguration {
	t.Helper()
	b, err := json.Marshal(kc)
	if err != nil {
		t.Fatal(err)
	}
	var out kubeletv1beta1.KubeletConfiguration
	strict, err := k8sjson.UnmarshalStrict(b, &out)
	if err != nil || len(strict) > 0 {
		t.Fatalf("the merged config does not decode strictly into KubeletConfiguration: %v %v", err, strict)
	}
	return &out
}

// The schema the agent checks with is the one k8s.io/kubelet's types have now
// (go generate ./kubelet after an upgrade).
func TestConfigSchemaIsCurrent(t *testing.T) {
	want, err := gen.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if string(configSchemaJSON) != string(want) {
		t.Fatal("kubelet/configschema.json is stale: run go generate ./kubelet")
	}
}

// The schema refuses exactly what a strict decode into k8s.io/kubelet's type
// refuses, for good and bad configs of every kind of field.
func TestConfigSchemaAgreesWithStrictDecoding(t *testing.T) {
	cases := []string{
		`{}`,
		`{maxPods: 110, podPidsLimit: -1, cpuCFSQuota: true}`,
		`{maxPods: 1.5}`,
		`{maxPods: 4294967296}`,
		`{maxPods: "110"}`,
		`{maxPods: fifty}`,
		`{maxOpenFiles: 1000000}`,
		`{registryPullQPS: 5}`,
		`{registryBurst: -3}`,
		`{imageGCHighThresholdPercent: 200}`,
		`{evictionHard: {memory.available: 100Mi}}`,
		`{evictionHard: {memory.available: 100}}`,
		`{evictionHard: [a]}`,
		`{featureGates: {A: true}}`,
		`{featureGates: {A: "true"}}`,
		`{systemReserved: {cpu: 100m}}`,
		`{clusterDNS: [10.0.0.10]}`,
		`{clusterDNS: 10.0.0.10}`,
		`{clusterDNS: [1]}`,
		`{shutdownGracePeriod: 30s}`,
		`{shutdownGracePeriod: soon}`,
		`{shutdownGracePeriod: 30}`,
		`{authentication: {webhook: {cacheTTL: 2m}}}`,
		`{authentication: {webhok: {}}}`,
		`{authentication: {anonymous: {enabled: "yes"}}}`,
		`{authentication: true}`,
		`{registerWithTaints: [{key: a, effect: NoSchedule, timeAdded: "2024-01-01T00:00:00Z"}]}`,
		`{registerWithTaints: [{key: a, effect: NoSchedule, timeAdded: yesterday}]}`,
		`{registerWithTaints: [{key: a, efect: NoSchedule}]}`,
		`{logging: {format: json, flushFrequency: 5s, verbosity: 2}}`,
		`{logging: {flushFrequency: 5000000000}}`,
		`{logging: {flushFrequency: never}}`,
		`{logging: {options: {json: {infoBufferSize: 1Mi}}}}`,
		`{logging: {options: {json: {infoBufferSize: lots}}}}`,
		`{reservedMemory: [{numaNode: 0, limits: {memory: 1Gi}}]}`,
		`{memorySwap: {swapBehavior: LimitedSwap}}`,
		`{tracing: {endpoint: "localhost:4317", samplingRatePerMillion: 10}}`,
		`{MaxPods: 50}`,
		`{staticPodURLHeader: {X: [a, b]}}`,
		`{enableServer: null}`,
	}
	schema, err := configSchema()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range cases {
		var v map[string]any
		if err := yaml.Unmarshal([]byte(in), &v); err != nil {
			t.Fatalf("test input %s: %v", in, err)
		}
		b, _ := json.Marshal(v)
		var kc kubeletv1beta1.KubeletConfiguration
		strict, err := k8sjson.UnmarshalStrict(b, &kc)
		upstreamOK := err == nil && len(strict) == 0
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		errs := schema.Check(m)
		if upstreamOK != (len(errs) == 0) {
			t.Errorf("%s: the schema says %v, a strict decode says %v %v", in, errs, err, strict)
		}
	}
}

func TestMergeJSONLeavesInputsAlone(t *testing.T) {
	base := map[string]any{"a": map[string]any{"b": 1.0, "c": 2.0}}
	over := map[string]any{"a": map[string]any{"b": 3.0}}
	got := mergeJSON(base, over)
	if got["a"].(map[string]any)["b"] != 3.0 || got["a"].(map[string]any)["c"] != 2.0 {
		t.Fatalf("merge: %v", got)
	}
	if base["a"].(map[string]any)["b"] != 1.0 {
		t.Fatalf("merge modified its base: %v", base)
	}
}
