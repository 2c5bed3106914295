// Command ringnode is one gossip agent and nothing else: the package's real
// Agent (gossip.Start, with the daemon's timers, metadata and hosts-file
// writer) bound to the address that routes to -router, joining static seeds.
// The namespace tests and BenchmarkRingProcesses build it and run one per
// network namespace, so that a process's RSS and CPU are the gossip agent's
// own, not those of the test binary or of the whole node daemon. It is not
// shipped: a node runs the agent inside `nodeagent run`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/gossip/internal/ringflags"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ringnode:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cluster  = flag.String("cluster", "", "cluster name")
		name     = flag.String("name", "", "node name")
		role     = flag.String("role", "Node", "role published in the metadata")
		names    = flag.String("names", "", "comma-separated names to publish")
		seeds    = flag.String("seeds", "", "comma-separated seed addresses")
		router   = flag.String("router", "", "the agent binds the address that routes to this IP (gossip.NodeIP)")
		keyFile  = flag.String("key-file", "", "file holding the ring key in hex")
		hosts    = flag.String("hosts", "", "hosts file the agent keeps")
		ipOut    = flag.String("ip-out", "", "file to write the bound IP to once started")
		refresh  = flag.Duration("refresh", gossip.DefaultSeedRefresh, "seed refresh")
		dilation = flag.Float64("dilation", 1, "every timer of the agent multiplied by this (gossip.Tuning.Dilation)")
		verbose  = flag.Bool("v", false, "log everything to stderr (-log-level debug)")
		logLevel = flag.String("log-level", "warn", "least level logged to stderr: debug, info, warn or error")
	)
	flag.Parse()
	if *cluster == "" || *name == "" || *seeds == "" || *keyFile == "" {
		return errors.New("-cluster, -name, -seeds and -key-file are required")
	}
	rt := net.ParseIP(*router)
	if rt == nil {
		return fmt.Errorf("-router %q is not an IP", *router)
	}
	ip, err := gossip.NodeIP(rt)
	if err != nil {
		return err
	}
	if *ipOut != "" {
		if err := os.WriteFile(*ipOut, []byte(ip.String()+"\n"), 0o644); err != nil {
			return err
		}
	}
	key, err := ringflags.ReadKey(*keyFile)
	if err != nil {
		return err
	}
	var published []string
	if *names != "" {
		published = strings.Split(*names, ",")
	}
	if *verbose {
		*logLevel = "debug"
	}
	log, err := ringflags.Logger(*logLevel)
	if err != nil {
		return err
	}
	log = log.With("node", *name)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := gossip.Start(ctx, gossip.Config{
		ClusterName: *cluster, NodeName: *name, Role: *role, BindIP: ip, SecretKey: key,
		Seeds: gossip.StaticSeeds(strings.Split(*seeds, ",")), SeedRefresh: *refresh,
		Names: published, HostsFile: *hosts, Tuning: &gossip.Tuning{Dilation: *dilation},
		Log: log,
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	return a.Shutdown()
}
