//go:build e2e

// Package e2e boots real nodes: Debian machines with systemd in systemd-nspawn,
// the agent binary inside, the wire-level AWS emulator outside, real containerd,
// runc and kubelet binaries as verified assets. Run with `make e2e`.
package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
)

var (
	agentBin = flag.String("agent", "", "nodeagent binary to test (default: built from ./cmd/nodeagent)")
	verbose  = flag.Bool("console", false, "copy machine consoles to the test log")
)

// builtAgent is the binary under test, built once per run.
var builtAgent string

func TestMain(m *testing.M) {
	flag.Parse()
	if err := nspawn.Available(""); err != nil {
		println("e2e: " + err.Error())
		os.Exit(1)
	}
	code := func() int {
		if *agentBin != "" {
			builtAgent = *agentBin
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "nodeagent-e2e-bin")
		if err != nil {
			println(err.Error())
			return 1
		}
		defer os.RemoveAll(dir)
		builtAgent = filepath.Join(dir, "nodeagent")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-trimpath", "-o", builtAgent, "./cmd/nodeagent")
		cmd.Dir = filepath.Dir(filepath.Dir(file))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			println("build nodeagent: " + err.Error() + "\n" + string(out))
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// workerAssets are what the emulator serves a worker: its binaries, the release
// archives (containerd's tarball brings ctr, the CNI plugins' tarball every
// plugin) and, as plain assets, the given image archives.
func workerAssets(t testing.TB, images ...imageEntry) ([]testenv.Binary, []testenv.Archive) {
	t.Helper()
	bins, err := testenv.WorkerBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	archives, err := testenv.WorkerArchives()
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range images {
		bins = append(bins, testenv.Binary{Name: imageAssetName(im), Path: filepath.Join(imagesDir(), im.File)})
	}
	return bins, archives
}

// startEnv starts the emulator with the worker binaries and closes it with the test.
func startEnv(t testing.TB, w *awsemu.World) *testenv.Env {
	t.Helper()
	bins, archives := workerAssets(t)
	env, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives, Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })
	return env
}

// bootNode boots an instance's machine; it is removed when the test ends.
func bootNode(t testing.TB, env *testenv.Env, inst awsemu.Instance) *testenv.Node {
	t.Helper()
	return bootNodeBinds(t, env, inst, builtAgent, nil)
}

// bootNodeBinds boots an instance's machine running the agent bin, with the
// host's directories binds ("host:machine") mounted into it; it is removed
// when the test ends.
func bootNodeBinds(t testing.TB, env *testenv.Env, inst awsemu.Instance, bin string, binds []string) *testenv.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var console io.Writer
	if *verbose {
		console = testWriter{t}
	}
	n, err := testenv.BootNodeWithBinds(ctx, env, inst, bin, console, "", binds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return n
}

// agent runs the agent in the node and logs its stderr.
func agent(t testing.TB, n *testenv.Node, args ...string) (stdout []byte, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, errOut, code, err := n.Agent(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nodeagent %v: exit %d\n%s", args, code, errOut)
	return out, code
}

// status reads `nodeagent status -o json` from the node.
func status(t testing.TB, n *testenv.Node) (*bootstrap.State, int) {
	t.Helper()
	out, code := agent(t, n, "status", "-o", "json")
	var st bootstrap.State
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status -o json is not a State: %v\n%s", err, out)
	}
	return &st, code
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// The cluster CA as files on a worker, for the tests of a lone worker with no
// master to sign its certificates (spec.pki.caCertFile/caKeyFile: the node
// signs its own, the operator's explicit choice).
const (
	fileCACert = "/etc/nodeagent/pki/ca.crt"
	fileCAKey  = "/etc/nodeagent/pki/ca.key"
)

func useFileCA(c *config.NodeConfig) {
	c.Spec.PKI.CACertFile, c.Spec.PKI.CAKeyFile = fileCACert, fileCAKey
}

// installCA writes the CA files into the node's machine before its bootstrap.
// fileCAWorker boots a worker of a cluster without an API server that holds
// the cluster CA as files (readiness gives up after 5 s), running the agent bin
// with binds mounted into its machine; it returns the node and the CA's
// certificate.
func fileCAWorker(t *testing.T, env *testenv.Env, id, bin string, binds []string) (*testenv.Node, []byte) {
	t.Helper()
	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := bootNodeBinds(t, env, workerInstance(t, id, workerUserData(t, env, func(c *config.NodeConfig) {
		useFileCA(c)
		c.Spec.Readiness.Timeout = "1s" // no API server: readiness is never judged
	})), bin, binds)
	installCA(t, n, caCert, caKey)
	return n, caCert
}

func installCA(t testing.TB, n *testenv.Node, cert, key []byte) {
	t.Helper()
	for p, b := range map[string][]byte{fileCACert: cert, fileCAKey: key} {
		if err := os.MkdirAll(filepath.Dir(n.M.Path(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(n.M.Path(p), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
