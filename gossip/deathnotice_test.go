package gossip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"k8s.io/apimachinery/pkg/util/wait"
)

// startWithAliveFilter starts n with memberlist's alive delegate set to
// filter: an alive message it refuses is, to that node, a message it never
// received.
func (n *testNode) startWithAliveFilter(t *testing.T, seeds []string, filter func(*memberlist.Node) error) {
	t.Helper()
	n.cfg.Seeds = StaticSeeds(seeds)
	a, err := newAgent(n.cfg)
	if err != nil {
		t.Fatalf("start %s: %v", n.cfg.NodeName, err)
	}
	a.aliveFilter = filter
	if err := a.start(t.Context()); err != nil {
		t.Fatalf("start %s: %v", n.cfg.NodeName, err)
	}
	n.agent = a
	n.owner.Cleanup(func() { a.halt() })
}

// pollUntil polls cond every 20 ms until it returns nil, failing the test
// with cond's last error after timeout; it returns how long it took.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = cond()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: not within %v: %v", what, timeout, errors.Join(err, last))
	}
	return time.Since(start)
}

// goneFrom says whether the agent no longer reports name as a live node: not
// alive in Members, none of its names in Hosts or in the hosts file.
func goneFrom(t *testing.T, n *testNode, name string, names []string) error {
	if m, ok := memberState(n.agent, name); ok && m.State == StateAlive {
		return fmt.Errorf("%s still reports %s alive (incarnation %d)", n.cfg.NodeName, name, m.Incarnation)
	}
	hosts, file := n.agent.Hosts(), readHostsBlock(t, n.hosts)
	for _, h := range append([]string{name}, names...) {
		if _, ok := hosts[h]; ok {
			return fmt.Errorf("%s's Hosts still holds %s", n.cfg.NodeName, h)
		}
		if _, ok := file[h]; ok {
			return fmt.Errorf("%s's hosts file still holds %s", n.cfg.NodeName, h)
		}
	}
	return nil
}

