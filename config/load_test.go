package config

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseWorkerAppliesDefaults(t *testing.T) {
	data, err := os.ReadFile("testdata/worker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	s := cfg.Spec
	checks := []struct {
		name      string
		got, want any
	}{
		{"runtime defaults to containerd", s.ContainerRuntime, RuntimeContainerd},
		{"api server from cluster name", s.Cluster.APIServer, "api.internal.proyecto.k8s.local:443"},
		{"asset path defaults under /usr/local/bin", s.Assets[0].Path, "/usr/local/bin/kubelet"},
		{"sha256 is lower-cased", s.Assets[0].SHA256, strings.Repeat("0", 0) + "9f2c000000000000000000000000000000000000000000000000000000000001"},
		{"user sysctl kept", s.Host.Sysctls["vm.max_map_count"], "262144"},
		{"default sysctl added", s.Host.Sysctls["net.ipv4.ip_forward"], "1"},
		{"default modules", s.Host.KernelModules, []string{"overlay", "br_netfilter"}},
		{"gossip port", s.Gossip.Port, DefaultGossipPort},
		{"no etcd on a worker", s.Etcd == nil, true},
		{"kubelet override kept", s.Kubelet.Config["maxPods"], float64(50)},
		{"a gossip cluster routes pod CIDRs over gossip", s.Networking.PodRoutes, PodRoutesGossip},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %#v, want %#v", c.name, c.got, c.want)
		}
	}
}

func TestParseControlPlaneGetsEtcdClusters(t *testing.T) {
	cfg, err := Parse([]byte(minimal("ControlPlane")))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Spec.Etcd.Clusters, DefaultEtcdClusters) {
		t.Errorf("etcd clusters = %+v", cfg.Spec.Etcd.Clusters)
	}
}

func TestPodRoutesDefaultFollowsGossip(t *testing.T) {
	for cluster, want := range map[string]PodRoutes{"c.k8s.local": PodRoutesGossip, "prod.example.com": PodRoutesNone} {
		cfg, err := Parse([]byte(strings.Replace(minimal("Node"), "c.k8s.local", cluster, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Spec.Networking.PodRoutes; got != want {
			t.Errorf("cluster %s: podRoutes %q, want %q", cluster, got, want)
		}
	}
	cfg, err := Parse([]byte(minimal("Node") + "  networking: {podRoutes: none}\n"))
	if err != nil || cfg.Spec.Networking.PodRoutes != PodRoutesNone {
		t.Errorf("explicit none on a gossip cluster: %v %+v", err, cfg)
	}
}

func minimal(role string) string {
	return "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  cluster: {name: c.k8s.local}\n  gossip: {secretKeyFile: /etc/nodeagent/gossip.key}\n  role: " + role + "\n  kubernetesVersion: v1.31.2\n"
}

// TestParseRejects lists bad documents and the field paths their errors must name.
func TestParseRejects(t *testing.T) {
	tests := []struct {
		name      string
		doc       string
		wantPaths []string
	}{
		{"empty", "", nil},
		{"not yaml", "spec: [", nil},
		{"unknown top-level field", minimal("Node") + "extra: 1\n", []string{"extra"}},
		{"unknown nested field", minimal("Node") + "  kubelet: {nodeLabelz: {a: b}}\n", []string{"spec.kubelet.nodeLabelz"}},
		{"unknown field in list item", minimal("Node") + "  assets: [{name: k, urls: [https://x/k], sha256: " + strings.Repeat("a", 64) + ", mode: 7}]\n", []string{"spec.assets[0].mode"}},
		{"duplicate key", minimal("Node") + "  role: Node\n", nil},
		{"wrong type", minimal("Node") + "  readiness: {timeout: 5}\n", []string{"spec.readiness.timeout"}},
		{"a version YAML reads as a number, with a bad role: both said", strings.Replace(strings.Replace(minimal("Node"), "v1.31.2", "1.31", 1), "role: Node", "role: Worker", 1), []string{"spec.kubernetesVersion", "spec.role"}},
		{"node credentials living under a minute", minimal("Node") + "  pki: {nodeCredentialsValidity: 30s}\n", []string{"spec.pki.nodeCredentialsValidity"}},
		{"gossip cluster without a key", strings.Replace(minimal("Node"), "  gossip: {secretKeyFile: /etc/nodeagent/gossip.key}\n", "", 1), []string{"spec.gossip.secretKeyFile"}},
		{"every problem listed", `apiVersion: v1
kind: Pod
spec:
  cluster: {name: Bad_Name, stateStore: "http://x"}
  role: Worker
  kubernetesVersion: "1.31"
  containerRuntime: cri-o
  assets:
  - {name: kubelet, urls: ["ftp://x/kubelet"], sha256: abc}
  - {name: kubelet, urls: []}
  etcd: {clusters: [{name: main, clientPort: 2379, peerPort: 2379}]}
  gossip: {port: 70000, secretKeyFile: relative.key}
  host: {kernelModules: ["bad module"], sysctls: {"not a key": "1"}}
`, []string{
			"apiVersion", "kind", "spec.cluster.name", "spec.cluster.stateStore", "spec.role",
			"spec.kubernetesVersion", "spec.containerRuntime", "spec.assets[0].urls[0]",
			"spec.assets[0].sha256", "spec.assets[1].name", "spec.assets[1].urls", "spec.assets[1].sha256",
			"spec.etcd", "spec.etcd.clusters[0].peerPort", "spec.gossip.port", "spec.gossip.secretKeyFile",
			"spec.host.kernelModules[0]", "spec.host.sysctls[not a key]",
		}},
		{"managed kubelet field", minimal("Node") + "  kubelet: {config: {staticPodPath: /tmp}}\n", []string{"spec.kubelet.config.staticPodPath"}},
		{"bad label", minimal("Node") + "  kubelet: {nodeLabels: {'-bad': x}}\n", []string{"spec.kubelet.nodeLabels[-bad]"}},
		{"unknown pod routes", minimal("Node") + "  networking: {podRoutes: bgp}\n", []string{"spec.networking.podRoutes"}},
		{"cluster DNS outside the service range", minimal("Node") + "  networking: {serviceCIDR: 100.64.0.0/13, clusterDNS: 10.0.0.10}\n", []string{"spec.networking.clusterDNS"}},
		{"unknown add-on disabled", minimal("Node") + "  addons: {disable: [coredns, kube-dns]}\n", []string{"spec.addons.disable[1]"}},
		{"negative conntrack size", minimal("Node") + "  kubeProxy: {conntrackMaxPerCore: -1}\n", []string{"spec.kubeProxy.conntrackMaxPerCore"}},
		{"gossip pod routes without gossip", strings.Replace(minimal("Node"), "c.k8s.local", "prod.example.com", 1) +
			"  networking: {podRoutes: gossip}\n", []string{"spec.networking.podRoutes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", cfg)
			}
			if len(tt.wantPaths) == 0 {
				return
			}
			var verr ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error is %T (%v), want ValidationError", err, err)
			}
			got := map[string]bool{}
			for _, fe := range verr {
				got[fe.Path] = true
			}
			for _, p := range tt.wantPaths {
				if !got[p] {
					t.Errorf("no error for %s; got %v", p, err)
				}
			}
			if len(verr) != len(tt.wantPaths) {
				t.Errorf("got %d problems, want %d: %v", len(verr), len(tt.wantPaths), err)
			}
		})
	}
}

