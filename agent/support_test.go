package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
)

// The support archive holds what an SRE needs and none of the node's secrets:
// the bootstrap token, the gossip key, private keys, AWS credentials.
func TestSupportArchiveHasNoSecrets(t *testing.T) {
	const (
		token     = "a1b2c3.0123456789abcdef"
		gossipKey = "gossip-key-0123456789abcdef-xyz"
		akid      = "AKIAIOSFODNN7EXAMPLE"
		secretKey = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	)
	t.Setenv("AWS_ACCESS_KEY_ID", akid)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")
	root := t.TempDir()
	o := Options{Root: fsutil.Root(root), StateDir: DefaultStateDir, Log: quietLog()}
	write := func(p, s string) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, caKey, err := pki.GenerateCA("kubernetes", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write("/var/lib/nodeagent/config.yaml", `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: support.example.com}
  role: Node
  kubernetesVersion: v1.34.4
  host: {hostname: ip-10-0-1-5.ec2.internal}
  kubelet: {bootstrapToken: `+token+`}
  gossip: {secretKeyFile: /etc/nodeagent/gossip.key}
`)
	write("/etc/nodeagent/gossip.key", gossipKey+"\n")
	write("/var/lib/nodeagent/state.json", `{"schemaVersion":1,"node":{"name":"ip-10-0-1-5.ec2.internal"},"phases":[],"readiness":{"ready":false,"reason":"kubelet joined with `+token+`"}}`)
	write("/var/lib/kubelet/config.yaml", "kind: KubeletConfiguration\ncgroupDriver: systemd\n")
	write("/etc/kubernetes/manifests/kube-proxy.yaml", "apiVersion: v1\nkind: Pod\n# a key pasted by hand:\n"+string(caKey))
	write("/etc/hosts", "127.0.0.1 localhost\n# Begin host entries managed by nodeagent - do not edit\n10.0.0.1 api.internal.support.example.com\n# End host entries managed by nodeagent\n")

	var buf bytes.Buffer
	so := SupportOptions{Socket: filepath.Join(root, "no.sock"), Doctor: DoctorOptions{NTPServer: "127.0.0.1:1", CheckTimeout: 2 * time.Second}}
	if err := Support(context.Background(), o, so, &buf); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	t.Logf("README.txt:\n%s\nconfig.yaml:\n%s", files["README.txt"], files["config.yaml"])
	for _, want := range []string{"state.json", "status.txt", "doctor.json", "config.yaml", "kubelet/config.yaml", "manifests/kube-proxy.yaml", "hosts-managed-block.txt", "README.txt"} {
		if _, ok := files[want]; !ok {
			t.Errorf("archive lacks %s (has %v)", want, keys(files))
		}
	}
	if !strings.Contains(files["hosts-managed-block.txt"], "api.internal.support.example.com") || strings.Contains(files["hosts-managed-block.txt"], "localhost") {
		t.Errorf("hosts block: %q", files["hosts-managed-block.txt"])
	}
	if !strings.Contains(files["config.yaml"], "secretKeyFile: /etc/nodeagent/gossip.key") || !strings.Contains(files["doctor.json"], `"check": "swap"`) {
		t.Errorf("config or doctor report incomplete:\n%s\n%s", files["config.yaml"], files["doctor.json"])
	}
	if !strings.Contains(files["README.txt"], "gossip-members.json") {
		t.Errorf("README does not say why the gossip members are missing:\n%s", files["README.txt"])
	}
	keyBody := strings.Split(string(caKey), "\n")[1]
	for name, content := range files {
		for _, secret := range []string{token, gossipKey, akid, secretKey, keyBody} {
			if strings.Contains(content, secret) {
				t.Errorf("%s holds the secret %q", name, secret)
			}
		}
	}
}

func untar(t *testing.T, b []byte) map[string]string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		c, _ := io.ReadAll(tr)
		files[h.Name] = string(c)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
