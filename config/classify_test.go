package config

import (
	"strings"
	"testing"
)

func mustParse(t *testing.T, doc string) *NodeConfig {
	t.Helper()
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Each change is classified: what the agent applies in place, and what only a
// new instance can take.
func TestClassify(t *testing.T) {
	base := minimal("Node")
	tests := []struct {
		name  string
		next  string
		paths map[string]ChangeClass
	}{
		{"nothing changed", base, nil},
		{"kubelet field and sysctl in place", base + "  kubelet: {config: {maxPods: 42}}\n  host: {sysctls: {vm.max_map_count: \"262144\"}}\n",
			map[string]ChangeClass{"spec.kubelet.config[maxPods]": InPlace, "spec.host.sysctls[vm.max_map_count]": InPlace}},
		{"label in place", base + "  kubelet: {nodeLabels: {team: a}}\n", map[string]ChangeClass{"spec.kubelet.nodeLabels[team]": InPlace}},
		{"kubernetes version in place", strings.Replace(base, "v1.31.2", "v1.31.3", 1), map[string]ChangeClass{"spec.kubernetesVersion": InPlace}},
		{"role needs a new instance", minimal("ControlPlane"), map[string]ChangeClass{"spec.role": NeedsReplacement, "spec.etcd.clusters": NeedsReplacement, "spec.etcd.version": InPlace}},
		{"runtime switch needs a new instance", base + "  containerRuntime: docker\n", map[string]ChangeClass{"spec.containerRuntime": NeedsReplacement}},
		{"cluster name needs a new instance", strings.Replace(base, "c.k8s.local", "d.k8s.local", 1),
			map[string]ChangeClass{"spec.cluster.name": NeedsReplacement, "spec.cluster.apiServer": InPlace}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(mustParse(t, base), mustParse(t, tt.next))
			if len(got) != len(tt.paths) {
				t.Fatalf("changes %v, want %v", got, tt.paths)
			}
			for _, c := range got {
				if want, ok := tt.paths[c.Path]; !ok || want != c.Class {
					t.Errorf("%s classified %s, want %q", c.Path, c.Class, want)
				}
				if c.Class == NeedsReplacement && c.Reason == "" {
					t.Errorf("%s needs a new instance without a reason", c.Path)
				}
			}
		})
	}
	if got := Classify(nil, mustParse(t, base)); got != nil {
		t.Errorf("a node that never took a config has changes: %v", got)
	}
}

func TestClassifyNeverShowsSecrets(t *testing.T) {
	a := mustParse(t, minimal("Node")+"  kubelet: {bootstrapToken: abcdef.0123456789abcdef}\n")
	b := mustParse(t, minimal("Node")+"  kubelet: {bootstrapToken: fedcba.0123456789abcdef}\n")
	for _, c := range Classify(a, b) {
		if strings.Contains(c.String(), "0123456789abcdef") {
			t.Errorf("change shows the token: %s", c)
		}
	}
}

func TestProblemsCountsInEnglish(t *testing.T) {
	for n, want := range map[int]string{1: "1 problem", 2: "2 problems", 0: "0 problems"} {
		if got := Problems(n); got != want {
			t.Errorf("Problems(%d) = %q, want %q", n, got, want)
		}
	}
	_, err := Parse([]byte(strings.Replace(minimal("Node"), "v1.31.2", "1.31", 1)))
	if err == nil || !strings.Contains(err.Error(), "(1 problem)") || !strings.Contains(err.Error(), `quote it ("1.31")`) {
		t.Errorf("a YAML-number version: %v", err)
	}
}

// A node changes its container runtime only by being replaced, in either
// direction, and whether containerd is named or left to the default.
func TestRuntimeSwitchEitherWayNeedsANewInstance(t *testing.T) {
	base := minimal("Node")
	docker := base + "  containerRuntime: docker\n"
	containerd := base + "  containerRuntime: containerd\n"
	for _, tc := range []struct{ name, from, to string }{
		{"containerd to docker", containerd, docker},
		{"docker to containerd", docker, containerd},
		{"docker to the default", docker, base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify(mustParse(t, tc.from), mustParse(t, tc.to))
			if len(got) != 1 || got[0].Path != "spec.containerRuntime" || got[0].Class != NeedsReplacement {
				t.Errorf("changes %v, want only spec.containerRuntime as %q", got, NeedsReplacement)
			}
		})
	}
	if got := Classify(mustParse(t, containerd), mustParse(t, base)); len(got) != 0 {
		t.Errorf("naming the default runtime is a change: %v", got)
	}
}
