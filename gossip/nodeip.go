package gossip

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// NodeIP returns the source address the kernel would use to reach dst (a VPC
// address such as the subnet's router). Asking the routing table picks the right
// interface whatever it is called (eth0, ens5, enX0) and however many there are.
func NodeIP(dst net.IP) (net.IP, error) {
	routes, err := netlink.RouteGet(dst)
	if err != nil {
		return nil, fmt.Errorf("route to %s: %w", dst, err)
	}
	for _, r := range routes {
		if r.Src != nil && !r.Src.IsUnspecified() {
			return r.Src, nil
		}
	}
	// A route without a preferred source: take the first global address of the
	// route's interface, as the kernel would.
	for _, r := range routes {
		if r.LinkIndex == 0 {
			continue
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("route to %s: interface %d: %w", dst, r.LinkIndex, err)
		}
		family := netlink.FAMILY_V4
		if dst.To4() == nil {
			family = netlink.FAMILY_V6
		}
		addrs, err := netlink.AddrList(link, family)
		if err != nil {
			return nil, fmt.Errorf("route to %s: addresses of %s: %w", dst, link.Attrs().Name, err)
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				return a.IP, nil
			}
		}
	}
	return nil, fmt.Errorf("route to %s: %w", dst, errors.New("no source address"))
}

// Address is one address configured on the host, for `nodeagent status`.
type Address struct {
	Interface string `json:"interface"`
	CIDR      string `json:"cidr"`
}

// Addresses lists the host's global unicast addresses by interface.
func Addresses() ([]Address, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []Address
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				out = append(out, Address{Interface: l.Attrs().Name, CIDR: a.IPNet.String()})
			}
		}
	}
	return out, nil
}
