package gossip

import "net"

// Gossip packet sizes (Tuning.PacketBytes).
const (
	// vpcJumboPacket is the UDP payload of a 9,001-byte VPC jumbo frame
	// (IPv4): the largest gossip packet, whatever the interface allows
	// (loopback's 64 KiB MTU included).
	vpcJumboPacket = 9001 - 20 - 8
	// defaultPacket is memberlist's own budget, for an interface whose MTU
	// cannot be read.
	defaultPacket = 1400
	// minPacket is the payload every IPv4 host must accept unfragmented.
	minPacket = 576 - 60 - 8
)

// packetBudget is the largest gossip packet for an interface MTU: the MTU less
// the IP and UDP headers, at most a VPC jumbo frame's. A packet that fits the
// interface is never fragmented on the way out; inside a VPC every path
// carries 9,001 bytes. mtu 0 (unknown) gives memberlist's default.
func packetBudget(mtu int, ipv6 bool) int {
	if mtu <= 0 {
		return defaultPacket
	}
	hdr := 20 + 8
	if ipv6 {
		hdr = 40 + 8
	}
	return min(max(mtu-hdr, minPacket), vpcJumboPacket)
}

// interfaceMTU is the MTU of the interface holding ip (exactly, or for
// loopback in one of its prefixes: lo holds all of 127/8); 0 when none does or
// the interfaces cannot be read.
func interfaceMTU(ip net.IP) int {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0
	}
	within := 0
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if n.IP.Equal(ip) {
				return ifc.MTU
			}
			if within == 0 && ifc.Flags&net.FlagLoopback != 0 && n.Contains(ip) {
				within = ifc.MTU
			}
		}
	}
	return within
}
