//go:build e2e

package addons_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/nodeagent/nodeagent/addons"
	"github.com/nodeagent/nodeagent/internal/kubetest"
)

// TestApplierE2E specifies the applier against a real kube-apiserver v1.34.4
// (hack/build-k8s.sh) on an embedded etcd, with the credentials the pki phase
// issues a master for it.
func TestApplierE2E(t *testing.T) {
	cfg := kubetest.StartAPIServer(t).Config
	ctx := context.Background()
	ap, err := addons.NewApplier(cfg, "master-a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	set, err := addons.Builtin(addons.Vars{ClusterDNS: "100.64.0.10", ClusterDomain: "cluster.local", Registry: "registry.k8s.io"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	deployments := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	configmaps := corev1.SchemeGroupVersion.WithResource("configmaps")
	get := func(t *testing.T, ns, name string, r schema.GroupVersionResource) *unstructured.Unstructured {
		t.Helper()
		u, err := dyn.Resource(r).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	t.Run("one candidate at a time holds a lease", func(t *testing.T) { testElection(t, cfg) })

	t.Run("first apply creates every add-on and records it", func(t *testing.T) {
		res := ap.Apply(ctx, set)
		if err := res.Err(); err != nil || len(res.Applied) != len(set) {
			t.Fatalf("applied %v, failed %v", res.Applied, err)
		}
		rec, err := ap.Record(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range set {
			e := rec[a.Name]
			if e.State != addons.StateApplied || e.Version != a.Version || e.Hash != a.Hash || e.By != "master-a" {
				t.Errorf("record of %s: %+v", a.Name, e)
			}
		}
		svc, err := dyn.Resource(corev1.SchemeGroupVersion.WithResource("services")).Namespace("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP"); ip != "100.64.0.10" {
			t.Errorf("kube-dns at %s", ip)
		}
	})

	t.Run("an unchanged set is not applied again", func(t *testing.T) {
		before := get(t, "kube-system", "coredns", configmaps).GetResourceVersion()
		res := ap.Apply(ctx, set)
		if len(res.Applied) != 0 || len(res.Unchanged) != len(set) {
			t.Errorf("applied %v, unchanged %v", res.Applied, res.Unchanged)
		}
		if after := get(t, "kube-system", "coredns", configmaps).GetResourceVersion(); after != before {
			t.Errorf("coredns ConfigMap written again: %s → %s", before, after)
		}
	})

	t.Run("a re-apply keeps a user's edits of fields it does not set", func(t *testing.T) {
		patch := `{"metadata":{"annotations":{"team.example/owner":"dns-team"}},"spec":{"replicas":3}}`
		if _, err := dyn.Resource(deployments).Namespace("kube-system").Patch(ctx, "coredns", types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "dns-team"}); err != nil {
			t.Fatal(err)
		}
		gen := get(t, "kube-system", "coredns", deployments).GetGeneration()
		cmRV := get(t, "kube-system", "coredns", configmaps).GetResourceVersion()
		// As after an upgrade whose CoreDNS add-on has another hash.
		stale := `{"data":{"coredns":"{\"version\":\"v1.14.0-nodeagent.1\",\"hash\":\"0\",\"state\":\"applied\"}"}}`
		if _, err := dyn.Resource(configmaps).Namespace(addons.RecordNamespace).Patch(ctx, addons.RecordName, types.MergePatchType, []byte(stale), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		res := ap.Apply(ctx, set)
		if len(res.Applied) != 1 || res.Applied[0] != "coredns" || res.Err() != nil {
			t.Fatalf("applied %v (want coredns only), failed %v", res.Applied, res.Err())
		}
		dep := get(t, "kube-system", "coredns", deployments)
		replicas, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas")
		if replicas != 3 || dep.GetAnnotations()["team.example/owner"] != "dns-team" {
			t.Errorf("user's edit lost: replicas %d, annotations %v", replicas, dep.GetAnnotations())
		}
		if dep.GetGeneration() != gen {
			t.Errorf("the re-apply changed the Deployment's spec: generation %d → %d", gen, dep.GetGeneration())
		}
		if rv := get(t, "kube-system", "coredns", configmaps).GetResourceVersion(); rv != cmRV {
			t.Errorf("the re-apply rewrote the unchanged ConfigMap: %s → %s", cmRV, rv)
		}
	})

	t.Run("a failing add-on is recorded failed and retried", func(t *testing.T) {
		user, err := addons.Parse("team", "", "test", []byte(`apiVersion: v1
kind: ConfigMap
metadata: {name: team-a, namespace: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: team-b, namespace: team}
`))
		if err != nil {
			t.Fatal(err)
		}
		all := append(append([]addons.Addon{}, set...), user)
		res := ap.Apply(ctx, all)
		if res.Failed["team"] == nil || !strings.Contains(res.Failed["team"].Error(), "team-b") {
			t.Fatalf("failed %v, want team's team-b (no namespace team)", res.Failed)
		}
		rec, _ := ap.Record(ctx)
		if e := rec["team"]; e.State != addons.StateFailed || !strings.Contains(e.Error, "team-b") {
			t.Errorf("record of team: %+v", e)
		}
		teamA := get(t, "default", "team-a", configmaps).GetResourceVersion()
		ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "team"}}}
		if _, err := dyn.Resource(corev1.SchemeGroupVersion.WithResource("namespaces")).Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		res = ap.Apply(ctx, all)
		if len(res.Applied) != 1 || res.Applied[0] != "team" || res.Err() != nil {
			t.Fatalf("applied %v, failed %v: want team only", res.Applied, res.Err())
		}
		if rv := get(t, "default", "team-a", configmaps).GetResourceVersion(); rv != teamA {
			t.Errorf("team-a changed by the second apply: %s → %s", teamA, rv)
		}
	})
}
