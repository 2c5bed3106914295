//go:build e2e

package cri

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/systemd"
)

// retryConnect dials the container's bus, waiting out dbus's own start.
func retryConnect(ctx context.Context) (*systemd.Manager, error) {
	var last error
	for ctx.Err() == nil {
		m, err := systemd.Connect(ctx)
		if err == nil {
			if _, err = m.UnitState(ctx, "basic.target"); err == nil {
				return m, nil
			}
			m.Close()
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), last)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestE2EContainerd installs the Debian containerd binaries the way the assets
// phase does, runs the phase against a real systemd, and talks to the daemon.
func TestE2EContainerd(t *testing.T) {
	bins := map[string]string{}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc"} {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Fatalf("%s not installed on the host (make deps): %v", b, err)
		}
		bins[b] = p
	}
	mc := bootMachine(t)
	for name, src := range bins {
		copyFile(t, src, filepath.Join(mc.Dir, "usr/local/bin", name))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if m, err := retryConnect(ctx); err != nil {
		t.Fatalf("container bus: %v", err)
	} else {
		m.Close()
	}

	p := NewPhase(Options{Root: fsutil.Root(mc.Dir), Systemd: retryConnect})
	changes, err := p.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: %v", changes)
	start := time.Now()
	if err := p.Act(ctx); err != nil {
		t.Fatalf("Act: %v\n%s", err, journal(mc, "containerd.service"))
	}
	t.Logf("containerd up in %v", time.Since(start).Round(time.Millisecond))
	if err := p.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if changes, err := p.Check(ctx); err != nil || len(changes) != 0 {
		t.Fatalf("second Check: %v %v, want converged", changes, err)
	}

	// The daemon answers on the socket kubelet will use, with the config we wrote.
	sock := fmt.Sprintf("/proc/%d/root%s", mc.Leader, ContainerdSocket)
	out, err := exec.CommandContext(ctx, bins["ctr"], "--address", sock, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Server:") {
		t.Fatalf("ctr version has no server part:\n%s", out)
	}
	out, err = exec.CommandContext(ctx, bins["ctr"], "--address", sock, "plugins", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr plugins ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "io.containerd.grpc.v1") && strings.Contains(line, " cri ") {
			t.Logf("cri plugin: %s", strings.Join(strings.Fields(line), " "))
			if !strings.HasSuffix(strings.TrimSpace(line), "ok") {
				t.Errorf("the CRI plugin did not load:\n%s", journal(mc, "containerd.service"))
			}
		}
	}
}

// journal returns the unit's recent log from inside the container, for failures.
func journal(mc *nspawn.Machine, unit string) string {
	out, _ := exec.Command("nsenter", "-t", fmt.Sprint(mc.Leader), "-m", "-p", "journalctl", "-u", unit, "--no-pager", "-n", "40").CombinedOutput()
	return string(out)
}

// bootMachine boots a real systemd machine (internal/nspawn) and points
// DBUS_SYSTEM_BUS_ADDRESS at its bus (t.Setenv: not for parallel tests).
func bootMachine(t *testing.T) *nspawn.Machine {
	t.Helper()
	if err := nspawn.Available(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var console bytes.Buffer
	m, err := nspawn.Boot(ctx, nspawn.Options{Log: &console})
	if err != nil {
		t.Fatalf("boot: %v\n%s", err, console.String())
	}
	t.Cleanup(func() { _ = m.Close() })
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", m.BusAddress())
	return m
}
