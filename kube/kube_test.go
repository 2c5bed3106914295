package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
)

// These tests run client-go against an HTTPS server that answers with the JSON
// a real kube-apiserver sends (testdata/, shapes taken from a v1.34 cluster):
// the Node object at each stage of a node's life, and Status objects for errors.
// The server checks the client certificate like the API server's x509
// authenticator does. The end-to-end tests run the real API server.

const node = "ip-10-0-1-5.ec2.internal"

func TestNodeStatusFollowsTheNodeObject(t *testing.T) {
	api := startAPIServer(t)
	c := api.client(t)
	steps := []struct {
		stage       string
		answer      string // testdata file the API server answers with
		wantReady   bool
		wantReason  string
		wantPodCIDR string
	}{
		{"kubelet has not registered the node yet", "notfound.json",
			false, "Node ip-10-0-1-5.ec2.internal not registered yet", ""},
		{"registered, pod CIDR allocated, but no network plugin yet", "node-notready.json",
			false, "Node ip-10-0-1-5.ec2.internal NotReady (KubeletNotReady): container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
			"100.96.1.0/24"},
		{"kubelet posts Ready", "node-ready.json",
			true, "Node ip-10-0-1-5.ec2.internal Ready", "100.96.1.0/24"},
		{"kubelet stopped posting status", "node-unknown.json",
			false, "Node ip-10-0-1-5.ec2.internal NotReady (NodeStatusUnknown): Kubelet stopped posting node status.", "100.96.1.0/24"},
	}
	for _, s := range steps {
		t.Run(s.stage, func(t *testing.T) {
			api.answer(s.answer)
			ready, reason, podCIDR, err := c.NodeStatus(context.Background(), node)
			if err != nil {
				t.Fatalf("NodeStatus: %v (a definite answer from the API server is a reason, not an error)", err)
			}
			if ready != s.wantReady || reason != s.wantReason || podCIDR != s.wantPodCIDR {
				t.Errorf("NodeStatus = (%v, %q, %q)\nwant          (%v, %q, %q)", ready, reason, podCIDR, s.wantReady, s.wantReason, s.wantPodCIDR)
			}
		})
	}
}

func TestNodeStatusErrorsWhenItCannotAsk(t *testing.T) {
	t.Run("the API server forbids the request", func(t *testing.T) {
		api := startAPIServer(t)
		api.answer("forbidden.json")
		_, _, _, err := api.client(t).NodeStatus(context.Background(), node)
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("err = %v, want the API server's forbidden message", err)
		}
	})
	t.Run("another node's credentials are refused", func(t *testing.T) {
		api := startAPIServer(t)
		api.answer("node-ready.json")
		_, _, _, err := api.client(t).NodeStatus(context.Background(), "ip-10-0-1-6.ec2.internal")
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("err = %v, want forbidden", err)
		}
	})
	t.Run("nothing listens at the server address", func(t *testing.T) {
		api := startAPIServer(t)
		c := api.client(t)
		api.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _, _, err := c.NodeStatus(ctx, node)
		if err == nil || !strings.Contains(err.Error(), "get Node "+node) {
			t.Errorf("err = %v, want an error naming the request", err)
		}
	})
	t.Run("the server's certificate is not signed by the kubeconfig's CA", func(t *testing.T) {
		api := startAPIServer(t)
		api.answer("node-ready.json")
		other := newTestCA(t)
		os.WriteFile(api.root.Path("/etc/kubernetes/pki/ca.crt"), other.certPEM, 0o644)
		_, _, _, err := api.client(t).NodeStatus(context.Background(), node)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("err = %v, want a certificate verification error", err)
		}
	})
}

// kubelet's kubeconfig names its CA and client certificate by host path
// (kubelet/ renders it so; TLS bootstrap writes the same form). Under --root the
// files live below the root, and Load must find them there.
func TestLoadResolvesKubeconfigFilesUnderRoot(t *testing.T) {
	api := startAPIServer(t)
	api.answer("node-ready.json")
	t.Run("absolute host paths", func(t *testing.T) {
		c, err := Load(api.root, "/var/lib/kubelet/kubeconfig")
		if err != nil {
			t.Fatal(err)
		}
		if ready, reason, _, err := c.NodeStatus(context.Background(), node); err != nil || !ready {
			t.Errorf("NodeStatus = %v %q %v, want ready through the client certificate under the root", ready, reason, err)
		}
	})
	t.Run("paths relative to the kubeconfig's directory", func(t *testing.T) {
		kc := api.kubeconfig("../../../etc/kubernetes/pki/ca.crt", "pki/kubelet-client.crt", "pki/kubelet-client.key")
		writeFile(t, api.root.Path("/var/lib/kubelet/relative.kubeconfig"), kc, 0o600)
		c, err := Load(api.root, "/var/lib/kubelet/relative.kubeconfig")
		if err != nil {
			t.Fatal(err)
		}
		if ready, reason, _, err := c.NodeStatus(context.Background(), node); err != nil || !ready {
			t.Errorf("NodeStatus = %v %q %v, want ready", ready, reason, err)
		}
	})
	t.Run("the host's own files are not read when a root is given", func(t *testing.T) {
		// Under a root, "/etc/kubernetes/pki/ca.crt" means <root>/etc/..., never
		// the machine's file: a missing file under the root is an error.
		os.Remove(api.root.Path("/etc/kubernetes/pki/ca.crt"))
		_, err := Load(api.root, "/var/lib/kubelet/kubeconfig")
		if err == nil || !strings.Contains(err.Error(), api.root.Path("/etc/kubernetes/pki/ca.crt")) {
			t.Errorf("err = %v, want one naming the CA file under the root", err)
		}
	})
	t.Run("no kubeconfig yet", func(t *testing.T) {
		_, err := Load(api.root, "/var/lib/kubelet/missing")
		if err == nil || !os.IsNotExist(unwrapAll(err)) {
			t.Errorf("err = %v, want not-exist", err)
		}
	})
	t.Run("not a kubeconfig", func(t *testing.T) {
		writeFile(t, api.root.Path("/var/lib/kubelet/garbage"), []byte("clusters: {{{"), 0o600)
		if _, err := Load(api.root, "/var/lib/kubelet/garbage"); err == nil {
			t.Error("a corrupt kubeconfig was accepted")
		}
	})
}

