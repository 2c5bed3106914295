package gossip

import (
	"net"
	"testing"
)

func TestPacketBudgetIsTheMTULessHeadersUpToAJumboFrame(t *testing.T) {
	for _, c := range []struct {
		mtu  int
		ipv6 bool
		want int
	}{
		{mtu: 9001, want: 8973}, // an EC2 instance in a VPC
		{mtu: 9001, ipv6: true, want: 8953},
		{mtu: 1500, want: 1472},  // a bridge, a VPN
		{mtu: 65536, want: 8973}, // loopback: still a VPC's jumbo frame
		{mtu: 0, want: 1400},     // unknown: memberlist's default
		{mtu: 300, want: 508},    // never below what every IPv4 host accepts
	} {
		if got := packetBudget(c.mtu, c.ipv6); got != c.want {
			t.Errorf("packetBudget(%d, ipv6=%v) = %d, want %d", c.mtu, c.ipv6, got, c.want)
		}
	}
}

func TestInterfaceMTUFindsTheInterfaceHoldingTheAddress(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatalf("needs a loopback interface: %v", err)
	}
	if got := interfaceMTU(net.IPv4(127, 0, 0, 1)); got != lo.MTU {
		t.Errorf("interfaceMTU(127.0.0.1) = %d, want lo's %d", got, lo.MTU)
	}
	// The scale test's agents bind 127.88.x.y, held by lo's 127/8.
	if got := interfaceMTU(net.IPv4(127, 88, 0, 1)); got != lo.MTU {
		t.Errorf("interfaceMTU(127.88.0.1) = %d, want lo's %d", got, lo.MTU)
	}
	if got := interfaceMTU(net.IPv4(203, 0, 113, 77)); got != 0 {
		t.Errorf("interfaceMTU of an address no interface holds = %d, want 0", got)
	}
}