func TestMergeNodeOverCluster(t *testing.T) {
	cluster := []byte(`apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: c.k8s.local, stateStore: s3://state/c.k8s.local}
  kubernetesVersion: v1.30.0
  images: {registry: mirror.example}
  host: {sysctls: {a.b: "1", c.d: "2"}}
`)
	node := []byte(`spec:
  role: Node
  kubernetesVersion: v1.31.2
  host: {sysctls: {c.d: "3"}}
`)
	cfg, err := Merge(cluster, node)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Spec
	if s.KubernetesVersion != "v1.31.2" || s.Images.Registry != "mirror.example" || s.Cluster.Name != "c.k8s.local" {
		t.Errorf("scalar merge wrong: %+v", s)
	}
	if s.Host.Sysctls["a.b"] != "1" || s.Host.Sysctls["c.d"] != "3" {
		t.Errorf("map merge wrong: %v", s.Host.Sysctls)
	}
}

func TestExtractUserData(t *testing.T) {
	doc := minimal("Node")
	mimeDoc := "Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\nMIME-Version: 1.0\n\n" +
		"--BOUNDARY\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n" +
		"--BOUNDARY\nContent-Type: application/nodeagent.io+yaml\n\n" + doc +
		"--BOUNDARY--\n"
	b64Doc := "Content-Type: multipart/mixed; boundary=B\nMIME-Version: 1.0\n\n" +
		"--B\nContent-Type: application/nodeagent.io+yaml\nContent-Transfer-Encoding: base64\n\n" +
		"YXBpVmVyc2lvbjogbm9kZWFnZW50LmlvL3YxYWxwaGExCg==\n--B--\n"
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(doc))
	zw.Close()

	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{"plain yaml", doc, doc, ""},
		{"multi-part picks our part", mimeDoc, doc, ""},
		{"base64 part", b64Doc, "apiVersion: nodeagent.io/v1alpha1\n", ""},
		{"gzip", gz.String(), doc, ""},
		{"empty", "  \n", "", "empty"},
		{"shell script only", "#!/bin/bash\necho hi\n", "", "script"},
		{"multi-part without our part", "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nhi\n--B--\n", "", "no part of type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExtractUserData([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != strings.TrimSpace(tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal("Node")))
	f.Add([]byte("spec: {assets: [{}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil && cfg.Validate() != nil {
			t.Fatalf("Parse accepted a config that does not validate")
		}
	})
}

func TestAssetChecksFullCheckInterval(t *testing.T) {
	cfg, err := Parse([]byte(minimal("Node")))
	if err != nil || cfg.Spec.AssetChecks.FullCheckInterval != "24h" || cfg.Spec.AssetChecks.Interval() != 24*time.Hour {
		t.Fatalf("default: %v %+v", err, cfg.Spec.AssetChecks)
	}
	cfg, err = Parse([]byte(minimal("Node") + "  assetChecks: {fullCheckInterval: 6h}\n"))
	if err != nil || cfg.Spec.AssetChecks.Interval() != 6*time.Hour {
		t.Fatalf("6h: %v %+v", err, cfg.Spec.AssetChecks)
	}
	for _, bad := range []string{"30s", "daily", "-1h"} {
		_, err := Parse([]byte(minimal("Node") + "  assetChecks: {fullCheckInterval: " + bad + "}\n"))
		if err == nil || !strings.Contains(err.Error(), "spec.assetChecks.fullCheckInterval") {
			t.Errorf("%s: err = %v, want one naming spec.assetChecks.fullCheckInterval", bad, err)
		}
	}
}
