// Package kubetest runs a real kube-apiserver (v1.34.4, from make e2e-parts)
// on an embedded etcd, and optionally kube-controller-manager with chosen
// controllers, for tests that need the API server's own behaviour (admission,
// eviction, disruption budgets). A missing binary fails the test loudly.
package kubetest

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
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/pki"
)

// Parts is where make e2e-parts leaves the Kubernetes binaries.
const Parts = "/var/cache/nodeagent-e2e/k8s-v1.34.4"

// Server is a running API server.
type Server struct {
	// Config has the master's add-on credentials (system:masters).
	Config *rest.Config
	dir    string
}

func binary(t *testing.T, env, name string) string {
	t.Helper()
	bin := os.Getenv(env)
	if bin == "" {
		bin = filepath.Join(Parts, name)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: %v (hack/build-k8s.sh builds it; make e2e-parts)", name, err)
	}
	return bin
}

// StartAPIServer runs etcd (embedded) and kube-apiserver until the test ends.
func StartAPIServer(t *testing.T) *Server {
	t.Helper()
	bin := binary(t, "NODEAGENT_E2E_KUBE_APISERVER", "kube-apiserver")
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
		ClusterName: "kubetest.k8s.local", NodeName: "master-a", NodeIP: net.IPv4(127, 0, 0, 1), Role: config.RoleControlPlane,
		OmitKubeletKubeconfig: true, ServiceAccountKey: pki.FileKey{Root: root, Path: "/sa.key"},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := ph.Act(context.Background()); err != nil {
		t.Fatal(err)
	}

	etcdPort, peerPort, apiPort := FreePort(t), FreePort(t), FreePort(t)
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
	logf := start(t, dir, bin,
		"--etcd-servers="+cu.String(), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort), "--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+root.Path(p.APIServerCert), "--tls-private-key-file="+root.Path(p.APIServerKey),
		"--client-ca-file="+root.Path(p.CACert), "--authorization-mode=RBAC",
		"--service-account-issuer=https://api.internal.kubetest.k8s.local",
		"--service-account-key-file="+root.Path(p.ServiceAccountPub), "--service-account-signing-key-file="+root.Path(p.ServiceAccountKey),
		"--service-cluster-ip-range=100.64.0.0/13")

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
			b, _ := os.ReadFile(logf)
			t.Fatalf("kube-apiserver not ready after 2m: %s\n%s", msg, Tail(string(b), 20))
		}
		time.Sleep(time.Second)
	}
	return &Server{Config: cfg, dir: dir}
}

// StartControllerManager runs kube-controller-manager with only the named
// controllers (e.g. "disruption") against s, until the test ends.
func (s *Server) StartControllerManager(t *testing.T, controllers ...string) {
	t.Helper()
	bin := binary(t, "NODEAGENT_E2E_KUBE_CONTROLLER_MANAGER", "kube-controller-manager")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: s.Config.Host, CertificateAuthorityData: s.Config.CAData, CertificateAuthority: s.Config.CAFile}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: s.Config.CertData, ClientKeyData: s.Config.KeyData,
		ClientCertificate: s.Config.CertFile, ClientKey: s.Config.KeyFile}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	path := filepath.Join(s.dir, "controller-manager.conf")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	start(t, s.dir, bin, "--kubeconfig="+path, "--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false", "--use-service-account-credentials=false", "--secure-port=0")
}

// start runs a binary until the test ends; its output goes to a log file in
// dir, whose path it returns.
func start(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	logf, err := os.Create(filepath.Join(dir, filepath.Base(bin)+".log"))
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
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s:\n%s", filepath.Base(bin), Tail(string(b), 30))
		}
	})
	return logf.Name()
}

// FreePort is a free TCP port on the loopback.
func FreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
