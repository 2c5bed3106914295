package pki

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// A cluster whose API servers sit behind a name of its own (a load balancer,
// spec.cluster.apiServer) gets that name into the apiserver's certificate, and
// every kubeconfig of a node that reaches them over the network points at it.
func TestCustomAPIServerIsCertifiedAndUsed(t *testing.T) {
	const custom = "k8s-api.corp.example:6443"
	ca := newCA(t, "ca", 10*year)

	t.Run("the apiserver certificate names the host", func(t *testing.T) {
		root := t.TempDir()
		o := cpOptions(fsutil.Root(root), ca)
		o.APIServer = custom
		converge(t, o)
		c := certAt(t, root, "/etc/kubernetes/pki/apiserver.crt")
		if !slices.Contains(c.DNSNames, "k8s-api.corp.example") {
			t.Errorf("apiserver SANs %v lack k8s-api.corp.example", c.DNSNames)
		}
		if err := c.VerifyHostname("k8s-api.corp.example"); err != nil {
			t.Error(err)
		}
		if !slices.Contains(c.DNSNames, "api.internal.k.example.com") {
			t.Errorf("apiserver SANs %v lost the internal name", c.DNSNames)
		}
	})

	t.Run("an address is certified as an IP", func(t *testing.T) {
		root := t.TempDir()
		o := cpOptions(fsutil.Root(root), ca)
		o.APIServer = "10.9.8.7:443"
		converge(t, o)
		if err := certAt(t, root, "/etc/kubernetes/pki/apiserver.crt").VerifyHostname("10.9.8.7"); err != nil {
			t.Error(err)
		}
	})

	t.Run("a worker's kubeconfigs point at it", func(t *testing.T) {
		root := t.TempDir()
		o := workerOptions(fsutil.Root(root), ca)
		o.APIServer = custom
		converge(t, o)
		for _, kc := range []string{"/etc/kubernetes/kube-proxy.conf", "/var/lib/kubelet/kubeconfig"} {
			b, err := os.ReadFile(filepath.Join(root, kc))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "server: https://"+custom+"\n") {
				t.Errorf("%s does not point at https://%s:\n%s", kc, custom, b)
			}
			if strings.Contains(string(b), "api.internal.") {
				t.Errorf("%s still names api.internal:\n%s", kc, b)
			}
		}
	})

	t.Run("the default is api.internal.<cluster>:443", func(t *testing.T) {
		root := t.TempDir()
		converge(t, workerOptions(fsutil.Root(root), ca))
		b, err := os.ReadFile(filepath.Join(root, "/etc/kubernetes/kube-proxy.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "server: https://api.internal.k.example.com:443\n") {
			t.Errorf("kube-proxy kubeconfig:\n%s", b)
		}
	})
}
