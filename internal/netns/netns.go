// Package netns builds small throw-away networks of Linux network namespaces for
// tests that need real separate hosts: one namespace per node, each with an eth0
// veth whose peer sits on a bridge in a namespace of its own, so nothing is added
// to the host's own network. It drives iproute2 (`ip`), which every test host
// running as root has, and removes everything in t.Cleanup, failed tests included.
package netns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/procfs"
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
	Bridge string // namespace holding the bridges and the nodes' veth peers
	Router net.IP // br0's address: a stand-in for the VPC router
	Nodes  []Node
}

// Node is one namespace on the bridge.
type Node struct {
	NS   string // namespace name, for `ip netns exec`
	IP   net.IP // eth0's address
	MAC  net.HardwareAddr
	peer string // the veth end on the bridge, in the bridge namespace
}

// Sizes of a lab.
const (
	// MaxSmall nodes fit the /24 that New's subnet names.
	MaxSmall = 245
	// Max nodes fit a large lab's /16.
	Max = 65000
	// portsPerBridge keeps each bridge under Linux's 1,024 ports.
	portsPerBridge = 1000
)

// New creates n node namespaces on subnet (e.g. "10.99.0"): br0 gets .1 and
// node i gets .(10+i), in a /24 when n ≤ MaxSmall. prefix keeps concurrent labs
// apart and must be short (interface names have 15 bytes).
//
// A larger lab (up to Max nodes, for benchmarks) is one L2 segment over the /16
// that holds subnet: node i gets the address 10+i after subnet.0, and it is
// built as a VPC would look to its hosts, not as a LAN of that size would.
// Linux bridges take at most 1,024 ports, so nodes hang off bridges of
// portsPerBridge ports each, chained to br0 by veth trunks. And every node
// knows every other node's MAC from the start (permanent neighbour entries), as
// a VPC answers ARP itself: left to ARP, each first contact between two of N
// nodes floods a request to all N ports, N³ deliveries in all, a cost that
// belongs to the lab and not to what is measured on it.
func New(t testing.TB, prefix, subnet string, n int, opts ...Option) *Lab {
	t.Helper()
	c := options{perBridge: portsPerBridge}
	for _, o := range opts {
		o(&c)
	}
	return build(t, prefix, subnet, n, c)
}

// An Option changes how New builds a lab.
type Option func(*options)

type options struct {
	perBridge int  // nodes on one bridge
	mtu       int  // of every link; 0: the kernel's default (1,500)
	staticL2  bool // permanent neighbours and static forwarding entries
}

// VPCMTU is the MTU of an instance's interface in a VPC: jumbo frames.
const VPCMTU = 9001

// AsVPC builds the lab as a VPC looks to its instances, whatever its size:
//   - every link (the nodes' eth0, their peers, the trunks, the bridges) has
//     VPCMTU, so that a program sizing its packets from its interface's MTU
//     (gossip does) sends what it would send on EC2;
//   - nothing is flooded: every node knows every other node's MAC from the
//     start (a VPC answers ARP itself) and every bridge knows the port behind
//     which each node sits (static forwarding entries; a VPC delivers to the
//     instance's ENI), and no IPv6 (whose router solicitations are
//     multicast). Left to ARP and MAC learning, each first contact between
//     two of N nodes broadcasts to all N ports, and so does every packet to a
//     node that has not sent anything yet (a seed not started yet): copies
//     the lab's one kernel pays for N times, in bursts that fill the CPUs'
//     receive backlogs, a cost that belongs to the lab and not to what is
//     measured on it.
func AsVPC() Option {
	return func(c *options) { c.mtu, c.staticL2 = VPCMTU, true }
}

