//go:build e2e

package e2e

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

// TestWarmPool: a worker launched into its group's warm pool (Warmed:Stopped)
// fetches and verifies its assets, starts containerd and pre-imports its
// image, but writes no kubelet and joins nothing; it completes the warm-pool
// launch hook and its bootstrap ends. Moved into service, its next boot (the
// restarted instance's bootstrap) does the rest, goes ready and completes the
// launch hook: the time from InService to ready is the figure.
func TestWarmPool(t *testing.T) {
	const id, hook = "i-0e2e0warm0000001", "nodeagent-ready"
	bins, err := testenv.WorkerBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	archives, err := testenv.WorkerArchives()
	if err != nil {
		t.Fatal(err)
	}
	images := loadImages(t)
	i := slices.IndexFunc(images, func(im imageEntry) bool { return im.Name == haHelloImage })
	if i < 0 {
		t.Fatalf("no %s among the image archives", haHelloImage)
	}
	hello := images[i]
	bins = append(bins, testenv.Binary{Name: imageAssetName(hello), Path: filepath.Join(imagesDir(), hello.File)})
	env, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))},
		&awsemu.World{LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: "nodes", Name: hook}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })
	ud := workerUserData(t, env, func(c *config.NodeConfig) {
		c.Spec.Readiness.LifecycleHook = hook
		var assets []config.Asset
		for _, a := range c.Spec.Assets {
			if a.Name == imageAssetName(hello) {
				c.Spec.Images.Archives = append(c.Spec.Images.Archives, config.ImageArchive{Name: hello.Name, URLs: a.URLs, SHA256: a.SHA256})
				continue
			}
			assets = append(assets, a)
		}
		c.Spec.Assets = assets
	})
	inst := workerInstance(t, id, ud)
	inst.AutoScalingGroup = "nodes"
	inst.TargetLifecycleState = awsemu.TargetWarmedStopped
	n := bootNode(t, env, inst)

	began := time.Now()
	if _, code := agent(t, n, "bootstrap"); code != 0 {
		t.Fatalf("bootstrap in the warm pool: exit %d", code)
	}
	t.Logf("FIGURE warm-pool launch → prepared (warm hook completed): %s", time.Since(began).Round(100*time.Millisecond))
	st, _ := status(t, n)
	var ran []string
	for _, p := range st.Phases {
		ran = append(ran, p.Name+"="+string(p.State))
	}
	if want := []string{"host-prep=done", "assets=done", "container-runtime=done", "images=done"}; !slices.Equal(ran, want) {
		t.Errorf("phases in the warm pool %v, want %v", ran, want)
	}
	if st.Warm == nil || st.Warm.Target != awsemu.TargetWarmedStopped || st.Warm.Lifecycle != awsemu.LifecycleContinue {
		t.Errorf("warm stay recorded as %+v", st.Warm)
	}
	for _, f := range []string{"/etc/systemd/system/kubelet.service", "/etc/systemd/system/nodeagent.service", "/var/lib/kubelet/config.yaml"} {
		if _, err := os.Stat(n.M.Path(f)); err == nil {
			t.Errorf("%s exists in the warm pool: the node must not start kubelet nor join", f)
		}
	}
	if b, err := os.ReadFile(n.M.Path("/var/lib/nodeagent/images/imported.json")); err != nil || !strings.Contains(string(b), hello.SHA256) {
		t.Errorf("the image was not pre-imported in the warm pool: %v\n%s", err, b)
	}
	if got := env.Emu.Completions(id); len(got) != 1 || got[0] != (awsemu.Completion{Hook: hook, Transition: "warm", Result: awsemu.LifecycleContinue}) {
		t.Fatalf("completions in the warm pool: %v", got)
	}

	// The group moves the instance into service: it is started again, and its
	// bootstrap runs.
	if err := env.Emu.SetTargetLifecycleState(id, awsemu.TargetInService); err != nil {
		t.Fatal(err)
	}
	inService := time.Now()
	if _, code := agent(t, n, "bootstrap"); code != 0 {
		st, _ := status(t, n)
		t.Fatalf("bootstrap into service: exit %d: %s", code, st.Error)
	}
	t.Logf("FIGURE warm pool: InService → ready (launch hook completed): %s", time.Since(inService).Round(100*time.Millisecond))
	if st, code := status(t, n); code != 0 || !st.Readiness.Ready || st.Readiness.Lifecycle != awsemu.LifecycleContinue {
		t.Errorf("in service: status exit %d, readiness %+v", code, st.Readiness)
	}
	got := env.Emu.Completions(id)
	if len(got) != 2 || got[1] != (awsemu.Completion{Hook: hook, Transition: "launch", Result: awsemu.LifecycleContinue}) {
		t.Errorf("completions %v, want the warm one then the launch into service", got)
	}
	if err := kubeletHealthy(); err != nil {
		t.Error(err)
	}
}
