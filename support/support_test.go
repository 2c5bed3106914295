package support

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"time"
)

func TestRedact(t *testing.T) {
	gossipKey := []byte("0123456789abcdef0123456789abcdef")
	r := NewRedactor(gossipKey, []byte("short"))
	in := strings.Join([]string{
		"spec:",
		"  kubelet:",
		"    bootstrapToken: abcdef.0123456789abcdef",
		"  gossip:",
		"    secretKeyFile: /etc/nodeagent/gossip.key",
		"key file holds " + string(gossipKey) + " and as base64 " + base64.StdEncoding.EncodeToString(gossipKey),
		"users:\n- user:\n    client-key-data: LS0tLS1CRUdJTi...",
		"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----",
		"Environment=AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		`{"token": "abc123xyz", "password":"hunter22"}`,
		"journal: kubelet used token abcdef.0123456789abcdef to join",
		"a short word is kept",
	}, "\n")
	out := string(r.Redact([]byte(in)))
	t.Logf("%s", out)
	for _, secret := range []string{"abcdef.0123456789abcdef", string(gossipKey), base64.StdEncoding.EncodeToString(gossipKey),
		"LS0tLS1CRUdJTi", "MHcCAQEEIB", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "abc123xyz", "hunter22"} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q left in:\n%s", secret, out)
		}
	}
	for _, keep := range []string{"secretKeyFile: /etc/nodeagent/gossip.key", "a short word is kept", "bootstrapToken: \"<redacted>\""} {
		if !strings.Contains(out, keep) {
			t.Errorf("%q lost:\n%s", keep, out)
		}
	}
}

func TestArchive(t *testing.T) {
	var buf bytes.Buffer
	a := NewArchive(&buf, NewRedactor([]byte("s3cr3t-value-123")), time.Unix(0, 0))
	if err := a.Add("config.yaml", []byte("x: s3cr3t-value-123\n")); err != nil {
		t.Fatal(err)
	}
	a.Note("journal: journalctl not found")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	gz, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = string(b)
	}
	if files["config.yaml"] != "x: <redacted>\n" || !strings.Contains(files["README.txt"], "journalctl not found") || !strings.Contains(files["README.txt"], "config.yaml") {
		t.Errorf("archive: %q", files)
	}
}

func TestManagedBlock(t *testing.T) {
	hosts := "127.0.0.1 localhost\n# Begin x\n10.0.0.1 api.internal.c\n# End x\n10.9.9.9 mine\n"
	if got := string(ManagedBlock([]byte(hosts), "# Begin x", "# End x")); got != "# Begin x\n10.0.0.1 api.internal.c\n# End x\n" {
		t.Errorf("block = %q", got)
	}
	if ManagedBlock([]byte("127.0.0.1 localhost\n"), "# Begin x", "# End x") != nil {
		t.Error("a block where there is none")
	}
}
