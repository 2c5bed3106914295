package gossip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/memberlist"
)

// Death notices work around memberlist's stale-incarnation gap (v0.7.0,
// state.go): suspectNode and deadNode drop a message whose incarnation is
// older than the receiver's record of the node, and a prober suspects with its
// own record. When views of a node's incarnation differ at its death (an
// update not everyone heard, a refutation during a CPU stall), the nodes
// holding the newer record ignore the death until they probe the node
// themselves: up to N probe periods in a ring of N.
//
// So when this agent's memberlist declares a peer dead (not left), the agent
// gossips a notice, as a user broadcast: the node's name, address and the
// record it saw (the incarnation in its metadata). Every agent relays a notice
// the first time it hears it, as memberlist relays its own messages; a notice
// rides the same packets as memberlist's dead message, after it, so a node
// that accepts the dead message has the node dead before the notice is read.
// An agent that still holds the node alive a moment later (two gossip
// intervals) pings it itself, memberlist's Ping at the node's address with
// the probe timeout, twice. No answer: the agent reports the node dead in its
// own view (Members, Hosts, the hosts file, metrics) although its memberlist
// still holds it alive; an answer: the notice is ignored. Its memberlist
// agrees within N probe periods (its own probe of the node fails), which ends
// the override; until then the agent pings the node again every few probe
// periods, and any sign of life (an answered ping or probe, a newer alive
// message with changed metadata) makes it alive again, so a blip never hides
// a live node for good.
//
// Why not let memberlist repair it: memberlist's only public repair is a
// push/pull, and a push/pull from a holder of the newer record to a node that
// holds the node dead brings it back to life there (aliveNode accepts the
// higher incarnation): the whole ring would see the dead node rejoin and die
// again, names and all, until someone probes it. That resurrection still
// happens inside memberlist (a holder's memberlist keeps the node alive until
// it probes it), so the agent also guards its view against it: a node back at
// the very address it died at is held dead until it answers a ping
// (observeJoin). A notice costs ~60 bytes relayed like any gossip message,
// and a ping per holder. It carries a node's name and address, which every
// member already has, and nothing secret.

// notice is one death notice on the wire.
type notice struct {
	Node        string `json:"n"`
	Addr        string `json:"a"`
	Incarnation uint64 `json:"i,omitempty"`
}

// noticeKind starts every user message of the ring that is a death notice.
const noticeKind = 'D'

func (n notice) encode() ([]byte, error) {
	b, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode death notice: %w", err)
	}
	return append([]byte{noticeKind}, b...), nil
}

func decodeNotice(b []byte) (notice, error) {
	var n notice
	if len(b) == 0 || b[0] != noticeKind {
		return n, errors.New("not a death notice")
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return notice{}, fmt.Errorf("death notice: %w", err)
	}
	if dec.More() {
		return notice{}, errors.New("death notice: trailing data")
	}
	if !validHostName(n.Node) {
		return notice{}, fmt.Errorf("death notice: node name %q is not a valid host name", n.Node)
	}
	if _, err := parseAddrPort(n.Addr); err != nil || net.ParseIP(hostOf(n.Addr)) == nil {
		return notice{}, fmt.Errorf("death notice: address %q is not ip:port", n.Addr)
	}
	return n, nil
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}

// noticeBroadcast is a queued notice; a newer one about the same node
// replaces it in the queue.
type noticeBroadcast struct {
	node string
	msg  []byte
}

func (b *noticeBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*noticeBroadcast)
	return ok && ob.node == b.node
}
func (b *noticeBroadcast) Name() string    { return "death-notice/" + b.node }
func (b *noticeBroadcast) Message() []byte { return b.msg }
func (b *noticeBroadcast) Finished()       {}

// Limits of the notice machinery: how long a notice counts as heard (it is
// relayed once within that time), how many are remembered and queued, how
// many checks ping at once, and how often an overridden node is pinged again.
const (
	noticeSeenFor      = 30 * time.Second
	maxNoticesSeen     = 4096
	maxNoticesQueued   = 256
	maxNoticeChecks    = 4
	noticePingTries    = 2
	recheckEveryProbes = 4
	noticeGrace        = 2
)

// DeathNoticeCounts counts the agent's death notices.
type DeathNoticeCounts struct {
	// Sent: notices this agent started (its memberlist declared a peer dead).
	Sent uint64 `json:"sent"`
	// Relayed: notices from peers heard for the first time and passed on.
	Relayed uint64 `json:"relayed"`
	// Confirmed: notices about a node this agent still held alive that did
	// not answer its pings, so it reports the node dead ahead of memberlist.
	Confirmed uint64 `json:"confirmed"`
	// Refuted: notices about a node that answered this agent's ping.
	Refuted uint64 `json:"refuted"`
	// Dropped: notices that could not be read, or arrived past the limits.
	Dropped uint64 `json:"dropped"`
	// SelfRefuted: notices about this very node, which it answered by
	// re-announcing itself with a newer incarnation.
	SelfRefuted uint64 `json:"selfRefuted"`
}

