package manifests_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/manifests"
)

// TestEtcdManifestsRunRealEtcd starts the etcd binary (ETCD_BIN, else etcd on
// PATH) with exactly the command lines of the rendered etcd-main and etcd-events
// pods, each path resolved through the pod's own volumes the way the container
// would see it, in a private network and mount namespace so the fixed ports cannot
// collide with anything on the machine and /etc/hosts can name the members. It then
// runs each pod's liveness probe against it, and checks that the client port speaks
// TLS and demands a client certificate.
func TestEtcdManifestsRunRealEtcd(t *testing.T) {
	etcdBin := os.Getenv("ETCD_BIN")
	if etcdBin == "" {
		var err error
		if etcdBin, err = exec.LookPath("etcd"); err != nil {
			t.Fatal("no etcd binary (set ETCD_BIN)")
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root for network and mount namespaces")
	}
	for _, tool := range []string{"unshare", "nsenter", "ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed", tool)
		}
	}

	root := fsutil.Root(t.TempDir())
	o := controlPlaneOptions()
	o.Root = root
	o.Etcd = []manifests.EtcdMember{
		{Cluster: "main", Member: "b", Members: []string{"b"}, DataDir: "/mnt/master-vol-0main"},
		{Cluster: "events", Member: "b", Members: []string{"b"}, DataDir: "/mnt/master-vol-0events"},
	}

	ca := newTestCA(t)
	writePEM(t, root.Path("/etc/kubernetes/pki/ca.crt"), "CERTIFICATE", ca.der)
	var hosts bytes.Buffer
	hosts.WriteString("127.0.0.1 localhost\n")
	clientCert, clientKey := ca.issue(t, root, "/client", "nodeagent-etcd-client", nil)
	for _, cluster := range []string{"main", "events"} {
		host := config.EtcdMemberHost(cluster, "b", clusterName)
		fmt.Fprintf(&hosts, "127.0.0.1 %s\n", host)
		for _, kind := range []string{"server", "peer"} {
			ca.issue(t, root, "/etc/kubernetes/pki/etcd/"+cluster+"/"+kind, host, []string{host, "localhost"})
		}
	}
	// Write the pods (and the data directories) as on a node, after the volumes
	// phase mounted the volumes.
	mountVolumes(t, root, o.Etcd)
	if err := manifests.NewPhase(o).Act(context.Background()); err != nil {
		t.Fatal(err)
	}

	hostsFile := filepath.Join(string(root), "hosts")
	if err := os.WriteFile(hostsFile, hosts.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	var nsPID int
	for i, cluster := range []string{"main", "events"} {
		file := "etcd-" + cluster + ".yaml"
		data, err := os.ReadFile(root.Path(manifests.DefaultDir + "/" + file))
		if err != nil {
			t.Fatal(err)
		}
		pod := decodeStrict(t, file, data)
		c := pod.Spec.Containers[0]
		args := containerArgs(t, root, pod, c)

		var cmd *exec.Cmd
		if i == 0 {
			// unshare execs without forking, so the PID it gets is etcd's.
			cmd = exec.Command("unshare", append([]string{"--mount", "--net", "--", "sh", "-c",
				`ip link set lo up && mount --bind "$0" /etc/hosts && exec "$@"`, hostsFile, etcdBin}, args...)...)
		} else {
			// The second pod shares the first one's host network, like on a node.
			cmd = exec.Command("nsenter", append([]string{"-t", fmt.Sprint(nsPID), "--net", "--mount", "--", etcdBin}, args...)...)
		}
		logFile, err := os.Create(filepath.Join(string(root), file+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatalf("start etcd for %s: %v", file, err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			logFile.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logFile.Name())
				t.Logf("%s etcd log (tail):\n%s", file, tail(string(b), 3000))
			}
		})
		if i == 0 {
			nsPID = cmd.Process.Pid
		}

		live := c.LivenessProbe.HTTPGet
		url := fmt.Sprintf("%s://%s%s", strings.ToLower(string(live.Scheme)),
			net.JoinHostPort(live.Host, live.Port.String()), live.Path)
		if out, err := curlUntilOK(nsPID, 30*time.Second, url); err != nil {
			t.Fatalf("%s: liveness probe %s never succeeded: %v\n%s", file, url, err, out)
		} else if !strings.Contains(out, `"health":"true"`) {
			t.Errorf("%s: liveness answer %q", file, out)
		}

		clientURL := ""
		for _, p := range c.Ports {
			if p.Name == "client" {
				clientURL = fmt.Sprintf("https://127.0.0.1:%d/health", p.ContainerPort)
			}
		}
		caFile := root.Path("/etc/kubernetes/pki/ca.crt")
		if out, err := curl(nsPID, "--cacert", caFile, "--cert", clientCert, "--key", clientKey, clientURL); err != nil || !strings.Contains(out, `"health":"true"`) {
			t.Errorf("%s: %s with a client certificate: %v %s", file, clientURL, err, out)
		}
		// curl exit codes 35 (handshake refused), 55 or 56 (connection dropped
		// after a TLS 1.3 handshake, where the server judges the client's
		// certificate last) mean the server demanded a certificate; 60 would be
		// curl distrusting the server, 7 nothing listening.
		out, err := curl(nsPID, "--cacert", caFile, clientURL)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !slices.Contains([]int{35, 55, 56}, exit.ExitCode()) {
			t.Errorf("%s: %s without a client certificate: %v %s, want the TLS handshake refused", file, clientURL, err, out)
		}
		dataDir := root.Path(pod.Spec.Volumes[0].HostPath.Path)
		if _, err := os.Stat(filepath.Join(dataDir, "member", "snap")); err != nil {
			t.Errorf("%s: etcd did not keep its data on the claimed volume: %v", file, err)
		}
	}
}

