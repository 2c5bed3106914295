package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A lab larger than a /24 is one segment over a /16, spread over several
// bridges, on which every node already knows every other node's MAC; built
// as a VPC, a jumbo frame crosses it whole and every bridge knows where each
// node is.
func TestLargeLabIsOneSegmentOverChainedBridgesWithoutARP(t *testing.T) {
	if why := Available(); why != "" {
		t.Fatal(why)
	}
	const n = MaxSmall + 15
	l := build(t, fmt.Sprintf("nt%d", os.Getpid()%10000), "10.96.0", n, options{perBridge: 100, mtu: VPCMTU, staticL2: true})

	if got, want := l.Nodes[n-1].IP.String(), "10.96.1.13"; got != want {
		t.Errorf("node %d's address = %s, want %s (10+%d after 10.96.0.0)", n-1, got, want, n-1)
	}
	out := l.run(t, 0, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(out, "10.96.0.10/16") {
		t.Errorf("node 0's eth0: %s, want 10.96.0.10/16", out)
	}
	// Three bridges: nodes 0-99 on br0, 100-199 on br1, the rest on br2.
	for _, b := range []string{"br0", "br1", "br2"} {
		if _, err := exec.Command("ip", "-n", l.Bridge, "link", "show", b).CombinedOutput(); err != nil {
			t.Errorf("bridge %s missing: %v", b, err)
		}
	}
	// From br0 to a node behind a trunk, between two nodes behind two
	// different trunks, and to the router.
	for _, c := range []struct{ from, to int }{{0, 150}, {150, n - 1}, {n - 1, 0}} {
		l.run(t, c.from, "ping", "-c", "1", "-W", "2", l.Nodes[c.to].IP.String())
	}
	l.run(t, n-1, "ping", "-c", "1", "-W", "2", l.Router.String())
	// 8,972 bytes of ICMP payload + 28 of headers = 9,000, not fragmented
	// (-M do), between nodes behind two different trunks.
	if out := l.run(t, 150, "ip", "-o", "link", "show", "dev", "eth0"); !strings.Contains(out, "mtu 9001") {
		t.Errorf("node 150's eth0: %s, want mtu 9001", out)
	}
	l.run(t, 150, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "8972", l.Nodes[n-1].IP.String())
	// No IPv6, so no router solicitations flooded to every port.
	if out := l.run(t, 150, "ip", "-6", "-o", "addr", "show", "dev", "eth0"); strings.TrimSpace(out) != "" {
		t.Errorf("node 150's eth0 has IPv6 addresses: %s", out)
	}
	// Node 250 sits on br2: br2 sends it down its own port, br0 into the
	// trunk to br2, br1 into its trunk to br0.
	for _, c := range []struct{ bridge, port string }{{"br2", l.Nodes[250].peer}, {"br0", "tr2a"}, {"br1", "tr1b"}} {
		out, err := exec.Command("bridge", "-n", l.Bridge, "fdb", "show", "br", c.bridge).CombinedOutput()
		if err != nil {
			t.Fatalf("bridge fdb show br %s: %v: %s", c.bridge, err, out)
		}
		if want := l.Nodes[250].MAC.String() + " dev " + c.port + " master " + c.bridge + " static"; !strings.Contains(string(out), want) {
			t.Errorf("%s's forwarding entries lack %q", c.bridge, want)
		}
	}

	neigh := l.run(t, 7, "ip", "neigh", "show", "dev", "eth0", "nud", "permanent")
	if got := strings.Count(neigh, "PERMANENT"); got != n-1 {
		t.Errorf("node 7 holds %d permanent neighbours, want %d (every other node)", got, n-1)
	}
	if want := l.Nodes[200].IP.String() + " lladdr " + l.Nodes[200].MAC.String(); !strings.Contains(neigh, want) {
		t.Errorf("node 7's neighbours lack %q", want)
	}
}

// A small lab is a /24 on one bridge, as the tests that cut cables expect.
func TestSmallLabIsASlash24(t *testing.T) {
	if why := Available(); why != "" {
		t.Fatal(why)
	}
	l := New(t, fmt.Sprintf("ns%d", os.Getpid()%10000), "10.95.0", 2)
	if out := l.run(t, 1, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "10.95.0.11/24") {
		t.Errorf("node 1's eth0: %s, want 10.95.0.11/24", out)
	}
	l.run(t, 0, "ping", "-c", "1", "-W", "2", l.Nodes[1].IP.String())
	l.SetLink(1, false)
	if out, err := l.Command(context.Background(), 0, "ping", "-c", "1", "-W", "1", l.Nodes[1].IP.String()).CombinedOutput(); err == nil {
		t.Errorf("ping across a cut cable answered: %s", out)
	}
}

// A node that hosts a range answers on any of its addresses, and the other
// nodes reach them over the lab's network; the range's replies go back the
// same way.
func TestHostRangeServesEveryAddressToTheOtherNodes(t *testing.T) {
	if why := Available(); why != "" {
		t.Fatal(why)
	}
	l := New(t, fmt.Sprintf("nh%d", os.Getpid()%10000), "10.94.0", 3, AsVPC())
	l.HostRange(0, "10.93.0.0/16")
	for _, addr := range []string{"10.93.0.1", "10.93.3.200"} {
		ln, err := ListenIn(l.Nodes[0].NS, "tcp", net.JoinHostPort(addr, "4000"))
		if err != nil {
			t.Fatalf("listen on %s in the hosting node: %v", addr, err)
		}
		accepted := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := DialerIn(l.Nodes[2].NS)(ctx, "tcp", net.JoinHostPort(addr, "4000"))
		cancel()
		if err != nil {
			t.Fatalf("node 2 dials %s: %v", addr, err)
		}
		c.Close()
		if from, want := <-accepted, l.Nodes[2].IP.String()+":"; !strings.HasPrefix(from, want) {
			t.Errorf("%s accepted a connection from %s, want from node 2 (%s)", addr, from, want)
		}
		ln.Close()
	}
	// An address outside the range is no node's: nothing routes to it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := DialerIn(l.Nodes[1].NS)(ctx, "tcp", "10.92.0.1:4000"); err == nil {
		c.Close()
		t.Error("node 1 reached 10.92.0.1, outside the hosted range")
	} else if !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("dial outside the range: %v, want the network unreachable", err)
	}
}

// run runs a command in node i's namespace and returns its output.
func (l *Lab) run(t *testing.T, i int, name string, args ...string) string {
	t.Helper()
	out, err := l.Command(context.Background(), i, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v: %s", name, strings.Join(args, " "), l.Nodes[i].NS, err, out)
	}
	return string(out)
}

// A lab's bridges switch frames without netfilter, even on a host where
// br_netfilter turns it on for every new namespace.
func TestLabBridgesBypassNetfilter(t *testing.T) {
	if why := Available(); why != "" {
		t.Fatal(why)
	}
	if _, err := os.Stat(bridgeNetfilterSysctls[0]); err != nil {
		t.Skipf("br_netfilter is not loaded on this host (%v): nothing to turn off", err)
	}
	l := New(t, fmt.Sprintf("nf%d", os.Getpid()%10000), "10.94.0", 2)
	for _, path := range bridgeNetfilterSysctls {
		var got []byte
		if err := in(l.Bridge, func() (err error) { got, err = os.ReadFile(path); return err }); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(got)) != "0" {
			t.Errorf("%s in the bridge namespace = %q, want 0", path, got)
		}
	}
	l.run(t, 0, "ping", "-c", "1", "-W", "2", l.Nodes[1].IP.String())
}
