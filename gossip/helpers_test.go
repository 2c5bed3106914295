package gossip

import (
	"encoding/hex"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var verbose = flag.Bool("gossip.log", false, "print the agents' logs")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLogger sends an agent's log to the test log when -gossip.log is set.
func testLogger(t testing.TB, node string) *slog.Logger {
	if !*verbose {
		return discardLogger()
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", node)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// buildRingNode builds the gossip-only agent program (./internal/ringnode)
// the way the Makefile builds nodeagent (static, trimmed, stripped) and
// returns its path. The namespace tests run one per network namespace.
func buildRingNode(t testing.TB) string {
	t.Helper()
	return buildRingProgram(t, "ringnode")
}

// buildRingProgram builds ./internal/<name> as buildRingNode builds ringnode.
func buildRingProgram(t testing.TB, name string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the ring's %s program needs the go tool: %v", name, err)
	}
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./internal/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./internal/%s: %v\n%s", name, err, b)
	}
	return out
}

// ringNodeArgs are a ringnode's flags: every node of one lab shares cluster,
// seeds, router and key file.
type ringNodeArgs struct {
	name, hosts, ipOut, keyFile, router string
	seeds, names                        []string
	refresh                             string  // "" for the default
	logLevel                            string  // "" for the agent's default (warn)
	dilation                            float64 // 0 for none
}

func (r ringNodeArgs) args() []string {
	a := []string{"-cluster", testCluster, "-name", r.name, "-seeds", strings.Join(r.seeds, ","), "-router", r.router,
		"-key-file", r.keyFile, "-hosts", r.hosts}
	if len(r.names) > 0 {
		a = append(a, "-names", strings.Join(r.names, ","))
	}
	if r.ipOut != "" {
		a = append(a, "-ip-out", r.ipOut)
	}
	if r.refresh != "" {
		a = append(a, "-refresh", r.refresh)
	}
	if r.dilation > 0 {
		a = append(a, "-dilation", strconv.FormatFloat(r.dilation, 'g', -1, 64))
	}
	if r.logLevel != "" {
		a = append(a, "-log-level", r.logLevel)
	}
	if *verbose {
		a = append(a, "-v")
	}
	return a
}

// writeRingKey writes a ring key, hex-encoded, to a file of dir for -key-file.
func writeRingKey(t testing.TB, dir string, key []byte) string {
	t.Helper()
	p := filepath.Join(dir, "ring.key")
	if err := os.WriteFile(p, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
