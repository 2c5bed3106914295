// Command demo is `make demo`: it starts the wire-level AWS emulator on loopback,
// boots an emulated EC2 worker (a Debian machine with systemd, in systemd-nspawn),
// runs `nodeagent bootstrap` inside it from its user-data, and prints what an SRE
// on the node would see: `nodeagent status`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

func main() {
	agentBin := flag.String("agent", "bin/nodeagent", "nodeagent binary to run in the node")
	kubelet := flag.String("kubelet", testenv.DefaultKubelet, "kubelet binary served as an asset")
	keep := flag.Bool("keep", false, "keep the node running until interrupted")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *agentBin, *kubelet, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, agentBin, kubelet string, keep bool) error {
	if err := nspawn.Available(""); err != nil {
		return err
	}
	bins, err := testenv.WorkerBinaries(kubelet)
	if err != nil {
		return err
	}
	step("starting the AWS emulator (EC2, S3, Auto Scaling, IMDSv2) and an assets mirror")
	archives, err := testenv.WorkerArchives()
	if err != nil {
		return err
	}
	env, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, &awsemu.World{})
	if err != nil {
		return err
	}
	defer env.Close()
	for _, a := range env.Assets {
		fmt.Printf("    asset %-24s sha256 %s…  %v\n", a.Name, a.SHA256[:16], a.URLs)
	}
	ud, err := testenv.UserData(testenv.NodeSpec{
		Cluster: "demo.example.com", Role: config.RoleNode, Runtime: config.RuntimeContainerd,
		Assets: env.Assets, Kubelet: testenv.ContainerKubeletConfig(),
		Extra: func(c *config.NodeConfig) {
			c.Spec.Kubelet.NodeLabels = map[string]string{"node.kubernetes.io/instancegroup": "nodes"}
		},
	})
	if err != nil {
		return err
	}
	ip, err := testenv.HostIP()
	if err != nil {
		return err
	}
	inst := awsemu.Instance{
		ID: "i-0demo0000000001", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: ip, State: "running",
		Tags:     map[string]string{"KubernetesCluster": "demo.example.com", "kubernetes.io/cluster/demo.example.com": "owned"},
		UserData: string(ud),
	}
	step("booting instance " + inst.ID + " (systemd in systemd-nspawn)")
	bootCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	node, err := testenv.BootNode(bootCtx, env, inst, agentBin, nil, "")
	if err != nil {
		return err
	}
	defer node.Close()
	fmt.Printf("    booted in %s\n", node.M.BootDuration.Round(time.Millisecond))

	step("nodeagent bootstrap (user-data from IMDSv2)")
	start := time.Now()
	_, errOut, code, err := node.Agent(ctx, "bootstrap")
	if err != nil {
		return err
	}
	os.Stdout.Write(errOut)
	fmt.Printf("    exit %d after %s\n", code, time.Since(start).Round(time.Millisecond))

	step("nodeagent bootstrap again (converged: a no-op)")
	start = time.Now()
	if _, _, code2, err := node.Agent(ctx, "bootstrap"); err == nil {
		fmt.Printf("    exit %d after %s\n", code2, time.Since(start).Round(time.Millisecond))
	}

	step("nodeagent status")
	out, _, _, err := node.Agent(ctx, "status")
	if err != nil {
		return err
	}
	os.Stdout.Write(out)
	if code != 0 {
		return fmt.Errorf("bootstrap failed (exit %d)", code)
	}
	if keep {
		step("node kept running; inspect with: nsenter -t " + fmt.Sprint(node.M.Leader) + " -a /usr/local/bin/nodeagent status ; Ctrl-C to stop")
		<-ctx.Done()
	}
	return nil
}

func step(s string) { fmt.Printf("==> %s\n", s) }