// TestHardKillKnownDeadByHoldersOfANewerRecord is memberlist's stale
// incarnation problem (README, "Gossip ring at scale"), made deterministic
// with four agents. memberlist drops a suspicion or death whose incarnation
// is older than the receiver's record of the node; a prober suspects with its
// own view. So a node that heard the victim's last update, when the prober did
// not, ignores the victim's death until it probes the victim itself: in a
// ring of N that is up to N probe periods (N=1000: minutes).
//
// Here the prober refuses (its alive delegate) the victim's last update, so it
// holds the victim one record behind; the two holders heard it, and probe
// nobody (an hour's probe interval: in a large ring their turn to probe the
// victim is far away). The victim is then killed without a leave. Every live
// agent must report it gone within a few probe periods plus the suspicion
// timeout.
func TestHardKillKnownDeadByHoldersOfANewerRecord(t *testing.T) {
	key := []byte("0123456789abcdef")
	api := "api.internal." + testCluster
	victim := newTestNode(t, 40, key, "ControlPlane", api)
	prober := newTestNode(t, 41, key, "Node")
	holders := []*testNode{newTestNode(t, 42, key, "Node"), newTestNode(t, 43, key, "Node")}
	for _, h := range holders {
		h.cfg.Tuning = &Tuning{ProbeInterval: time.Hour}
	}
	all := append([]*testNode{victim, prober}, holders...)
	var seeds []string
	for _, n := range all {
		seeds = append(seeds, n.addr())
	}
	// behind, once set, is the newest record of the victim the prober takes.
	var behind atomic.Uint64
	prober.startWithAliveFilter(t, seeds, func(n *memberlist.Node) error {
		if n.Name != victim.cfg.NodeName || behind.Load() == 0 {
			return nil
		}
		if md, err := decodeMeta(n.Meta, testCluster); err == nil && md.Incarnation > behind.Load() {
			return fmt.Errorf("test: the prober missed record %d", md.Incarnation)
		}
		return nil
	})
	for _, n := range []*testNode{victim, holders[0], holders[1]} {
		n.start(t, seeds)
	}
	pollUntil(t, 10*time.Second, "ring converges", allHostsEqual(t, all, expectedHosts(all)))

	// The victim's last update reaches the holders, not the prober.
	old, _ := memberState(prober.agent, victim.cfg.NodeName)
	behind.Store(old.Incarnation)
	victim.agent.SetReady(true)
	pollUntil(t, 5*time.Second, "the holders hold the victim's newer record", func() error {
		for _, h := range holders {
			if m, _ := memberState(h.agent, victim.cfg.NodeName); m.Incarnation <= old.Incarnation {
				return fmt.Errorf("%s holds the victim at record %d", h.cfg.NodeName, m.Incarnation)
			}
		}
		return nil
	})
	if m, _ := memberState(prober.agent, victim.cfg.NodeName); m.Incarnation != old.Incarnation || m.Ready {
		t.Fatalf("the prober holds the victim at record %d (ready %v), want %d: the premise failed", m.Incarnation, m.Ready, old.Incarnation)
	}

	// halt closes the sockets at once, then waits for the agent's loops (the
	// victim's update may wait up to 5 s for its broadcast): the clock runs
	// from the call, and the poll does not wait for its return.
	killed := time.Now()
	halted := make(chan error, 1)
	go func() { halted <- victim.agent.halt() }()
	live := []*testNode{prober, holders[0], holders[1]}
	// Detection by the prober (it probes its 3 peers in an order shuffled
	// each round: the victim's turn comes within 5 probe periods, 2.5 s, and
	// takes a probe timeout), the suspicion timeout (1 s at N=4), a gossip
	// round and the holders' confirmation (two gossip intervals and two probe
	// timeouts): at most ~5.1 s, so 8 s (measured 2.8–4.2 s). Without death
	// notices the holders never learn: they do not probe.
	pollUntil(t, 8*time.Second-time.Since(killed), "the killed node gone on every live agent", func() error {
		for _, n := range live {
			if err := goneFrom(t, n, victim.cfg.NodeName, victim.cfg.Names); err != nil {
				return err
			}
		}
		return nil
	})
	t.Logf("hard-killed node gone on every live agent %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := <-halted; err != nil {
		t.Fatal(err)
	}
	for _, h := range holders {
		if c := h.agent.DeathNoticeCounts(); c.Confirmed == 0 {
			t.Errorf("%s's notice counts %+v: it should have confirmed the death by its own ping", h.cfg.NodeName, c)
		}
	}
	if c := prober.agent.DeathNoticeCounts(); c.Sent == 0 {
		t.Errorf("the prober's notice counts %+v: its memberlist declared the death, it should have sent a notice", c)
	}
	if err := allHostsEqual(t, live, expectedHosts(live))(); err != nil {
		t.Fatal(err)
	}

	t.Run("a push/pull from a holder does not bring the dead node back", func(t *testing.T) {
		// The prober takes every record again, then makes a full-state
		// exchange with a holder, whose memberlist still holds the victim
		// alive at the newer record: memberlist resurrects it. The agent must
		// go on reporting it dead (its ping goes unanswered) until memberlist
		// kills it again, now at the newer record, which the holders' own
		// memberlists then accept too.
		behind.Store(0)
		deaths := func(n *testNode) uint64 { return n.agent.EventCounts()[EventDead] }
		before := map[*testNode]uint64{}
		for _, n := range live {
			before[n] = deaths(n)
		}
		if _, err := prober.agent.ml.Join([]string{holders[0].addr()}); err != nil {
			t.Fatalf("push/pull with a holder: %v", err)
		}
		if err := goneFrom(t, prober, victim.cfg.NodeName, victim.cfg.Names); err != nil {
			t.Fatalf("right after the exchange: %v", err)
		}
		took := pollUntil(t, 6*time.Second, "every memberlist agrees the victim is dead", func() error {
			if err := goneFrom(t, prober, victim.cfg.NodeName, victim.cfg.Names); err != nil {
				t.Fatalf("the resurrected node came back: %v", err)
			}
			for _, n := range live {
				if deaths(n) == before[n] {
					return fmt.Errorf("%s's memberlist has not declared the victim dead again", n.cfg.NodeName)
				}
			}
			return nil
		})
		t.Logf("every memberlist holds the victim dead %v after the exchange", took)
		for _, n := range live {
			if err := goneFrom(t, n, victim.cfg.NodeName, victim.cfg.Names); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("a notice about a node that answers changes nothing", func(t *testing.T) {
		h := holders[0]
		before := h.agent.DeathNoticeCounts().Refuted
		h.agent.handleNotice(notice{Node: prober.cfg.NodeName, Addr: prober.addr(), Incarnation: 1})
		pollUntil(t, 5*time.Second, "the notice refuted by a ping", func() error {
			if c := h.agent.DeathNoticeCounts(); c.Refuted == before {
				return fmt.Errorf("notice counts %+v", c)
			}
			return nil
		})
		if m, _ := memberState(h.agent, prober.cfg.NodeName); m.State != StateAlive {
			t.Fatalf("%s reports the live prober %s", h.cfg.NodeName, m.State)
		}
		if err := allHostsEqual(t, live, expectedHosts(live))(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the victim restarted is alive again everywhere", func(t *testing.T) {
		victim.start(t, seeds)
		took := pollUntil(t, 10*time.Second, "the restarted node back on every agent", allHostsEqual(t, all, expectedHosts(all)))
		t.Logf("restarted node back in every hosts file after %v", took)
		for _, n := range live {
			if m, _ := memberState(n.agent, victim.cfg.NodeName); m.State != StateAlive {
				t.Errorf("%s reports the restarted node %s", n.cfg.NodeName, m.State)
			}
		}
	})
}

// A notice about this very node — peers hold it dead, and its memberlist
// never heard so (a stall ate the dead message) — is answered by
// re-announcing the node with a newer record, once per notice: every agent
// then holds the newer record.
func TestANoticeAboutItselfReannouncesTheNode(t *testing.T) {
	key := []byte("0123456789abcdef")
	nodes := []*testNode{newTestNode(t, 50, key, "Node"), newTestNode(t, 51, key, "Node"), newTestNode(t, 52, key, "Node")}
	var seeds []string
	for _, n := range nodes {
		seeds = append(seeds, n.addr())
	}
	for _, n := range nodes {
		n.start(t, seeds)
	}
	pollUntil(t, 10*time.Second, "ring converges", allHostsEqual(t, nodes, expectedHosts(nodes)))
	self := nodes[2]
	old, _ := memberState(nodes[0].agent, self.cfg.NodeName)

	n := notice{Node: self.cfg.NodeName, Addr: self.addr(), Incarnation: old.Incarnation}
	self.agent.handleNotice(n)
	self.agent.handleNotice(n) // the same notice again, relayed by another peer
	pollUntil(t, 5*time.Second, "every agent holds a newer record of the node", func() error {
		for _, o := range nodes[:2] {
			if m, _ := memberState(o.agent, self.cfg.NodeName); m.Incarnation <= old.Incarnation || m.State != StateAlive {
				return fmt.Errorf("%s holds %s at record %d (%s), want > %d", o.cfg.NodeName, self.cfg.NodeName, m.Incarnation, m.State, old.Incarnation)
			}
		}
		return nil
	})
	if c := self.agent.DeathNoticeCounts(); c.SelfRefuted != 1 || c.Relayed != 0 {
		t.Errorf("notice counts %+v: want one re-announcement and no relay of a notice about itself", c)
	}
	if err := allHostsEqual(t, nodes, expectedHosts(nodes))(); err != nil {
		t.Fatal(err)
	}
}

// TestNoticeEncoding: a notice survives its encoding, and what is not one is
// refused with a reason, not half-read.
func TestNoticeEncoding(t *testing.T) {
	in := notice{Node: "node-1", Addr: net.JoinHostPort("10.0.1.7", "3999"), Incarnation: 7}
	b, err := in.encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeNotice(b)
	if err != nil || out != in {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", in, out, err)
	}
	encoded := func(n notice) []byte {
		b, err := n.encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, bad := range map[string][]byte{
		"empty":           nil,
		"unknown kind":    append([]byte{'X'}, b[1:]...),
		"truncated":       b[:len(b)-2],
		"unknown field":   []byte(`D{"n":"node-1","a":"10.0.0.1:3999","secret":"x"}`),
		"bad node name":   encoded(notice{Node: "Bad Name", Addr: "10.0.0.1:3999"}),
		"host name addr":  encoded(notice{Node: "node-1", Addr: "example.com:3999"}),
		"no port":         encoded(notice{Node: "node-1", Addr: "10.0.0.1"}),
		"name too long":   encoded(notice{Node: string(slices.Repeat([]byte("a"), 300)), Addr: "10.0.0.1:3999"}),
		"trailing values": append(slices.Clone(b), []byte(`{}`)...),
	} {
		if n, err := decodeNotice(bad); err == nil {
			t.Errorf("%s: decoded as %+v", name, n)
		}
	}
}