func TestReasonIsOneBoundedLine(t *testing.T) {
	got := oneLine("line one\nline two\t" + strings.Repeat("é", 400))
	if strings.ContainsAny(got, "\n\t") {
		t.Errorf("control characters survive: %q", got)
	}
	if len(got) > maxMessage+len("…") || !strings.HasSuffix(got, "…") {
		t.Errorf("%d bytes, want at most %d and an ellipsis", len(got), maxMessage)
	}
	if !strings.HasPrefix(got, "line one line two ") {
		t.Errorf("got %q", got[:30])
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// apiServer is an HTTPS server that serves one Node as the API server would,
// to clients presenting a certificate for system:node:<that node>.
type apiServer struct {
	srv  *httptest.Server
	ca   *testCA
	root fsutil.Root
	mu   sync.Mutex
	file string
}

func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	a := &apiServer{ca: newTestCA(t), root: fsutil.Root(t.TempDir())}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	serving := a.ca.issue(t, "kube-apiserver", x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	pool := x509.NewCertPool()
	pool.AddCert(a.ca.cert)
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{serving.pair(t)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)

	// The files as the pki phase and the kubelet phase lay them out on a node.
	client := a.ca.issue(t, "system:node:"+node, x509.ExtKeyUsageClientAuth, nil)
	writeFile(t, a.root.Path("/etc/kubernetes/pki/ca.crt"), a.ca.certPEM, 0o644)
	writeFile(t, a.root.Path("/var/lib/kubelet/pki/kubelet-client.crt"), client.certPEM, 0o644)
	writeFile(t, a.root.Path("/var/lib/kubelet/pki/kubelet-client.key"), client.keyPEM, 0o600)
	writeFile(t, a.root.Path("/var/lib/kubelet/kubeconfig"),
		a.kubeconfig("/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/pki/kubelet-client.crt", "/var/lib/kubelet/pki/kubelet-client.key"), 0o600)
	return a
}

// kubeconfig is kubelet's kubeconfig in the form kubelet/ renders it.
func (a *apiServer) kubeconfig(ca, cert, key string) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters:
- name: unit.k8s.local
  cluster:
    server: ` + a.srv.URL + `
    certificate-authority: ` + ca + `
users:
- name: kubelet
  user:
    client-certificate: ` + cert + `
    client-key: ` + key + `
contexts:
- name: kubelet@unit.k8s.local
  context: {cluster: unit.k8s.local, user: kubelet}
current-context: kubelet@unit.k8s.local
`)
}

func (a *apiServer) client(t *testing.T) *Client {
	t.Helper()
	c, err := Load(a.root, "/var/lib/kubelet/kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (a *apiServer) answer(file string) {
	a.mu.Lock()
	a.file = file
	a.mu.Unlock()
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	file := a.file
	a.mu.Unlock()
	name, ok := strings.CutPrefix(r.URL.Path, "/api/v1/nodes/")
	if r.Method != http.MethodGet || !ok {
		http.Error(w, "unexpected request "+r.Method+" "+r.URL.Path, http.StatusNotImplemented)
		return
	}
	if cn := r.TLS.PeerCertificates[0].Subject.CommonName; cn != "system:node:"+name {
		// The Node authorizer lets a kubelet read only its own Node.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodes \"` + name +
			`\" is forbidden: User \"` + cn + `\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node '` +
			strings.TrimPrefix(cn, "system:node:") + `' cannot read '` + name + `', only its own Node object","reason":"Forbidden","details":{"name":"` +
			name + `","kind":"nodes"},"code":403}`))
		return
	}
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch file {
	case "notfound.json":
		w.WriteHeader(http.StatusNotFound)
	case "forbidden.json":
		w.WriteHeader(http.StatusForbidden)
	}
	w.Write(b)
}

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

type leaf struct{ certPEM, keyPEM []byte }

func (l leaf) pair(t *testing.T) tls.Certificate {
	p, err := tls.X509KeyPair(l.certPEM, l.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newTestCA is a cluster CA as the state store holds one (pki.GenerateCA).
func newTestCA(t *testing.T) *testCA {
	t.Helper()
	certPEM, keyPEM, err := pki.GenerateCA("kubernetes", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatal("GenerateCA returned no PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: certPEM}
}

func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, ip net.IP) leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return leaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
}

func writeFile(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
}
