//go:build e2e

package addons_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/nodeagent/nodeagent/addons"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/pki"
)

// TestApplierE2E specifies the applier against a real kube-apiserver v1.34.4
// (hack/build-k8s.sh) on an embedded etcd, with the credentials the pki phase
// issues a master for it.
func TestApplierE2E(t *testing.T) {
	cfg := startAPIServer(t)
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

// startAPIServer runs etcd (embedded) and kube-apiserver, and returns a client
// configuration with the master's add-on credentials.
func startAPIServer(t *testing.T) *rest.Config {
	t.Helper()
	bin := os.Getenv("NODEAGENT_E2E_KUBE_APISERVER")
	if bin == "" {
		bin = "/var/cache/nodeagent-e2e/k8s-v1.34.4/kube-apiserver"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube-apiserver: %v (hack/build-k8s.sh builds it; make e2e-parts)", err)
	}
	dir := t.TempDir()
	root := fsutil.Root(dir)
	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := pki.GenerateServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"ca.crt": caCert, "ca.key": caKey, "sa.key": saKey} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ph := pki.NewPhase(pki.Options{Root: root, CA: pki.FileCA{Root: root, CertFile: "/ca.crt", KeyFile: "/ca.key"},
		ClusterName: "addons.k8s.local", NodeName: "master-a", NodeIP: net.IPv4(127, 0, 0, 1), Role: config.RoleControlPlane,
		OmitKubeletKubeconfig: true, ServiceAccountKey: pki.FileKey{Root: root, Path: "/sa.key"},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := ph.Act(context.Background()); err != nil {
		t.Fatal(err)
	}

	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	ec := embed.NewConfig()
	ec.Dir = filepath.Join(dir, "etcd")
	cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(etcdPort)}
	pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	ec.InitialCluster = ec.Name + "=" + pu.String()
	ec.LogLevel = "fatal"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		t.Fatal("etcd not ready after a minute")
	}

	p := pki.DefaultPaths()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--etcd-servers="+cu.String(), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort), "--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+root.Path(p.APIServerCert), "--tls-private-key-file="+root.Path(p.APIServerKey),
		"--client-ca-file="+root.Path(p.CACert), "--authorization-mode=RBAC",
		"--service-account-issuer=https://api.internal.addons.k8s.local",
		"--service-account-key-file="+root.Path(p.ServiceAccountPub), "--service-account-signing-key-file="+root.Path(p.ServiceAccountKey),
		"--service-cluster-ip-range=100.64.0.0/13")
	logf, err := os.Create(filepath.Join(dir, "kube-apiserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		_ = logf.Close()
	})

	cfg, err := kube.RESTConfig(root, p.AddonsConf)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	client, err := kube.FromRESTConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, msg := client.Readyz(rctx, "")
		rcancel()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("kube-apiserver not ready after 2m: %s\n%s", msg, tail(string(b), 20))
		}
		time.Sleep(time.Second)
	}
	return cfg
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
