package podroutes

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/nodeagent/nodeagent/internal/netns"
)

// TestRoutesFollowPeers runs the syncer on the first of three network
// namespaces on one bridge (three nodes on one subnet), against the real kernel:
// `ip route` must show a route per peer pod CIDR, packets must flow to a peer's
// pod address through it, and routes the syncer did not add must never change.
func TestRoutesFollowPeers(t *testing.T) {
	// Root and iproute2 are part of the test environment (hack/deps.sh): without
	// them this cannot be tested, and a skipped test would hide that.
	if why := netns.Available(); why != "" {
		t.Fatal(why)
	}
	lab := netns.New(t, fmt.Sprintf("pr%d", os.Getpid()%100000), "10.97.0", 3)
	self, peer1, peer2 := lab.Nodes[0], lab.Nodes[1], lab.Nodes[2]
	ip := func(n netns.Node) netip.Addr { a, _ := netip.AddrFromSlice(n.IP.To4()); return a }
	cidr := netip.MustParsePrefix
	local := cidr("100.96.0.0/24")

	// Routes of others on our node: one elsewhere, one for a pod CIDR a peer will
	// publish too (say, an administrator's static route), a default route.
	run(t, "ip", "-n", self.NS, "route", "add", "192.168.77.0/24", "via", lab.Router.String(), "proto", "static")
	run(t, "ip", "-n", self.NS, "route", "add", "100.96.9.0/24", "via", lab.Router.String())
	run(t, "ip", "-n", self.NS, "route", "add", "default", "via", lab.Router.String())
	foreign := routesNotOurs(t, self.NS)

	h := handleIn(t, self.NS)
	s, err := New(Options{Netlink: h, ClusterCIDR: cidr("100.96.0.0/11")})
	if err != nil {
		t.Fatal(err)
	}
	peers := []Peer{
		{Name: "node-1", IP: ip(peer1), PodCIDR: cidr("100.96.1.0/24")},
		{Name: "node-2", IP: ip(peer2), PodCIDR: cidr("100.96.2.0/24")},
	}

	t.Run("a route to each peer's pod CIDR via the peer", func(t *testing.T) {
		res, err := s.Sync(local, peers)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			"100.96.1.0/24 via 10.97.0.11 dev eth0 proto 78",
			"100.96.2.0/24 via 10.97.0.12 dev eth0 proto 78",
		}
		if got := ourRoutes(t, self.NS); !slices.Equal(got, want) {
			t.Errorf("ip route show proto 78:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(res.Added) != 2 || len(res.Routes) != 2 {
			t.Errorf("result %+v, want 2 added", res)
		}
	})

	t.Run("pods on the peer are reachable through it", func(t *testing.T) {
		run(t, "ip", "-n", peer1.NS, "addr", "add", "100.96.1.7/32", "dev", "lo")
		var ln net.Listener
		inNamespace(t, peer1.NS, func() (err error) { ln, err = net.Listen("tcp", "100.96.1.7:0"); return })
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("pod on node-1\n"))
				c.Close()
			}
		}()
		var conn net.Conn
		inNamespace(t, self.NS, func() (err error) { conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); return })
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, _ := conn.Read(b)
		if got := string(b[:n]); got != "pod on node-1\n" {
			t.Errorf("read %q from the peer's pod address", got)
		}
	})

	t.Run("nothing changes when nothing changed", func(t *testing.T) {
		counted := &countingNetlink{Netlink: h}
		s.o.Netlink = counted
		defer func() { s.o.Netlink = h }()
		res, err := s.Sync(local, peers)
		if err != nil {
			t.Fatal(err)
		}
		if counted.writes != 0 || counted.lists != 1 || counted.gets != 0 {
			t.Errorf("an unchanged sync made %d writes, %d lists, %d lookups; want 0, 1, 0", counted.writes, counted.lists, counted.gets)
		}
		if len(res.Added)+len(res.Changed)+len(res.Removed) != 0 || len(res.Routes) != 2 {
			t.Errorf("result %+v, want the two routes and no change", res)
		}
	})

	t.Run("a peer that comes back with another IP gets its route moved", func(t *testing.T) {
		moved := []Peer{{Name: "node-1", IP: ip(peer2), PodCIDR: cidr("100.96.1.0/24")}}
		res, err := s.Sync(local, moved)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"100.96.1.0/24 via 10.97.0.12 dev eth0 proto 78"}
		if got := ourRoutes(t, self.NS); !slices.Equal(got, want) {
			t.Errorf("ip route show proto 78:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(res.Changed) != 1 || len(res.Removed) != 1 {
			t.Errorf("result %+v, want one changed (node-1) and one removed (node-2)", res)
		}
	})

	t.Run("routes of peers that left are removed", func(t *testing.T) {
		if _, err := s.Sync(local, nil); err != nil {
			t.Fatal(err)
		}
		if got := ourRoutes(t, self.NS); len(got) != 0 {
			t.Errorf("routes left after every peer left:\n%s", strings.Join(got, "\n"))
		}
	})

	t.Run("peers that cannot be routed to get no route, and say why", func(t *testing.T) {
		bad := []Peer{
			{Name: "admin-route", IP: ip(peer1), PodCIDR: cidr("100.96.9.0/24")},
			{Name: "elsewhere", IP: netip.MustParseAddr("10.20.0.5"), PodCIDR: cidr("100.96.20.0/24")},
			{Name: "greedy", IP: ip(peer1), PodCIDR: cidr("10.0.0.0/8")},
			{Name: "ours", IP: ip(peer2), PodCIDR: local},
			{Name: "self-ip", IP: ip(self), PodCIDR: cidr("100.96.30.0/24")},
			{Name: "twin-a", IP: ip(peer1), PodCIDR: cidr("100.96.40.0/24")},
			{Name: "twin-b", IP: ip(peer2), PodCIDR: cidr("100.96.40.0/24")},
			{Name: "unallocated", IP: ip(peer2)},
		}
		res, err := s.Sync(local, bad)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ourRoutes(t, self.NS), []string{"100.96.40.0/24 via 10.97.0.11 dev eth0 proto 78"}; !slices.Equal(got, want) {
			t.Errorf("ip route show proto 78:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		reasons := map[string]string{}
		for _, k := range res.Skipped {
			reasons[k.Peer] = k.Reason
		}
		for peer, want := range map[string]string{
			"admin-route": "did not add exists",
			"elsewhere":   "not on a directly connected network",
			"greedy":      "outside the cluster's pod network 100.96.0.0/11",
			"ours":        "overlaps this node's own 100.96.0.0/24",
			"self-ip":     "an address of this node",
			"twin-b":      "also published by twin-a",
		} {
			if !strings.Contains(reasons[peer], want) {
				t.Errorf("peer %s: reason %q, want it to say %q", peer, reasons[peer], want)
			}
		}
		if len(reasons) != 6 {
			t.Errorf("skipped %v; twin-a and the unallocated peer should not be", reasons)
		}
	})

	t.Run("switching pod routes off removes ours, and only ours", func(t *testing.T) {
		removed, err := RemoveAll(h, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) != 1 || removed[0].Dst != cidr("100.96.40.0/24") {
			t.Errorf("removed %v, want the route of twin-a", removed)
		}
		if got := ourRoutes(t, self.NS); len(got) != 0 {
			t.Errorf("routes left:\n%s", strings.Join(got, "\n"))
		}
	})

	t.Run("routes of others are never touched", func(t *testing.T) {
		if got := routesNotOurs(t, self.NS); !slices.Equal(got, foreign) {
			t.Errorf("routes not ours changed:\n%s\nwere:\n%s", strings.Join(got, "\n"), strings.Join(foreign, "\n"))
		}
	})
}

func TestNewChecksOptions(t *testing.T) {
	if _, err := New(Options{ClusterCIDR: netip.MustParsePrefix("100.96.0.0/11")}); err == nil {
		t.Error("no netlink handle accepted")
	}
	if _, err := New(Options{Netlink: &countingNetlink{}}); err == nil {
		t.Error("no cluster pod CIDR accepted")
	}
}

// handleIn opens a netlink handle whose sockets live in namespace ns, so every
// route call acts there while the test itself stays in its own namespace.
func handleIn(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	nsh, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNamespace runs fn on a thread switched into namespace ns: the sockets fn
// opens belong to ns for good.
func inNamespace(t *testing.T, ns string, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := vnetns.Set(target); err != nil {
		t.Fatal(err)
	}
	ferr := fn()
	if err := vnetns.Set(orig); err != nil {
		// The thread stays locked, so Go discards it rather than reuse it in ns.
		t.Fatalf("return from namespace %s: %v", ns, err)
	}
	runtime.UnlockOSThread()
	if ferr != nil {
		t.Fatalf("in namespace %s: %v", ns, ferr)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ourRoutes is `ip route show proto 78` with the protocol spelled out.
func ourRoutes(t *testing.T, ns string) []string {
	t.Helper()
	var out []string
	for _, l := range lines(run(t, "ip", "-n", ns, "route", "show", "proto", fmt.Sprint(int(Protocol)))) {
		out = append(out, l+" proto 78")
	}
	return out
}

// routesNotOurs is the whole main table without our routes, as `ip route` shows it.
func routesNotOurs(t *testing.T, ns string) []string {
	t.Helper()
	var out []string
	for _, l := range lines(run(t, "ip", "-n", ns, "route", "show")) {
		if !strings.Contains(l, "proto 78") {
			out = append(out, l)
		}
	}
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// countingNetlink counts calls, to show that an unchanged sync only reads.
type countingNetlink struct {
	Netlink
	lists, gets, writes int
}

func (c *countingNetlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	c.lists++
	return c.Netlink.RouteListFiltered(family, filter, mask)
}
func (c *countingNetlink) RouteGet(ip net.IP) ([]netlink.Route, error) {
	c.gets++
	return c.Netlink.RouteGet(ip)
}
func (c *countingNetlink) RouteAdd(r *netlink.Route) error { c.writes++; return c.Netlink.RouteAdd(r) }
func (c *countingNetlink) RouteReplace(r *netlink.Route) error {
	c.writes++
	return c.Netlink.RouteReplace(r)
}
func (c *countingNetlink) RouteDel(r *netlink.Route) error { c.writes++; return c.Netlink.RouteDel(r) }