// DeathNoticeCounts reports the death notices this agent has handled.
func (a *Agent) DeathNoticeCounts() DeathNoticeCounts {
	return DeathNoticeCounts{
		Sent: a.notices.sent.Load(), Relayed: a.notices.relayed.Load(), Confirmed: a.notices.confirmed.Load(),
		Refuted: a.notices.refuted.Load(), Dropped: a.notices.dropped.Load(), SelfRefuted: a.notices.selfRefuted.Load(),
	}
}

// firstHeard records n as heard, reporting whether it is new: not heard
// within noticeSeenFor with the same address and record.
func (a *Agent) firstHeard(n notice) bool {
	now := time.Now()
	a.notices.mu.Lock()
	defer a.notices.mu.Unlock()
	if s, ok := a.notices.seen[n.Node]; ok && s.n == n && now.Sub(s.at) < a.tune.dilate(noticeSeenFor) {
		return false
	}
	if len(a.notices.seen) >= maxNoticesSeen {
		for k, s := range a.notices.seen {
			if now.Sub(s.at) >= a.tune.dilate(noticeSeenFor) {
				delete(a.notices.seen, k)
			}
		}
		if len(a.notices.seen) >= maxNoticesSeen {
			return false
		}
	}
	a.notices.seen[n.Node] = seenNotice{n: n, at: now}
	return true
}

// queueNotice hands n to gossip.
func (a *Agent) queueNotice(n notice) {
	b, err := n.encode()
	if err != nil {
		a.notices.dropped.Add(1)
		a.log.Debug("gossip death notice not sent", "node", n.Node, "err", err)
		return
	}
	a.notices.queue.QueueBroadcast(&noticeBroadcast{node: n.Node, msg: b})
	a.notices.queue.Prune(maxNoticesQueued)
}

// noticeDeath starts a notice for a peer memberlist declared dead. It runs
// in memberlist's event callback: it only queues.
func (a *Agent) noticeDeath(v viewMember) {
	if v.Name == a.cfg.NodeName || v.State != StateDead {
		return
	}
	n := notice{Node: v.Name, Addr: net.JoinHostPort(v.IP.String(), fmt.Sprint(v.port)), Incarnation: v.Incarnation}
	if !a.firstHeard(n) {
		return
	}
	a.notices.sent.Add(1)
	a.log.Debug("gossip death notice sent", "node", n.Node, "addr", n.Addr, "incarnation", n.Incarnation,
		"why", "memberlist declared it dead")
	a.queueNotice(n)
}

// handleNotice relays a notice heard for the first time and, if this agent
// still holds the node alive at the same address, checks it. It never
// blocks: memberlist calls it from its packet handler.
func (a *Agent) handleNotice(n notice) {
	if n.Node == a.cfg.NodeName {
		// Peers hold this node dead. memberlist refutes a death it hears about
		// itself, but a node that did not hear it (a CPU stall ate the dead
		// message, and gossip to the dead has ended) stays dead to the ring
		// until a push/pull brings it the news: minutes in a large ring.
		// Re-announcing with a newer incarnation (UpdateNode, as metaLoop
		// does) is memberlist's own refutation: alive beats dead at a newer
		// incarnation, everywhere. Once per notice (firstHeard).
		// The record version goes up too, so that every agent sees a newer
		// record of this node, and a holder of it dead revives it (after its
		// ping is answered: observeJoin).
		if a.firstHeard(n) {
			a.mu.Lock()
			err := a.encodeLocked()
			a.mu.Unlock()
			if err != nil { // cannot happen: the version does not change the size
				a.log.Error("encode gossip metadata", "err", err)
			}
			a.notices.selfRefuted.Add(1)
			a.log.Debug("gossip death notice about this node: re-announcing it", "incarnation", n.Incarnation,
				"why", "peers declared this node dead; it is alive")
			a.signalMeta()
		}
		return
	}
	if !a.firstHeard(n) {
		return
	}
	a.notices.relayed.Add(1)
	a.queueNotice(n)

	a.mu.Lock()
	v, ok := a.view[n.Node]
	held := ok && v.State == StateAlive && viewAddr(v) == n.Addr
	a.mu.Unlock()
	if held {
		a.startCheck(n.Node, &n)
	}
}

func viewAddr(v *viewMember) string { return net.JoinHostPort(v.IP.String(), fmt.Sprint(v.port)) }

// nodeCheck is the one check of a node at a time: a notice to confirm, and
// an override to watch.
type nodeCheck struct {
	kick    chan struct{} // wakes the check: a notice, or an event about the node
	pending *notice       // the latest notice not yet confirmed
}

