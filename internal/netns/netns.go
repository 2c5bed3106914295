// Package netns builds small throw-away networks of Linux network namespaces for
// tests that need real separate hosts: one namespace per node, each with an eth0
// veth whose peer sits on a bridge in a namespace of its own, so nothing is added
// to the host's own network. It drives iproute2 (`ip`), which every test host
// running as root has, and removes everything in t.Cleanup, failed tests included.
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
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
	t.Cleanup(l.destroy)
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
