// Package netns builds small throw-away networks of Linux network namespaces for
// tests that need real separate hosts: one namespace per node, each with an eth0
// veth whose peer sits on a bridge in a namespace of its own, so nothing is added
// to the host's own network. It drives iproute2 (`ip`), which every test host
// running as root has, and removes everything in t.Cleanup, failed tests included.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	vnetns "github.com/vishvananda/netns"
)

// Available reports why namespaces cannot be used here, or "" when they can.
func Available() string {
	if os.Geteuid() != 0 {
		return "needs root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs iproute2 (ip)"
	}
	return ""
}

// Lab is a bridge namespace and its nodes.
type Lab struct {
	t      testing.TB
	Bridge string // namespace holding br0 and the nodes' veth peers
	Router net.IP // br0's address: a stand-in for the VPC router
	Nodes  []Node
}

// Node is one namespace on the bridge.
type Node struct {
	NS   string // namespace name, for `ip netns exec`
	IP   net.IP // eth0's address
	peer string // the veth end on the bridge, in the bridge namespace
}

// New creates n node namespaces on subnet (e.g. "10.99.0", a /24): br0 gets .1
// and node i gets .(10+i). prefix keeps concurrent labs apart and must be short
// (interface names have 15 bytes).
func New(t testing.TB, prefix, subnet string, n int) *Lab {
	t.Helper()
	l := &Lab{t: t, Bridge: prefix + "-br", Router: net.ParseIP(subnet + ".1")}
	// A run killed before its clean-up leaves its namespaces behind; they carry
	// these names and nothing else uses them.
	exec.Command("ip", "netns", "del", l.Bridge).Run()
	for i := range n {
		exec.Command("ip", "netns", "del", fmt.Sprintf("%s-n%d", prefix, i)).Run()
	}
	t.Cleanup(l.destroy)
	l.raiseNeighbourLimits(n)
	l.ip("netns", "add", l.Bridge)
	l.ip("-n", l.Bridge, "link", "set", "lo", "up")
	l.ip("-n", l.Bridge, "link", "add", "br0", "type", "bridge")
	l.ip("-n", l.Bridge, "addr", "add", subnet+".1/24", "dev", "br0")
	l.ip("-n", l.Bridge, "link", "set", "br0", "up")
	for i := range n {
		node := Node{
			NS:   fmt.Sprintf("%s-n%d", prefix, i),
			IP:   net.ParseIP(fmt.Sprintf("%s.%d", subnet, 10+i)),
			peer: fmt.Sprintf("%sp%d", prefix, i),
		}
		l.Nodes = append(l.Nodes, node)
		l.ip("netns", "add", node.NS)
		l.ip("-n", node.NS, "link", "set", "lo", "up")
		l.ip("link", "add", node.peer, "netns", l.Bridge, "type", "veth", "peer", "name", "eth0", "netns", node.NS)
		l.ip("-n", l.Bridge, "link", "set", node.peer, "master", "br0", "up")
		l.ip("-n", node.NS, "addr", "add", node.IP.String()+"/24", "dev", "eth0")
		l.ip("-n", node.NS, "link", "set", "eth0", "up")
	}
	return l
}

// neighbourSysctl is where the initial namespace bounds the kernel's ARP table.
const neighbourSysctl = "/proc/sys/net/ipv4/neigh/default/"

// raiseNeighbourLimits makes room for a lab whose n nodes all talk to each
// other. Linux keeps one ARP table for every namespace, bounded by the initial
// namespace's gc_thresh3 (1024 by default): n nodes need about n² entries, and
// past the bound the kernel drops new neighbours ("arp_cache: neighbor table
// overflow") so that nodes cannot reach each other. The old limits come back
// when the test ends, unless someone changed them meanwhile.
func (l *Lab) raiseNeighbourLimits(n int) {
	need := 2 * (n + 1) * (n + 1)
	for i, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		path := neighbourSysctl + name
		b, err := os.ReadFile(path)
		if err != nil {
			l.t.Logf("neighbour table limit %s: %v (left as it is)", name, err)
			continue
		}
		old := strings.TrimSpace(string(b))
		cur, err := strconv.Atoi(old)
		want := need / 2 << i // thresh1 ≤ thresh2 ≤ thresh3
		if err != nil || cur >= want {
			continue
		}
		set := strconv.Itoa(want)
		if err := os.WriteFile(path, []byte(set), 0o644); err != nil {
			l.t.Logf("neighbour table limit %s: %v (left at %s)", name, err, old)
			continue
		}
		l.t.Cleanup(func() {
			if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == set {
				if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
					l.t.Logf("restore %s to %s: %v", path, old, err)
				}
			}
		})
	}
}

// Command runs name inside node i's namespace.
func (l *Lab) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Nodes[i].NS, name}, args...)...)
}

// SetLink cuts (up=false) or restores node i's cable to the bridge.
func (l *Lab) SetLink(i int, up bool) {
	l.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	l.ip("-n", l.Bridge, "link", "set", l.Nodes[i].peer, state)
}

func (l *Lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// destroy deletes every namespace; their veths go with them.
func (l *Lab) destroy() {
	for _, n := range l.Nodes {
		exec.Command("ip", "netns", "del", n.NS).Run()
	}
	exec.Command("ip", "netns", "del", l.Bridge).Run()
}

// ListenIn opens a listener inside the named namespace: the socket stays in that
// namespace's network while this process serves it from its own. The test
// harness uses it to serve the emulated AWS endpoints on a lab's bridge, where
// the nodes reach them as they would reach AWS.
func ListenIn(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := in(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// DialerIn returns a DialContext that connects from inside the named namespace,
// for HTTP and etcd clients in the test process that talk to the lab's nodes.
func DialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := in(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// in runs fn on an OS thread switched into the named namespace. If the thread
// cannot be switched back it is not returned to the scheduler: it stays locked and
// ends with its goroutine.
func in(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := vnetns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", ns, err)
			runtime.UnlockOSThread()
			return
		}
		defer target.Close()
		if err := vnetns.Set(target); err != nil {
			errc <- fmt.Errorf("netns %s: enter: %w", ns, err)
			runtime.UnlockOSThread()
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns %s: leave: %w", ns, err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
