// Package podroutes keeps a kernel route to every peer's pod CIDR through that
// peer's IP (`<pod CIDR> via <peer IP>`), so that pods on different nodes reach
// each other without an overlay. kops gets these routes from the VPC route table
// (the AWS cloud provider's route controller); this package does it on the nodes
// themselves, which works where the nodes share one L2 network (one subnet).
//
// Every route it adds carries Protocol, and only routes with that mark are ever
// replaced or removed: a route to the same destination that someone else added (a
// CNI plugin, an administrator) wins and is left alone.
package podroutes

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol is the routing protocol number that marks our routes (`ip route`
// shows "proto 78"). 0x4e ('N') is none of the numbers iproute2's rt_protos
// names nor any common routing daemon or CNI plugin uses (Calico's BIRD uses
// 80, kernel/boot/static are 2-4).
const Protocol netlink.RouteProtocol = 0x4e

// Netlink is what Syncer needs of the kernel; *netlink.Handle has it.
type Netlink interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteGet(destination net.IP) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
}

// Peer is another node as the gossip ring sees it.
type Peer struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix // zero when the peer published none
}

// Route is one route of ours: Dst via Via.
type Route struct {
	Peer string       `json:"peer"`
	Dst  netip.Prefix `json:"dst"`
	Via  netip.Addr   `json:"via"`
}

func (r Route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// Skip is a peer that gets no route, and why.
type Skip struct {
	Peer   string `json:"peer"`
	Reason string `json:"reason"`
}

// Result is what one Sync did and found.
type Result struct {
	// Routes are ours in the kernel after the sync, by destination.
	Routes  []Route `json:"routes,omitempty"`
	Added   []Route `json:"added,omitempty"`
	Changed []Route `json:"changed,omitempty"` // same destination, new gateway
	Removed []Route `json:"removed,omitempty"`
	Skipped []Skip  `json:"skipped,omitempty"`
}

// Options configure a Syncer.
type Options struct {
	Netlink Netlink
	// ClusterCIDR is the cluster's pod network (spec.networking.podCIDR): a peer's
	// pod CIDR must lie inside it. Metadata comes from the network, and a route to,
	// say, the VPC's own range through a peer would hijack the node's traffic.
	ClusterCIDR netip.Prefix
	Log         *slog.Logger
}

// Syncer reconciles the kernel's routes with the peers' pod CIDRs.
type Syncer struct {
	o           Options
	mu          sync.Mutex
	lastSkipped map[string]string // peer → reason, to log a skip once, not every sync
}

// New checks o and returns a Syncer.
func New(o Options) (*Syncer, error) {
	if o.Netlink == nil {
		return nil, errors.New("podroutes: no netlink handle")
	}
	if !o.ClusterCIDR.IsValid() {
		return nil, errors.New("podroutes: the cluster's pod CIDR is not set")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Syncer{o: o, lastSkipped: map[string]string{}}, nil
}

// Sync makes the kernel's main table hold exactly one route of ours for each
// usable peer pod CIDR, and none for peers that are gone. local is this node's
// own pod CIDR (zero if not known yet): no peer may take it. peers should list the
// alive members other than this node.
//
// It costs one dump of the main routing table when nothing changed. A peer that
// cannot be routed to is skipped with a reason and does not fail the others;
// the error reports what the kernel refused.
func (s *Syncer) Sync(local netip.Prefix, peers []Peer) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res Result
	want, skipped := s.desired(local, peers)

	all, err := s.o.Netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}
	ours := map[netip.Prefix][]netlink.Route{}
	foreign := map[netip.Prefix]netlink.Route{}
	for _, r := range all {
		dst, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		if r.Protocol == Protocol {
			ours[dst] = append(ours[dst], r)
		} else if _, seen := foreign[dst]; !seen {
			foreign[dst] = r
		}
	}

	var errs []error
	for _, w := range want {
		if f, ok := foreign[w.Dst]; ok {
			skipped = append(skipped, Skip{w.Peer, fmt.Sprintf("a route to %s that nodeagent did not add exists (%s); left alone", w.Dst, describe(f))})
			continue
		}
		have := ours[w.Dst]
		if len(have) == 1 && addrOf(have[0].Gw) == w.Via {
			res.Routes = append(res.Routes, w)
			delete(ours, w.Dst)
			continue
		}
		link, reason, err := s.onLink(w.Via)
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", w.Peer, err))
			continue
		}
		if reason != "" {
			skipped = append(skipped, Skip{w.Peer, reason})
			continue
		}
		r := &netlink.Route{
			Dst: prefixNet(w.Dst), Gw: net.IP(w.Via.AsSlice()), LinkIndex: link,
			Protocol: Protocol, Table: unix.RT_TABLE_MAIN,
		}
		if len(have) == 0 {
			// RouteAdd is exclusive: it never overwrites a route that appeared
			// since the dump.
			if err := s.o.Netlink.RouteAdd(r); err != nil {
				errs = append(errs, fmt.Errorf("add route %s for %s: %w", w, w.Peer, err))
				continue
			}
			res.Added = append(res.Added, w)
			s.o.Log.Info("pod route added", "peer", w.Peer, "route", w.String())
		} else {
			// Ours, with another gateway (the peer's IP changed), or duplicated.
			for _, extra := range have[1:] {
				if err := s.o.Netlink.RouteDel(&extra); err != nil {
					errs = append(errs, fmt.Errorf("remove duplicate route to %s: %w", w.Dst, err))
				}
			}
			r.Priority = have[0].Priority
			if err := s.o.Netlink.RouteReplace(r); err != nil {
				errs = append(errs, fmt.Errorf("change route %s for %s: %w", w, w.Peer, err))
				continue
			}
			res.Changed = append(res.Changed, w)
			s.o.Log.Info("pod route changed", "peer", w.Peer, "route", w.String(), "was", addrOf(have[0].Gw).String())
		}
		res.Routes = append(res.Routes, w)
		delete(ours, w.Dst)
	}
	// What is left of ours belongs to peers that are gone or no longer usable.
	for dst, rs := range ours {
		for _, r := range rs {
			gone := Route{Dst: dst, Via: addrOf(r.Gw)}
			if err := s.o.Netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route %s: %w", gone, err))
				continue
			}
			res.Removed = append(res.Removed, gone)
			s.o.Log.Info("pod route removed", "route", gone.String())
		}
	}
	sortRoutes(res.Routes)
	sortRoutes(res.Removed)
	res.Skipped = skipped
	s.logSkips(skipped)
	return res, errors.Join(errs...)
}