// build is New with its options resolved.
func build(t testing.TB, prefix, subnet string, n int, c options) *Lab {
	t.Helper()
	perBridge := c.perBridge
	mtu := ""
	if c.mtu > 0 {
		mtu = fmt.Sprintf(" mtu %d", c.mtu)
	}
	if n < 1 || n > Max {
		t.Fatalf("netns lab of %d nodes: want 1 to %d", n, Max)
	}
	base := net.ParseIP(subnet + ".0").To4()
	if base == nil {
		t.Fatalf("netns lab subnet %q: want three octets, as 10.99.0", subnet)
	}
	bits := 24
	if n > MaxSmall {
		bits = 16
	}
	l := &Lab{t: t, Bridge: prefix + "-br", Router: addIP(base, 1)}
	for i := range n {
		ip := addIP(base, 10+i)
		l.Nodes = append(l.Nodes, Node{
			NS:   fmt.Sprintf("%s-n%d", prefix, i),
			IP:   ip,
			MAC:  net.HardwareAddr{0x02, 0x00, ip[0], ip[1], ip[2], ip[3]},
			peer: fmt.Sprintf("%sp%d", prefix, i),
		})
	}
	// A run killed before its clean-up leaves its namespaces behind; they carry
	// these names and nothing else uses them.
	l.destroy()
	t.Cleanup(l.destroy)
	l.raiseNeighbourLimits(n)
	RaiseBacklog(t, n)

	// One `ip -batch` per namespace: thousands of nodes are built in seconds.
	var root, br []string
	root = append(root, "netns add "+l.Bridge)
	for _, node := range l.Nodes {
		root = append(root, "netns add "+node.NS)
	}
	l.batch("", root)
	if c.staticL2 {
		l.withoutIPv6(l.Bridge)
		for _, node := range l.Nodes {
			l.withoutIPv6(node.NS)
		}
	}
	br = append(br, "link set lo up")
	bridges := (n + perBridge - 1) / perBridge
	for j := range bridges {
		br = append(br, fmt.Sprintf("link add br%d%s type bridge", j, mtu))
		if j > 0 { // a trunk from br0 to brj
			br = append(br,
				fmt.Sprintf("link add tr%da%s type veth peer name tr%db%s", j, mtu, j, mtu),
				fmt.Sprintf("link set tr%da master br0 up", j),
				fmt.Sprintf("link set tr%db master br%d up", j, j))
		}
		br = append(br, fmt.Sprintf("link set br%d up", j))
	}
	br = append(br, fmt.Sprintf("addr add %s/%d dev br0", l.Router, bits))
	for i, node := range l.Nodes {
		br = append(br,
			fmt.Sprintf("link add %s%s type veth peer name eth0%s address %s netns %s", node.peer, mtu, mtu, node.MAC, node.NS),
			fmt.Sprintf("link set %s master br%d up", node.peer, i/perBridge))
	}
	l.batch(l.Bridge, br)
	if c.staticL2 {
		l.staticForwarding(bridges, perBridge)
	}
	l.bridgeWithoutNetfilter()
	for _, node := range l.Nodes {
		cmds := []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/%d dev eth0", node.IP, bits),
			"link set eth0 up",
		}
		if n > MaxSmall || c.staticL2 {
			for _, other := range l.Nodes {
				if !other.IP.Equal(node.IP) {
					cmds = append(cmds, fmt.Sprintf("neigh replace %s lladdr %s dev eth0 nud permanent", other.IP, other.MAC))
				}
			}
		}
		l.batch(node.NS, cmds)
	}
	return l
}

// staticForwarding tells every bridge where each node's MAC is: its own port
// on the node's bridge; on br0 the trunk to the node's bridge; on any other
// bridge its trunk to br0.
func (l *Lab) staticForwarding(bridges, perBridge int) {
	l.t.Helper()
	var cmds []string
	for i, node := range l.Nodes {
		home := i / perBridge
		for j := range bridges {
			port := node.peer
			switch {
			case j == home:
			case j == 0:
				port = fmt.Sprintf("tr%da", home)
			default:
				port = fmt.Sprintf("tr%db", j)
			}
			cmds = append(cmds, fmt.Sprintf("fdb replace %s dev %s master static", node.MAC, port))
		}
	}
	cmd := exec.Command("bridge", "-n", l.Bridge, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("bridge -n %s -batch (%d forwarding entries): %v: %s", l.Bridge, len(cmds), err, out)
	}
}

// withoutIPv6 turns IPv6 off in namespace ns before its links exist. Every
// IPv6 link solicits routers, and Linux keeps soliciting (4 s, then backing
// off to an hour); in a lab whose links all came up at once those
// multicasts, flooded to every port, arrive in bursts of N² copies (an
// N=1000 lab as a VPC, nothing else flooded, still dropped 23,775 packets
// in its CPUs' receive backlogs while its ring started). The labs' programs
// use IPv4.
func (l *Lab) withoutIPv6(ns string) {
	l.t.Helper()
	l.setSysctls(ns, "IPv6 off", ipv6OffSysctls, "1")
}

var ipv6OffSysctls = []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"}

// bridgeNetfilterSysctls are br_netfilter's switches, one set per namespace
// (present once the module is loaded: a kubelet or kube-proxy host loads it).
var bridgeNetfilterSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
	"/proc/sys/net/bridge/bridge-nf-call-arptables",
}

// bridgeWithoutNetfilter makes the lab's bridges plain switches. With
// br_netfilter loaded, every new namespace passes bridged frames through its
// netfilter hooks by default; a lab's ARP broadcasts, copied to every port,
// then cost enough that 200 nodes forming a ring at full speed lost their
// probes (seen after `make test` had loaded the module). A per-bridge option
// cannot turn it off: the namespace's switch is ORed in.
func (l *Lab) bridgeWithoutNetfilter() {
	l.t.Helper()
	l.setSysctls(l.Bridge, "bridge netfilter off", bridgeNetfilterSysctls, "0")
}

