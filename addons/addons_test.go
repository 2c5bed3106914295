package addons

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var clusterVars = Vars{ClusterDNS: "100.64.0.10", ClusterDomain: "cluster.local", Registry: "registry.k8s.io"}

func find(t *testing.T, set []Addon, name string) Addon {
	t.Helper()
	for _, a := range set {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("no add-on %s in %d", name, len(set))
	return Addon{}
}

func object(t *testing.T, a Addon, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range a.Objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("add-on %s has no %s %s", a.Name, kind, name)
	return nil
}

func TestCoreDNSServesAtTheClusterDNSIPKubeletsAreGiven(t *testing.T) {
	set, err := Builtin(clusterVars, nil)
	if err != nil {
		t.Fatal(err)
	}
	dns := find(t, set, "coredns")
	svc := object(t, dns, "Service", "kube-dns")
	if ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP"); ip != "100.64.0.10" {
		t.Errorf("kube-dns clusterIP %q, want the cluster DNS IP 100.64.0.10", ip)
	}
	dep := object(t, dns, "Deployment", "coredns")
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if img := containers[0].(map[string]any)["image"]; img != "registry.k8s.io/coredns/coredns:"+CoreDNSTag {
		t.Errorf("CoreDNS image %v", img)
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(dep.Object, "spec", "replicas"); found {
		t.Error("the Deployment sets replicas: scaling CoreDNS is the user's, the applier must not own it")
	}
	cm := object(t, dns, "ConfigMap", "coredns")
	if corefile, _, _ := unstructured.NestedString(cm.Object, "data", "Corefile"); !strings.Contains(corefile, "kubernetes cluster.local in-addr.arpa") {
		t.Errorf("Corefile does not serve cluster.local:\n%s", corefile)
	}
	for _, a := range set {
		if a.Version == "" || len(a.Hash) != 64 {
			t.Errorf("add-on %s: version %q hash %q", a.Name, a.Version, a.Hash)
		}
		for _, o := range a.Objects {
			b, _ := o.MarshalJSON()
			if strings.Contains(string(b), "${") {
				t.Errorf("add-on %s: %s %s has an unrendered variable", a.Name, o.GetKind(), o.GetName())
			}
		}
	}
}

func TestTheHashFollowsTheRenderedManifest(t *testing.T) {
	a, _ := Builtin(clusterVars, nil)
	other := clusterVars
	other.ClusterDNS = "100.64.0.53"
	b, _ := Builtin(other, nil)
	again, _ := Builtin(clusterVars, nil)
	if find(t, a, "coredns").Hash == find(t, b, "coredns").Hash {
		t.Error("another cluster DNS IP gives the same CoreDNS hash: the change would never be applied")
	}
	if find(t, a, "coredns").Hash != find(t, again, "coredns").Hash || find(t, a, "rbac").Hash != find(t, b, "rbac").Hash {
		t.Error("the same manifest gives another hash: it would be applied again every round")
	}
}

func TestDisable(t *testing.T) {
	set, err := Builtin(clusterVars, []string{"storage-class"})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range set {
		if a.Name == "storage-class" {
			t.Error("a disabled add-on is in the set")
		}
	}
	if len(set) != len(BuiltinNames())-1 {
		t.Errorf("%d add-ons, want all but one", len(set))
	}
	if _, err := Builtin(clusterVars, []string{"kube-dns"}); err == nil || !strings.Contains(err.Error(), `no built-in add-on "kube-dns"`) {
		t.Errorf("disabling an unknown add-on: %v", err)
	}
}

func TestMissingClusterValuesAreRefused(t *testing.T) {
	_, err := Builtin(Vars{ClusterDomain: "cluster.local", Registry: "r"}, nil)
	if err == nil || !strings.Contains(err.Error(), "CLUSTER_DNS") {
		t.Errorf("no cluster DNS IP: %v", err)
	}
}

func TestParseAUsersAddon(t *testing.T) {
	manifest := []byte(`
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team}
spec: {}
---
# an empty document
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
`)
	a, err := Parse("team", "", "state store addons/team.yaml", manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Objects) != 2 || a.Objects[0].GetKind() != "Namespace" {
		t.Errorf("objects %d, first %s: want the namespace first", len(a.Objects), a.Objects[0].GetKind())
	}
	if a.Version != a.Hash[:12] {
		t.Errorf("version %q: a user's add-on without one is versioned by its hash", a.Version)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\n", "document 1: Object 'Kind' is missing"},
		{"no name", "apiVersion: v1\nkind: ConfigMap\n", "document 1: apiVersion, kind and metadata.name are required"},
		{"a list", "apiVersion: v1\nkind: ConfigMapList\nmetadata: {name: x}\nitems: []\n", "lists are not applied"},
		{"not yaml", "a: [", "document 1"},
		{"nothing", "---\n", "no objects"},
	} {
		if _, err := Parse("bad", "", "test", []byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := Parse("Bad_Name", "", "test", manifest); err == nil {
		t.Error("an add-on name that is no DNS label was accepted")
	}
}