// RemoveAll removes every route of ours, for a node whose pod routes are now
// managed elsewhere (spec.networking.podRoutes none), and returns them.
func RemoveAll(nl Netlink, log *slog.Logger) ([]Route, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Syncer{o: Options{Netlink: nl, Log: log}, lastSkipped: map[string]string{}}
	res, err := s.Sync(netip.Prefix{}, nil)
	return res.Removed, err
}

// desired turns the peers into the routes they ask for, in name order, and the
// peers that get none.
func (s *Syncer) desired(local netip.Prefix, peers []Peer) ([]Route, []Skip) {
	peers = slices.Clone(peers)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	var want []Route
	var skipped []Skip
	owner := map[netip.Prefix]string{}
	cluster := s.o.ClusterCIDR.Masked()
	for _, p := range peers {
		c := p.PodCIDR
		skip := func(format string, args ...any) {
			skipped = append(skipped, Skip{p.Name, fmt.Sprintf(format, args...)})
		}
		switch {
		case !c.IsValid():
			// Not allocated yet, or an agent that does not publish it: nothing to do.
		case !p.IP.IsValid() || p.IP.IsUnspecified() || p.IP.IsLoopback():
			skip("no usable IP (%v)", p.IP)
		case c != c.Masked():
			skip("pod CIDR %s has host bits set", c)
		case c.Addr().Is4() != p.IP.Unmap().Is4():
			skip("pod CIDR %s and IP %s are of different families", c, p.IP)
		case c.Bits() < cluster.Bits() || !cluster.Contains(c.Addr()):
			skip("pod CIDR %s is outside the cluster's pod network %s", c, cluster)
		case local.IsValid() && c.Overlaps(local):
			skip("pod CIDR %s overlaps this node's own %s", c, local)
		case owner[c] != "":
			skip("pod CIDR %s is also published by %s", c, owner[c])
		default:
			owner[c] = p.Name
			want = append(want, Route{Peer: p.Name, Dst: c, Via: p.IP.Unmap()})
		}
	}
	return want, skipped
}

// onLink asks the kernel how it reaches ip: a route through a gateway means the
// peer is not on this node's L2 network, where a route via its IP cannot work.
// It returns the outgoing link's index, or a reason to skip the peer.
func (s *Syncer) onLink(ip netip.Addr) (int, string, error) {
	rs, err := s.o.Netlink.RouteGet(net.IP(ip.AsSlice()))
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return 0, fmt.Sprintf("%s is unreachable from this node", ip), nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("look up the route to %s: %w", ip, err)
	}
	if len(rs) == 0 {
		return 0, fmt.Sprintf("%s is unreachable from this node", ip), nil
	}
	r := rs[0]
	if r.Type == unix.RTN_LOCAL {
		return 0, fmt.Sprintf("%s is an address of this node", ip), nil
	}
	if r.Gw != nil {
		return 0, fmt.Sprintf("%s is reached through %s, not on a directly connected network: its pod CIDR needs the cloud's route table or a CNI that routes across subnets", ip, r.Gw), nil
	}
	return r.LinkIndex, "", nil
}

// logSkips logs a peer's skip when it first appears or its reason changes.
func (s *Syncer) logSkips(skipped []Skip) {
	now := map[string]string{}
	for _, k := range skipped {
		now[k.Peer] = k.Reason
		if s.lastSkipped[k.Peer] != k.Reason {
			s.o.Log.Warn("no pod route for peer", "peer", k.Peer, "reason", k.Reason)
		}
	}
	s.lastSkipped = now
}

func describe(r netlink.Route) string {
	s := "proto " + r.Protocol.String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	return s
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

func prefixNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func sortRoutes(rs []Route) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Dst.String() < rs[j].Dst.String() })
}