// setSysctls writes value to each of paths as namespace ns sees them; a
// path the kernel does not have (its module not loaded) is skipped.
func (l *Lab) setSysctls(ns, what string, paths []string, value string) {
	l.t.Helper()
	err := in(ns, func() error {
		for _, path := range paths {
			if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("netns %s: %s: %v", ns, what, err)
	}
}

// addIP is base plus off, as an IPv4 address.
func addIP(base net.IP, off int) net.IP {
	v := binary.BigEndian.Uint32(base.To4()) + uint32(off)
	return binary.BigEndian.AppendUint32(nil, v)
}

// batch runs cmds through one `ip -batch`, in namespace ns ("" for this one).
func (l *Lab) batch(ns string, cmds []string) {
	l.t.Helper()
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s (%d commands, the first %q): %v: %s", strings.Join(args, " "), len(cmds), cmds[0], err, out)
	}
}

// neighbourSysctl is where the initial namespace bounds the kernel's ARP table.
const neighbourSysctl = "/proc/sys/net/ipv4/neigh/default/"

// raiseNeighbourLimits makes room for a lab whose n nodes all talk to each
// other. Linux keeps one ARP table for every namespace, bounded by the initial
// namespace's gc_thresh3 (1024 by default): n nodes need about n² entries, and
// past the bound the kernel drops new neighbours ("arp_cache: neighbor table
// overflow") so that nodes cannot reach each other.
func (l *Lab) raiseNeighbourLimits(n int) {
	need := 2 * (n + 1) * (n + 1)
	for i, name := range []string{"gc_thresh1", "gc_thresh2", "gc_thresh3"} {
		raiseSysctl(l.t, neighbourSysctl+name, need/2<<i) // thresh1 ≤ thresh2 ≤ thresh3
	}
}

// backlogSysctl bounds each CPU's queue of packets received and not yet
// processed: every packet a veth or the loopback device sends waits there.
const backlogSysctl = "/proc/sys/net/core/netdev_max_backlog"

// BacklogPerHost and BacklogMax size the receive backlog for n simulated
// hosts: BacklogPerHost packets each, at most BacklogMax in all (a bound on
// what a CPU can queue, about 200 MB of packets at the most).
const (
	BacklogPerHost = 100
	BacklogMax     = 100_000
)

// RaiseBacklog gives n hosts simulated on this one kernel room to queue
// their packets as n machines would. A real host's received packets wait in
// its own NIC's queues and its own kernel's backlog; here every namespace's
// (and a namespace's loopback's) share one backlog per CPU, 1,000 packets by
// default, and past that the kernel drops them (`/proc/net/softnet_stat`'s
// second column, BacklogDrops). A 1,000-process gossip ring forming dropped
// 310,000 packets in five minutes there, and the few members its nodes then
// missed took minutes of real time to learn. The old value comes back when
// the test ends.
func RaiseBacklog(t testing.TB, n int) {
	t.Helper()
	raiseSysctl(t, backlogSysctl, min(max(1000, BacklogPerHost*n), BacklogMax))
}

// BacklogDrops is the number of received packets this machine's CPUs have
// dropped because their backlog was full, since boot: the difference over a
// run is that run's (and whatever else ran meanwhile).
func BacklogDrops() (uint64, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	stats, err := fs.NetSoftnetStat()
	if err != nil {
		return 0, fmt.Errorf("softnet_stat: %w", err)
	}
	var n uint64
	for _, s := range stats {
		n += uint64(s.Dropped)
	}
	return n, nil
}

// raiseSysctl sets the integer sysctl at path to want if it is lower, and
// puts the old value back when the test ends, unless someone changed it
// meanwhile. A sysctl it cannot read or write is logged and left as it is.
func raiseSysctl(t testing.TB, path string, want int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("%s: %v (left as it is)", path, err)
		return
	}
	old := strings.TrimSpace(string(b))
	if cur, err := strconv.Atoi(old); err == nil && cur >= want {
		return
	}
	set := strconv.Itoa(want)
	if err := os.WriteFile(path, []byte(set), 0o644); err != nil {
		t.Logf("%s: %v (left at %s)", path, err, old)
		return
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == set {
			if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
				t.Logf("restore %s to %s: %v", path, old, err)
			}
		}
	})
}

// Command runs name inside node i's namespace.
func (l *Lab) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Nodes[i].NS, name}, args...)...)
}

// HostRange makes node i the host of every address of prefix (an IPv4 CIDR
// outside the lab's subnet), as a host with many secondary addresses: its
// namespace takes the whole range as local (a program there binds any of its
// addresses) and every other node routes the range to node i's address. One
// process in node i can then play many members of a ring that the other
// nodes reach over the lab's network, as they reach each other.
func (l *Lab) HostRange(i int, prefix string) {
	l.t.Helper()
	l.ip("-n", l.Nodes[i].NS, "route", "add", "local", prefix, "dev", "lo")
	for j, node := range l.Nodes {
		if j != i {
			l.ip("-n", node.NS, "route", "add", prefix, "via", l.Nodes[i].IP.String())
		}
	}
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

// destroy deletes every namespace, those already gone aside; their veths
// go with them.
func (l *Lab) destroy() {
	var cmds []string
	for _, n := range l.Nodes {
		cmds = append(cmds, "netns del "+n.NS)
	}
	cmds = append(cmds, "netns del "+l.Bridge)
	cmd := exec.Command("ip", "-force", "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	// Errors are expected and ignored: a namespace that does not exist (yet,
	// or any more) has nothing to delete, and -force goes on past it.
	_ = cmd.Run()
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
