//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

// TestFullVarLibNode: a worker whose /var/lib is a small filesystem of its own
// (a loop-mounted ext4 holding a copy of the image's /var/lib) has work to do
// when its /var/lib is full to the last byte: the run fails with an error
// naming the path and "no space left on device", the state file keeps its last
// good bytes with no temp file beside it, nothing the agent writes is empty.
// Once the space is freed, bootstrap converges.
func TestFullVarLibNode(t *testing.T) {
	env := startEnv(t, &awsemu.World{})
	disk := newDisk(t, "512M", map[string]string{"varlib": "/var/lib"})
	sh(t, "cp", "-a", nspawn.DefaultRootfs+"/var/lib/.", filepath.Join(disk.mnt, "varlib"))
	n, _ := fileCAWorker(t, env, "i-0e2e0fulldisk01", builtAgent, disk.binds())
	statePath := disk.path(t, "/var/lib/nodeagent/state.json")
	kubeletConfig := disk.path(t, "/var/lib/kubelet/config.yaml")
	fill := filepath.Join(disk.mnt, "fill")
	converged := func(when string) {
		t.Helper()
		st, _ := status(t, n)
		for _, p := range st.Phases {
			// No API server here: readiness waits for a Node object that never comes.
			if p.Name != "readiness" && p.State != bootstrap.PhaseDone {
				t.Errorf("%s: phase %s is %s (%s)", when, p.Name, p.State, p.Error)
			}
		}
		if why := disk.damage(t, n); why != "" {
			t.Errorf("%s: %s", when, why)
		}
	}

	// With room: the last good state.
	run(t, n, "bootstrap")
	converged("with room")
	good, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatalf("no state file: %v", err)
	}

	// Work to do (kubelet's configuration is gone) on a /var/lib filled up to
	// the last byte: the run fails naming the path and ENOSPC, the state file
	// keeps its bytes, no temp file is left beside it, nothing is torn.
	if err := os.Remove(kubeletConfig); err != nil {
		t.Fatal(err)
	}
	// Nothing else writes meanwhile: the daemon and kubelet are stopped (the
	// run starts them again once it has room).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_, errOut, err := n.M.Exec(ctx, nil, "systemctl", "stop", "nodeagent.service", "kubelet.service")
	cancel()
	if err != nil {
		t.Fatalf("stop the daemon and kubelet: %v: %s", err, errOut)
	}
	// ext4 frees a deleted file's blocks when its journal commits: fill
	// again after each sync until nothing more fits.
	for fillUp(t, fill) > 0 {
		sh(t, "sync", "-f", disk.mnt)
	}
	r := run(t, n, "bootstrap")
	msg := lastLine(r.Stderr)
	t.Logf("full /var/lib: exit %d: %s", r.Code, msg)
	if r.Code == 0 {
		t.Error("bootstrap succeeded on a full /var/lib")
	}
	if !strings.Contains(msg, "no space left on device") || !strings.Contains(msg, "/var/lib/") {
		t.Errorf("full: the error names neither the path nor ENOSPC: %s", msg)
	}
	if now, err := os.ReadFile(statePath); err != nil || !bytes.Equal(now, good) {
		t.Errorf("full: the state file changed (err %v):\n%s\nwas:\n%s", err, now, good)
	}
	if tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(statePath), ".state.json.tmp-*")); len(tmps) > 0 {
		t.Errorf("full: temp files left beside the state file: %v", tmps)
	}
	if why := disk.damage(t, n); why != "" {
		t.Errorf("full: %s", why)
	}

	// Space freed: the boot converges and puts kubelet's configuration back.
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run(t, n, "bootstrap")
	t.Logf("bootstrap after freeing space: %s", time.Since(start).Round(100*time.Millisecond))
	converged("space freed")
	if b, err := os.ReadFile(kubeletConfig); err != nil || len(b) == 0 {
		t.Errorf("kubelet's configuration after space was freed: %v (%d bytes)", err, len(b))
	}
}

func run(t *testing.T, n *testenv.Node, args ...string) testenv.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r, err := n.Run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// fillUp appends to fill until the filesystem refuses even a single byte; it
// returns how many bytes it wrote.
func fillUp(t *testing.T, fill string) int64 {
	t.Helper()
	f, err := os.OpenFile(fill, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wrote int64
	for _, chunk := range []int{1 << 20, 4096, 1} {
		buf := make([]byte, chunk)
		for {
			k, err := f.Write(buf)
			wrote += int64(k)
			if err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("fill: %v", err)
				}
				break
			}
		}
		if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("fill: %v", err)
		}
	}
	return wrote
}
