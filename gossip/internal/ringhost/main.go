// Command ringhost runs many gossip agents in one process: the package's real
// Agent, one per address of a range that routes to this host's namespace
// (agent i binds the i-th address after -first-ip and is named after it, as
// EC2 names instances). BenchmarkRingProcesses uses it for rings larger than
// this machine can run as one process per node: the host holds most of the
// ring, undilated, while a few real ringnode processes, whose CPU and memory
// are what the bench measures, are members like any other. It starts its
// agents -per-second at a time (an Auto Scaling launch), prints a "started"
// line once all are up and a "ring" line every -report with the least and
// median number of alive members its agents see, and stops on SIGTERM. It is
// not shipped.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/gossip/internal/ringflags"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ringhost:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cluster   = flag.String("cluster", "", "cluster name")
		firstIP   = flag.String("first-ip", "", "address of the first agent; agent i binds the i-th address after it")
		count     = flag.Int("count", 0, "number of agents")
		seedsFile = flag.String("seeds-file", "", "file of seed addresses, one per line (a thousand do not fit a command line comfortably)")
		keyFile   = flag.String("key-file", "", "file holding the ring key in hex")
		perSecond = flag.Int("per-second", 10, "agents started per (dilated) second")
		dilation  = flag.Float64("dilation", 1, "every timer of the agents multiplied by this (gossip.Tuning.Dilation)")
		ringSize  = flag.Int("ring-size", 0, "members of the whole ring (these agents and the others); 0: -count")
		report    = flag.Duration("report", 5*time.Second, "how often to print the ring line while it is not whole (once whole: every 12 times that)")
		logLevel  = flag.String("log-level", "warn", "least level logged to stderr")
	)
	flag.Parse()
	if *cluster == "" || *firstIP == "" || *count <= 0 || *seedsFile == "" || *keyFile == "" || *perSecond <= 0 {
		return errors.New("-cluster, -first-ip, -count > 0, -seeds-file, -key-file and -per-second > 0 are required")
	}
	first, err := netip.ParseAddr(*firstIP)
	if err != nil || !first.Is4() {
		return fmt.Errorf("-first-ip %q is not an IPv4 address", *firstIP)
	}
	seedList, err := readSeeds(*seedsFile)
	if err != nil {
		return err
	}
	key, err := ringflags.ReadKey(*keyFile)
	if err != nil {
		return err
	}
	log, err := ringflags.Logger(*logLevel)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// On a signal the process exits without its agents leaving the ring
	// one by one (a thousand graceful leaves take minutes): the bench is over
	// and the ring with it.
	agents := make([]*gossip.Agent, 0, *count)
	tune := &gossip.Tuning{Dilation: *dilation}
	second := time.Duration(float64(time.Second) * *dilation)
	phase := time.Duration(float64(gossip.DefaultTuning().GossipInterval) * *dilation)
	begin := time.Now()
	ip := first
	for i := range *count {
		// A launch schedule, not a wait for a condition: batch b starts b
		// (dilated) seconds in, each agent at a random moment within one gossip
		// interval of it (booting nodes have independent phases).
		at := time.Duration(i / *perSecond)*second + rand.N(phase)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(begin.Add(at))):
		}
		a, err := gossip.Start(ctx, gossip.Config{
			ClusterName: *cluster, NodeName: nodeName(ip), Role: "Node", BindIP: net.IP(ip.AsSlice()), SecretKey: key,
			Seeds: gossip.StaticSeeds(seedList), Tuning: tune, Log: log.With("node", nodeName(ip)),
		})
		if err != nil {
			return fmt.Errorf("start agent %d (%s): %w", i, ip, err)
		}
		agents = append(agents, a)
		ip = ip.Next()
	}
	fmt.Printf("started %d agents in %v\n", len(agents), time.Since(begin).Round(time.Millisecond))
	if *ringSize <= 0 {
		*ringSize = *count
	}
	// Reading every agent's view allocates N² records: once the ring is
	// whole it is read seldom, so as not to load the cores the measured
	// processes share.
	for {
		wait := *report
		if least := printRing(os.Stdout, agents); least == *ringSize {
			wait *= 12
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// nodeName is an agent's name, after its address as EC2 names instances.
func nodeName(ip netip.Addr) string {
	return "ip-" + strings.ReplaceAll(ip.String(), ".", "-")
}

// readSeeds reads the seed addresses, one per line.
func readSeeds(file string) ([]string, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("-seeds-file: %w", err)
	}
	seeds := strings.Fields(string(raw))
	if len(seeds) == 0 {
		return nil, fmt.Errorf("-seeds-file %s lists no address", file)
	}
	return seeds, nil
}

// printRing prints how many alive members the agents see: the least, the
// median and the most; it returns the least.
func printRing(w io.Writer, agents []*gossip.Agent) int {
	views := make([]int, len(agents))
	for i, a := range agents {
		for _, m := range a.Members() {
			if m.State == gossip.StateAlive {
				views[i]++
			}
		}
	}
	slices.Sort(views)
	fmt.Fprintf(w, "ring agents=%d alive-least=%d alive-median=%d alive-most=%d\n", len(views), views[0], views[len(views)/2], views[len(views)-1])
	return views[0]
}
