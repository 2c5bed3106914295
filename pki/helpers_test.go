package pki

import (
	"context"
	"crypto/x509"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// staticCA is a CASource holding PEM bytes, as the state store would return them.
type staticCA struct{ cert, key []byte }

func (s staticCA) Load(context.Context) ([]byte, []byte, error) { return s.cert, s.key, nil }

func newCA(t *testing.T, cn string, validity time.Duration) staticCA {
	t.Helper()
	c, k, err := GenerateCA(cn, validity)
	if err != nil {
		t.Fatal(err)
	}
	return staticCA{c, k}
}

var twoEtcd = []config.EtcdCluster{{Name: "main", ClientPort: 2379, PeerPort: 2380}, {Name: "events", ClientPort: 4002, PeerPort: 2381}}

func cpOptions(root fsutil.Root, ca CASource) Options {
	return Options{
		Root: root, CA: ca, ClusterName: "k.example.com", NodeName: "ip-10-0-0-1.ec2.internal",
		NodeIP: net.ParseIP("10.0.0.1"), Role: config.RoleControlPlane, EtcdClusters: twoEtcd,
		EtcdMember: map[string]string{"main": "a", "events": "a"}, ServiceAccountKey: sharedSAKey,
	}
}

// sharedSAKey is the cluster's service-account key, as a state store holds it.
var sharedSAKey = staticKey(func() []byte {
	k, err := GenerateServiceAccountKey()
	if err != nil {
		panic(err) // crypto/rand failing is not a test outcome
	}
	return k
}())

type staticKey []byte

func (k staticKey) Load(context.Context) ([]byte, error) { return k, nil }

func workerOptions(root fsutil.Root, ca CASource) Options {
	return Options{
		Root: root, CA: ca, ClusterName: "k.example.com", NodeName: "ip-10-0-1-7.ec2.internal",
		NodeIP: net.ParseIP("10.0.1.7"), Role: config.RoleNode,
	}
}

// converge runs the phase the way the runner does and fails the test on error.
func converge(t *testing.T, o Options) []bootstrap.Change {
	t.Helper()
	ctx := context.Background()
	ph := NewPhase(o)
	changes, err := ph.Check(ctx)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if len(changes) > 0 {
		if err := ph.Act(ctx); err != nil {
			t.Fatalf("act: %v", err)
		}
	}
	if err := ph.Verify(ctx); err != nil {
		t.Fatalf("verify: %v", err)
	}
	after, err := ph.Check(ctx)
	if err != nil {
		t.Fatalf("check after act: %v", err)
	}
	if len(after) != 0 {
		t.Fatalf("not converged after act: %v", after)
	}
	return changes
}

type fileInfo struct {
	mode    fs.FileMode
	mtime   time.Time
	content string
}

// snapshot maps every regular file under root (as a host path) to its state.
func snapshot(t *testing.T, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out["/"+rel] = fileInfo{mode: fi.Mode().Perm(), mtime: fi.ModTime(), content: string(b)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func changedFiles(before, after map[string]fileInfo) []string {
	var out []string
	for p, a := range after {
		if b, ok := before[p]; !ok || b.content != a.content || !b.mtime.Equal(a.mtime) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func changeTargets(cs []bootstrap.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Target)
	}
	slices.Sort(out)
	return out
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := firstCert(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func caPool(t *testing.T, ca staticCA) (*x509.CertPool, *x509.Certificate) {
	t.Helper()
	c, err := firstCert(ca.cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return pool, c
}