// containerArgs turns the container's command into one that runs on the host:
// every absolute path is resolved through the pod's volume mounts to the hostPath
// (under root) that would back it. A path no mount covers fails the test, because in
// the container it would not exist. Volumes are prepared as kubelet would: a
// DirectoryOrCreate is created, Directory and File must already be there.
func containerArgs(t *testing.T, root fsutil.Root, pod *corev1.Pod, c corev1.Container) []string {
	t.Helper()
	hostPaths := map[string]corev1.HostPathVolumeSource{}
	for _, v := range pod.Spec.Volumes {
		hostPaths[v.Name] = *v.HostPath
	}
	for _, m := range c.VolumeMounts {
		hp := hostPaths[m.Name]
		full := root.Path(hp.Path)
		switch *hp.Type {
		case corev1.HostPathDirectoryOrCreate:
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case corev1.HostPathDirectory, corev1.HostPathFile:
			fi, err := os.Stat(full)
			if err != nil || fi.IsDir() != (*hp.Type == corev1.HostPathDirectory) {
				t.Fatalf("volume %s: kubelet would refuse hostPath %s of type %s: %v", m.Name, hp.Path, *hp.Type, err)
			}
		}
	}
	resolve := func(p string) string {
		best := ""
		var target string
		for _, m := range c.VolumeMounts {
			if (p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/")) && len(m.MountPath) > len(best) {
				best = m.MountPath
				target = root.Path(hostPaths[m.Name].Path + strings.TrimPrefix(p, m.MountPath))
			}
		}
		if best == "" {
			t.Fatalf("%s: path %s is not inside any volume mount", pod.Name, p)
		}
		return target
	}
	var out []string
	for _, a := range c.Command[1:] {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(v, "/") {
			a = k + "=" + resolve(v)
		}
		out = append(out, a)
	}
	return out
}

func curl(pid int, args ...string) (string, error) {
	full := append([]string{"-t", fmt.Sprint(pid), "--net", "--", "curl", "-fsS", "--max-time", "5"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

func curlUntilOK(pid int, within time.Duration, url string) (string, error) {
	deadline := time.Now().Add(within)
	for {
		out, err := curl(pid, url)
		if err == nil || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

type testCA struct {
	der  []byte
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{der: der, cert: cert, key: key}
}

// issue writes base.crt and base.key (host paths under root) for a certificate
// good for both server and client use, as etcd's peer TLS needs.
func (ca *testCA) issue(t *testing.T, root fsutil.Root, base, cn string, dns []string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = root.Path(base+".crt"), root.Path(base+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := fsutil.WriteFileAtomic(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