// startCheck hands a notice (nil: only an override to watch) to the node's
// check, starting one unless it runs already.
func (a *Agent) startCheck(node string, n *notice) {
	a.notices.mu.Lock()
	defer a.notices.mu.Unlock()
	if a.notices.closed {
		return
	}
	c, running := a.notices.checking[node]
	if !running {
		c = &nodeCheck{kick: make(chan struct{}, 1)}
		a.notices.checking[node] = c
	}
	if n != nil {
		c.pending = n
	}
	if running {
		select {
		case c.kick <- struct{}{}:
		default:
		}
		return
	}
	a.wg.Add(1) // under notices.mu: halt sets closed before it waits
	go a.runCheck(node, c)
}

// kickCheck wakes a node's check, if one runs: the view's entry changed.
func (a *Agent) kickCheck(node string) {
	a.notices.mu.Lock()
	defer a.notices.mu.Unlock()
	if c, ok := a.notices.checking[node]; ok {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// runCheck confirms a node's notices and watches its override. A notice
// about a node still held alive a moment later (time for memberlist's own
// dead message) is confirmed by pings: no answer, and the view holds the node
// dead against memberlist. While it does, the node is pinged every few probe
// periods and at every kick, until memberlist agrees (an event replaces the
// entry) or the node answers (then it is alive again).
func (a *Agent) runCheck(node string, c *nodeCheck) {
	defer a.wg.Done()
	recheck := a.tune.dilate(recheckEveryProbes * a.tune.ProbeInterval)
	for {
		a.notices.mu.Lock()
		n := c.pending
		c.pending = nil
		a.notices.mu.Unlock()
		if n != nil && !a.confirmNotice(*n) {
			return // stopping
		}
		if addr, ok := a.overridden(node); ok {
			if a.pingNode(node, addr) {
				a.revive(node, addr, "it answered our ping")
			}
		}
		a.notices.mu.Lock()
		if _, ok := a.overridden(node); !ok && c.pending == nil {
			delete(a.notices.checking, node)
			a.notices.mu.Unlock()
			return
		}
		a.notices.mu.Unlock()
		t := time.NewTimer(recheck)
		select {
		case <-a.stop:
			t.Stop()
			return
		case <-c.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// confirmNotice pings the node of a notice if the view still holds it alive
// at the notice's address after a grace period, and holds it dead on no
// answer. It reports false when the agent stops.
func (a *Agent) confirmNotice(n notice) bool {
	if !a.sleep(a.tune.dilate(noticeGrace * a.tune.GossipInterval)) {
		return false
	}
	if !a.heldAliveAt(n.Node, n.Addr) {
		return true // memberlist got there first, or the node moved
	}
	select {
	case a.notices.slots <- struct{}{}:
	case <-a.stop:
		return false
	}
	answered := a.pingNode(n.Node, n.Addr)
	<-a.notices.slots
	if answered {
		a.notices.refuted.Add(1)
		a.log.Debug("gossip death notice refuted", "node", n.Node, "addr", n.Addr, "why", "it answered our ping")
		return true
	}
	a.mu.Lock()
	v, ok := a.view[n.Node]
	override := ok && v.State == StateAlive && viewAddr(v) == n.Addr
	if override {
		v.State, v.override, v.at = StateDead, true, time.Now()
	}
	a.mu.Unlock()
	if !override {
		return true // memberlist got there first
	}
	a.notices.confirmed.Add(1)
	a.log.Debug("gossip member dead by notice", "node", n.Node, "addr", n.Addr, "incarnation", n.Incarnation,
		"why", "a peer's memberlist declared it dead, ours still holds it alive, and it did not answer our pings")
	a.signalHosts()
	return true
}

func (a *Agent) heldAliveAt(node, addr string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.view[node]
	return ok && v.State == StateAlive && viewAddr(v) == addr
}

// overridden is the address of a node the view holds dead against
// memberlist.
func (a *Agent) overridden(node string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if v, ok := a.view[node]; ok && v.override {
		return viewAddr(v), true
	}
	return "", false
}

// revive ends an override: the node at addr showed it is alive.
func (a *Agent) revive(node, addr, why string) {
	a.mu.Lock()
	v, ok := a.view[node]
	revived := ok && v.override && viewAddr(v) == addr
	if revived {
		v.State, v.override, v.at = StateAlive, false, time.Now()
	}
	a.mu.Unlock()
	if revived {
		a.log.Debug("gossip member alive again", "node", node, "addr", addr, "why", why)
		a.signalHosts()
	}
}

// pingNode pings node at addr, up to noticePingTries times, reporting
// whether it answered.
func (a *Agent) pingNode(node, addr string) bool {
	ap, err := parseAddrPort(addr)
	if err != nil {
		return false
	}
	to := net.UDPAddrFromAddrPort(ap)
	for range noticePingTries {
		if _, err := a.ml.Ping(node, to); err == nil {
			return true
		}
		select {
		case <-a.stop:
			return false
		default:
		}
	}
	return false
}

// sleep waits d, reporting false if the agent stops first.
func (a *Agent) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-a.stop:
		return false
	}
}
