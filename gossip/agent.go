package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Tuning overrides memberlist's timings; a zero field keeps DefaultTuning's value.
type Tuning struct {
	ProbeInterval       time.Duration
	ProbeTimeout        time.Duration
	GossipInterval      time.Duration
	GossipNodes         int
	SuspicionMult       int
	RetransmitMult      int
	PushPullInterval    time.Duration
	GossipToTheDeadTime time.Duration
	TCPTimeout          time.Duration
	// PacketBytes is the largest gossip packet; 0: from the bind address's
	// interface MTU (packetBudget).
	PacketBytes int
	// Dilation multiplies every timer of the agent by k (0 or 1: none): the
	// memberlist timers above and the agent's own (seed refresh and join
	// backoff, the formation exchanges, the metadata and leave waits, the hosts
	// file's debounce). A ring dilated by k behaves as the undilated one slowed
	// down k times, for 1/k of the CPU per second: the scale benchmark uses it to
	// run more agents than this machine's cores could run at full speed, and
	// projects its figures back to real time (÷k). Never set on a real node.
	Dilation float64
}

// DefaultTuning is memberlist's LAN profile adjusted for a VPC ring of up to a few
// thousand nodes, aiming at: names of a new node everywhere within seconds, a dead
// node's names gone everywhere within ~5 s at N=1000, and under 2 KB/s per node when
// nothing changes. The reasoning, with N=1000 (memberlist scales by log N):
//
//   - ProbeInterval 500ms, ProbeTimeout 300ms: each node probes one peer per
//     interval, so a dead node is first probed within about one interval. VPC round
//     trips are well under 1 ms; 300 ms still leaves room for a loaded node. A probe
//     is one ~150-byte ping and ack, about 0.6 KB/s per node: the main steady cost.
//   - SuspicionMult 2: the suspicion timeout is SuspicionMult·log10(N)·ProbeInterval
//     = 2·3·0.5 s = 3 s at N=1000 (1 s at N≤10). With 2, memberlist's Lifeguard
//     expects no extra confirmations (k = mult-2 = 0), so the timeout is that minimum
//     rather than up to SuspicionMaxTimeoutMult times it. Detection (~0.5–1 s) +
//     3 s + gossip of the dead message (~1 s) ≈ 5 s. A falsely suspected node hears
//     the suspicion with the next probe and refutes it well within 3 s.
//   - GossipInterval 200ms, GossipNodes 4: a change reaches log5(1000) ≈ 4–5 hops,
//     about a second. Gossip sends nothing when no message is queued, so the steady
//     cost is zero.
//   - RetransmitMult 4: each node relays a message 4·ceil(log10(N+1)) = 16 times; the
//     chance a given node never hears it is about e^-16. Lower saves little, since
//     this cost is paid only on change.
//   - PushPullInterval 60s: the full-state exchange (anti-entropy) is the one cost
//     that grows with N. memberlist scales it by ceil(log2(N/32))+1 = 6 at N=1000: one
//     exchange every 6 minutes of ~150 B per member (uncompressed, see below); each
//     node starts one and answers about one, so ~0.8 KB/s at N=1000 on top of the
//     probes. Joins and seed refreshes do full exchanges anyway, so repairs do not
//     wait for it. (Measured at N=100 and N=500: ~490 B/s per node in total.)
//   - PacketBytes from the interface's MTU (8,973 bytes in a VPC's 9,001-byte
//     jumbo frames, memberlist's 1,400 elsewhere): each alive message a node
//     learns is re-gossiped RetransmitMult·log10(N) times, a few hundred bytes
//     a time, and gossip sends one packet to each of GossipNodes peers a round,
//     freshest messages first. After a launch of N=1000 at once every node
//     holds ~1,000 such messages: with 1.4 KB packets ~80 s of re-gossip at
//     ~30 KB/s, during which news after its first send waits behind the
//     backlog (a join then took ~6 s to reach all). Jumbo packets carry six
//     times more a round: the same bytes in a sixth of the time. Steady state
//     has nothing queued and sends no gossip packets, so it costs nothing there.
//   - GossipToTheDeadTime 30s and TCPTimeout 5s: LAN defaults; 5 s bounds a join to an
//     unreachable seed.
func DefaultTuning() Tuning {
	return Tuning{
		ProbeInterval:       500 * time.Millisecond,
		ProbeTimeout:        300 * time.Millisecond,
		GossipInterval:      200 * time.Millisecond,
		GossipNodes:         4,
		SuspicionMult:       2,
		RetransmitMult:      4,
		PushPullInterval:    60 * time.Second,
		GossipToTheDeadTime: 30 * time.Second,
		TCPTimeout:          5 * time.Second,
	}
}

func (t Tuning) withDefaults() Tuning {
	d := DefaultTuning()
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&t.ProbeInterval, d.ProbeInterval)
	set(&t.ProbeTimeout, d.ProbeTimeout)
	set(&t.GossipInterval, d.GossipInterval)
	seti(&t.GossipNodes, d.GossipNodes)
	seti(&t.SuspicionMult, d.SuspicionMult)
	seti(&t.RetransmitMult, d.RetransmitMult)
	set(&t.PushPullInterval, d.PushPullInterval)
	set(&t.GossipToTheDeadTime, d.GossipToTheDeadTime)
	set(&t.TCPTimeout, d.TCPTimeout)
	if t.Dilation <= 0 {
		t.Dilation = 1
	}
	return t
}

// dilate stretches one of the agent's timers by t.Dilation.
func (t Tuning) dilate(d time.Duration) time.Duration {
	if t.Dilation <= 0 || t.Dilation == 1 {
		return d
	}
	return time.Duration(float64(d) * t.Dilation)
}

// ValidateKey checks a ring key's length: memberlist uses it as an AES key.
func ValidateKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("gossip secret key is %d bytes, want 16, 24 or 32", len(key))
}

func newAgent(c Config) (*Agent, error) {
	if c.ClusterName == "" {
		return nil, errors.New("gossip: cluster name is empty")
	}
	if !validHostName(c.NodeName) {
		return nil, fmt.Errorf("gossip: node name %q is not a valid host name", c.NodeName)
	}
	if c.BindIP == nil || c.BindIP.IsUnspecified() {
		return nil, errors.New("gossip: no bind IP (use NodeIP to find it)")
	}
	if c.Keyring != nil {
		if err := c.Keyring.Validate(); err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
	} else if err := ValidateKey(c.SecretKey); err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Port < 0 || c.Port > 65535 {
		return nil, fmt.Errorf("gossip: port %d out of range", c.Port)
	}
	if c.SeedRefresh <= 0 {
		c.SeedRefresh = DefaultSeedRefresh
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	tune := DefaultTuning().withDefaults()
	if c.Tuning != nil {
		tune = c.Tuning.withDefaults()
	}
	c.SeedRefresh = tune.dilate(c.SeedRefresh)
	a := &Agent{
		cfg:          c,
		log:          c.Log,
		tune:         tune,
		ready:        c.Ready,
		role:         c.Role,
		names:        normalizeNames(c.Names),
		view:         map[string]*viewMember{},
		metaChanged:  make(chan struct{}, 1),
		hostsChanged: make(chan struct{}, 1),
		stop:         make(chan struct{}),
	}
	a.notices = noticeState{
		queue: &memberlist.TransmitLimitedQueue{
			NumNodes:       func() int { return int(max(1, a.viewSize.Load())) },
			RetransmitMult: tune.RetransmitMult,
		},
		seen:     map[string]seenNotice{},
		checking: map[string]*nodeCheck{},
		slots:    make(chan struct{}, maxNoticeChecks),
	}
	if c.Keyring != nil {
		for _, k := range c.Keyring.Keys {
			a.keyGens = append(a.keyGens, k.Generation)
		}
		slices.Sort(a.keyGens)
		a.keyGen = c.Keyring.Generation
	}
	if err := a.encodeLocked(); err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	return a, nil
}

// viewMember is one node as the events reported it.
type viewMember struct {
	Member
	port     int
	leaving  bool
	keyGens  []uint64  // the key generations the member accepts
	at       time.Time // of the last state change
	lastSeen time.Time // of the last answered probe by this agent
	// override: dead by a confirmed death notice while memberlist still
	// holds the member alive (deathnotice.go); the next event about the
	// member, or an answered probe, ends it.
	override bool
	rtt      time.Duration
}

// departedKeep bounds how long a dead member is still listed in Members.
const departedKeep = 24 * time.Hour

func (a *Agent) start(ctx context.Context) error {
	c := a.cfg
	lw := newLogWriter(a.log, a.recordReject)
	a.lw = lw
	mlLog := log.New(lw, "", 0)

	tr, err := listen(c.BindIP, c.Port, a.log)
	if err != nil {
		return fmt.Errorf("gossip: listen on %s: %w", net.JoinHostPort(c.BindIP.String(), strconv.Itoa(c.Port)), err)
	}
	a.tr = tr

	keys, primary := [][]byte(nil), c.SecretKey
	if c.Keyring != nil {
		primary = c.Keyring.Primary().Key
		for _, k := range c.Keyring.Keys {
			keys = append(keys, k.Key)
		}
	}
	keyring, err := memberlist.NewKeyring(keys, primary)
	if err != nil {
		a.tr.Shutdown()
		return fmt.Errorf("gossip: keyring: %w", err)
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = c.NodeName
	mc.BindAddr = c.BindIP.String()
	mc.BindPort = c.Port
	mc.AdvertiseAddr = c.BindIP.String()
	mc.AdvertisePort = c.Port
	mc.Transport = a.tr
	mc.Keyring = keyring
	a.keyring = keyring
	// The label is authenticated with every packet: two clusters that share a VPC
	// (and, by a copied key file, a key) still never merge.
	mc.Label = "nodeagent/" + c.ClusterName
	mc.Logger = mlLog
	mc.Delegate = (*delegate)(a)
	mc.Events = (*events)(a)
	mc.Ping = (*pinger)(a)
	if a.aliveFilter != nil {
		mc.Alive = aliveFilter(a.aliveFilter)
	}
	d := a.tune.dilate
	mc.ProbeInterval = d(a.tune.ProbeInterval)
	mc.ProbeTimeout = d(a.tune.ProbeTimeout)
	mc.GossipInterval = d(a.tune.GossipInterval)
	mc.GossipNodes = a.tune.GossipNodes
	mc.SuspicionMult = a.tune.SuspicionMult
	mc.RetransmitMult = a.tune.RetransmitMult
	mc.PushPullInterval = d(a.tune.PushPullInterval)
	mc.GossipToTheDeadTime = d(a.tune.GossipToTheDeadTime)
	mc.TCPTimeout = d(a.tune.TCPTimeout)
	// memberlist compresses with LZW, which allocates and zeroes a 64 KB table
	// for every message it compresses: in the scale test that was the largest
	// CPU cost, for packets of 100–300 bytes that barely shrink. Only the
	// push/pull exchange would gain, and it fits the bandwidth budget as is.
	mc.EnableCompression = false
	mc.UDPBufferSize = a.tune.PacketBytes
	if mc.UDPBufferSize <= 0 {
		mc.UDPBufferSize = packetBudget(interfaceMTU(c.BindIP), c.BindIP.To4() == nil)
	}
	// A restarted instance gets a new private IP but keeps no name; a replaced
	// node with the same name may take over at once.
	mc.DeadNodeReclaimTime = d(time.Second)

	ml, err := memberlist.Create(mc)
	if err != nil {
		a.tr.Shutdown()
		return fmt.Errorf("gossip: start memberlist: %w", err)
	}
	a.ml = ml

	if c.HostsFile != "" {
		a.wg.Add(1)
		go a.hostsLoop()
		a.signalHosts()
	}
	if f := c.FollowKeyring; f != nil {
		a.wg.Add(1)
		go a.keyringLoop(context.WithoutCancel(ctx), *f)
	}
	a.wg.Add(2)
	go a.metaLoop()
	// The agent outlives the caller's context (often a start-up deadline); it
	// runs until Shutdown, which cancels its seed look-ups.
	seedCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		<-a.stop
		cancel()
	}()
	go func() {
		defer a.wg.Done()
		defer cancel()
		a.seedLoop(seedCtx)
	}()
	a.log.Info("gossip started", "node", c.NodeName, "addr", net.JoinHostPort(c.BindIP.String(), strconv.Itoa(c.Port)),
		"cluster", c.ClusterName)
	return nil
}

// encodeLocked refreshes a.meta from ready/role/names/pod CIDR as the record's
// next version; a.mu must be held. A record that does not encode changes
// nothing, its version included.
func (a *Agent) encodeLocked() error {
	b, err := encodeMeta(metadata{Ready: a.ready, Leaving: a.leaving, Role: a.role, Names: a.names, PodCIDR: a.podCIDR,
		KeyGen: a.keyGen, KeyGens: a.keyGens, Incarnation: a.incarnation + 1}, a.cfg.ClusterName)
	if err != nil {
		return err
	}
	a.meta = b
	a.incarnation++
	return nil
}

func (a *Agent) signalMeta() {
	select {
	case a.metaChanged <- struct{}{}:
	default:
	}
}

func (a *Agent) signalHosts() {
	select {
	case a.hostsChanged <- struct{}{}:
	default:
	}
}

// metaLoop announces metadata changes. UpdateNode waits until the new alive
// message has been handed to peers, so it runs here rather than in SetReady; a
// burst of changes coalesces into one announcement of the latest state.
func (a *Agent) metaLoop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.stop:
			return
		case <-a.metaChanged:
		}
		if err := a.ml.UpdateNode(a.tune.dilate(5 * time.Second)); err != nil {
			// The update is queued all the same; push/pull delivers it if
			// gossip does not.
			a.log.Debug("gossip metadata update not yet acknowledged", "err", err)
		}
		a.signalHosts()
	}
}

// recordReject notes traffic refused for a key mismatch (or a foreign cluster's
// label), for Status.
func (a *Agent) recordReject(addr, reason string) {
	if addr == "" {
		addr = "unknown address"
	}
	a.keyRejects.Add(1)
	a.statusMu.Lock()
	a.lastKeyError = fmt.Sprintf("rejected gossip from %s: %s", addr, reason)
	a.lastKeyAt = time.Now()
	a.statusMu.Unlock()
}

// seedLoop joins seeds at start, retrying with backoff until some join
// succeeds, then every SeedRefresh joins seeds that are not alive members, so
// that a ring split by a partition, started as several islands, or holding a
// node wrongly declared dead (a lost refutation) merges again within a refresh.
func (a *Agent) seedLoop(ctx context.Context) {
	if a.cfg.Seeds == nil {
		a.joined.Store(true)
		return
	}
	backoff := a.tune.dilate(time.Second)
	var seeds []string
	var listed time.Time
	for {
		// Every node asks EC2 for seeds: 1000 nodes every 30 s would be 33
		// DescribeInstances calls a second, enough to be throttled. The list is
		// re-read at an interval stretched with the ring's size, so the cluster as a
		// whole asks about once a second, while joins to missing seeds of the cached
		// list still run every SeedRefresh.
		listEvery := a.cfg.SeedRefresh * time.Duration(max(1, (a.ml.NumMembers()+31)/32))
		if seeds == nil || time.Since(listed) >= listEvery {
			lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			fresh, err := a.cfg.Seeds.Seeds(lctx)
			cancel()
			if err != nil {
				a.setJoinError(fmt.Errorf("list seeds: %w", err))
				a.log.Warn("list gossip seeds", "err", err)
			} else {
				seeds, listed = fresh, time.Now()
				if seeds == nil {
					seeds = []string{}
				}
			}
		}
		ok := seeds != nil && a.joinSeeds(seeds)
		wait := a.cfg.SeedRefresh
		if ok {
			backoff = a.tune.dilate(time.Second)
		} else {
			wait = backoff
			backoff = min(backoff*2, a.cfg.SeedRefresh)
		}
		t := time.NewTimer(jitter(wait))
		select {
		case <-a.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// jitter spreads d by ±20% so nodes started together do not refresh together.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// maxJoinPerRefresh bounds one refresh: a single successful full-state exchange
// merges two sides, so trying a few of the missing seeds is enough, and it keeps a
// refresh from walking hundreds of unreachable addresses.
const maxJoinPerRefresh = 3

// joinSeeds joins a few of the seeds that are not alive members. It reports
// whether the node is (still) part of a ring: a join succeeded, or there is
// nobody to join.
func (a *Agent) joinSeeds(seeds []string) bool {
	self := net.JoinHostPort(a.cfg.BindIP.String(), strconv.Itoa(a.cfg.Port))
	alive := map[string]bool{}
	a.mu.Lock()
	for _, v := range a.view {
		if v.State == StateAlive {
			alive[net.JoinHostPort(v.IP.String(), strconv.Itoa(v.port))] = true
		}
	}
	a.mu.Unlock()
	var missing []string
	for _, s := range seeds {
		addr := withPort(s, a.cfg.Port)
		if addr != self && !alive[addr] {
			missing = append(missing, addr)
		}
	}
	if len(missing) == 0 {
		// Alone with no seeds (the first node), or already connected to all.
		a.joined.Store(true)
		a.setJoinError(nil)
		return true
	}
	rand.Shuffle(len(missing), func(i, j int) { missing[i], missing[j] = missing[j], missing[i] })
	// EC2 lists instances that are still booting, whose agent is not listening
	// yet. A node that is not in a ring yet tries group after group, for as long
	// as one TCP timeout, so a node started early in a large launch does not sit
	// alone through its backoff. A node already in a ring stops at one group:
	// each join is a full-state exchange, and during a launch of hundreds that
	// extra load is what a CPU-starved ring cannot afford.
	var (
		n     int
		err   error
		tried []string
	)
	for begin := time.Now(); len(missing) > 0 && time.Since(begin) < a.tune.dilate(a.tune.TCPTimeout); {
		tried = missing[:min(len(missing), maxJoinPerRefresh)]
		missing = missing[len(tried):]
		if n, err = a.ml.Join(tried); n > 0 || a.ml.NumMembers() > 1 {
			break
		}
	}
	if n > 0 {
		if !a.joined.Load() {
			a.log.Info("joined gossip ring", "via", tried, "members", a.ml.NumMembers())
			a.startFormationSync()
		}
		a.joined.Store(true)
		a.setJoinError(nil)
		return true
	}
	if err == nil {
		err = errors.New("no seed answered")
	}
	if isKeyMismatch(err.Error()) {
		a.recordReject(tried[0], "encryption key mismatch: the seed refused our key, or we refused its reply")
		err = fmt.Errorf("join %v: encryption key mismatch: %w", tried, err)
	} else {
		err = fmt.Errorf("join %v: %w", tried, err)
	}
	a.setJoinError(err)
	a.log.Warn("join gossip seeds", "err", err)
	// A peer that joined us counts too: we are in a ring, the seeds we tried
	// were just not up yet.
	if a.ml.NumMembers() > 1 {
		a.joined.Store(true)
		a.startFormationSync()
		return true
	}
	return false
}

// formation is how a node spreads the membership right after it first finds
// itself in a ring: full-state exchanges with random members. When many nodes
// start at once (an Auto Scaling launch), each joins seeds whose own views are
// still nearly empty, so the join teaches it little; gossip alone would then
// have to carry every member's alive message to every node, a few per packet:
// ~7 s for N=200 even with CPU to spare. A push/pull exchange merges two whole
// views, so rounds of them spread the membership like an epidemic of full
// states. A node makes one exchange after each of Waits (0.5 to 3 s after its
// join: while a launch is still starting, views stand still for a moment
// without being whole), then, for a ring still forming around it, one every
// Every for as long as its view keeps growing: it stops once Quiet rounds in a
// row taught it nothing, or after Extra more. (With the former fixed rounds
// at 0.5, 1, 2, 3, 5 and 9 s, N=1000 had its median node's view whole by
// ~3.5 s but its last members waited for the 5 s and 9 s rounds.) A node
// joining a formed ring pays len(Waits)+Quiet exchanges once. A node whose
// Lifeguard health score says it is overloaded (its own probes go unanswered
// in time) skips its rounds: a full-state exchange then only adds load, and
// merging a peer's suspicions spreads them (measured on a ring starved of CPU,
// that turned a slow formation into a storm of false deaths).
type formationPolicy struct {
	Waits        []time.Duration
	Every        time.Duration
	Quiet, Extra int
}

var formation = formationPolicy{
	Waits: []time.Duration{500 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second},
	Every: 500 * time.Millisecond, Quiet: 2, Extra: 20,
}

// startFormationSync runs the formation exchanges once per agent.
func (a *Agent) startFormationSync() {
	a.formationOnce.Do(func() {
		if len(formation.Waits) == 0 {
			return
		}
		a.wg.Add(1)
		go a.formationSync(formation)
	})
}

// next says whether a node that has made round exchanges, the last quiet of
// which taught it nothing, makes another, and after what wait.
func (p formationPolicy) next(round, quiet int) (time.Duration, bool) {
	switch {
	case round < len(p.Waits):
		return p.Waits[round], true
	case quiet >= p.Quiet || round >= len(p.Waits)+p.Extra:
		return 0, false
	}
	return p.Every, true
}

func (a *Agent) formationSync(p formationPolicy) {
	defer a.wg.Done()
	a.forming.Store(true)
	defer a.forming.Store(false)
	known, quiet := a.aliveCount(), 0
	for round := 0; ; round++ {
		wait, ok := p.next(round, quiet)
		if !ok {
			return
		}
		t := time.NewTimer(jitter(a.tune.dilate(wait)))
		select {
		case <-a.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if a.ml.GetHealthScore() == 0 {
			if peer := a.randomAlivePeer(); peer != "" {
				// Join of a member already known is one push/pull exchange.
				if _, err := a.ml.Join([]string{peer}); err != nil {
					a.log.Debug("gossip formation exchange", "peer", peer, "err", err)
				}
			}
		}
		// Growth from any source counts (the exchange, peers' exchanges
		// with us, gossip): the ring is still forming around this node.
		now := a.aliveCount()
		if now > known {
			known, quiet = now, 0
		} else {
			quiet++
		}
	}
}

// aliveCount is the number of alive members this agent knows, itself included.
func (a *Agent) aliveCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, v := range a.view {
		if v.State == StateAlive {
			n++
		}
	}
	return n
}

// randomAlivePeer is the address of a random alive member other than this
// node, "" when there is none.
func (a *Agent) randomAlivePeer() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var pick *viewMember
	seen := 0
	for name, v := range a.view {
		if name == a.cfg.NodeName || v.State != StateAlive {
			continue
		}
		seen++
		if rand.IntN(seen) == 0 { // reservoir sampling: one pass, uniform
			pick = v
		}
	}
	if pick == nil {
		return ""
	}
	return net.JoinHostPort(pick.IP.String(), strconv.Itoa(pick.port))
}

func (a *Agent) setJoinError(err error) {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	a.lastJoinError = ""
	if err != nil {
		a.lastJoinError = err.Error()
	}
}

// withPort adds the ring's port to a bare IP seed.
func withPort(seed string, port int) string {
	if _, _, err := net.SplitHostPort(seed); err == nil {
		return seed
	}
	return net.JoinHostPort(seed, strconv.Itoa(port))
}

// delegate hands memberlist this node's metadata and carries the death
// notices (deathnotice.go); the ring has no other user state.
type delegate Agent

func (d *delegate) NodeMeta(limit int) []byte {
	a := (*Agent)(d)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.meta) > limit { // encodeMeta already enforces memberlist's limit
		return nil
	}
	return append([]byte(nil), a.meta...)
}

func (d *delegate) NotifyMsg(b []byte) {
	a := (*Agent)(d)
	n, err := decodeNotice(b)
	if err != nil {
		a.notices.dropped.Add(1)
		a.log.Debug("gossip user message dropped", "err", err)
		return
	}
	a.handleNotice(n)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return (*Agent)(d).notices.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

// events keeps a.view and triggers hosts rewrites. memberlist calls these with
// its node lock held: they copy what they need and never call back into it.
type events Agent

func (e *events) NotifyJoin(n *memberlist.Node) {
	a := (*Agent)(e)
	a.events[EventJoin].Add(1)
	a.observeJoin(n)
	a.log.Debug("gossip member joined", "node", n.Name, "addr", n.Addr.String())
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	a := (*Agent)(e)
	a.events[EventUpdate].Add(1)
	a.observe(n, StateAlive)
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	a := (*Agent)(e)
	v := a.observe(n, StateDead)
	if v.State == StateLeft {
		a.events[EventLeft].Add(1)
	} else {
		a.events[EventDead].Add(1)
	}
	a.log.Info("gossip member gone", "node", n.Name, "addr", n.Addr.String(), "state", v.State)
	a.noticeDeath(v)
}

// observe records a node's address, metadata and state. Metadata it cannot
// decode (a newer agent, a corrupt peer) leaves Role and Names empty, so nothing
// unsafe reaches the hosts file.
func (a *Agent) observe(n *memberlist.Node, state string) viewMember {
	return a.record(n, state, false)
}

// observeJoin records a node memberlist holds alive again after a death. A
// node back at the address it died at may be a resurrection: a push/pull
// from a peer that never heard of the death (it holds a newer incarnation,
// see deathnotice.go) makes memberlist accept the dead node as alive, with
// the record that peer held, until its next probe of it fails. So such a
// node stays dead in the view until it answers a ping; one that does (a
// refuted false death, a restart at the same address) is alive after one
// round trip. A node back at a new address (an instance replaced) is alive at
// once.
func (a *Agent) observeJoin(n *memberlist.Node) {
	v := a.record(n, StateAlive, true)
	if v.override {
		a.log.Debug("gossip member back at the address it died at: held dead until it answers a ping",
			"node", n.Name, "addr", n.Addr.String(), "incarnation", v.Incarnation)
		a.startCheck(n.Name, nil)
	}
}

func (a *Agent) record(n *memberlist.Node, state string, join bool) viewMember {
	v := viewMember{
		Member: Member{Name: n.Name, IP: append(net.IP(nil), n.Addr...), State: state},
		port:   int(n.Port),
		at:     time.Now(),
	}
	md, err := decodeMeta(n.Meta, a.cfg.ClusterName)
	if err != nil {
		a.log.Warn("ignoring gossip member's names", "node", n.Name, "err", err)
	} else {
		v.Role, v.Ready, v.Names, v.leaving, v.PodCIDR = md.Role, md.Ready, md.Names, md.Leaving, md.PodCIDR
		v.KeyGeneration, v.keyGens, v.Incarnation = md.KeyGen, md.KeyGens, md.Incarnation
	}
	if state == StateDead && v.leaving {
		v.State = StateLeft
	}
	a.mu.Lock()
	// memberlist holds its node lock while it calls us: a walk of the whole view
	// on every event made a burst of N joins cost O(N²) under that lock.
	if v.at.Sub(a.prunedAt) > time.Minute {
		a.prunedAt = v.at
		for name, old := range a.view {
			if old.State != StateAlive && v.at.Sub(old.at) > departedKeep {
				delete(a.view, name)
			}
		}
	}
	kick := false
	if old, ok := a.view[n.Name]; ok {
		v.lastSeen, v.rtt = old.lastSeen, old.rtt
		kick = old.override // its check watches the override
		if join && old.State == StateDead && old.IP.Equal(v.IP) && old.port == v.port {
			v.State, v.override = StateDead, true
		}
	}
	stored := v // the view's copy changes under a.mu (pinger); v is returned
	a.view[n.Name] = &stored
	a.viewSize.Store(int64(len(a.view)))
	a.mu.Unlock()
	if kick {
		a.kickCheck(n.Name)
	}
	a.signalHosts()
	return v
}

// aliveFilter is memberlist's alive delegate from a function.
type aliveFilter func(*memberlist.Node) error

func (f aliveFilter) NotifyAlive(n *memberlist.Node) error { return f(n) }

// pinger notes when this agent's probes are answered, for Member.LastSeen.
type pinger Agent

func (p *pinger) AckPayload() []byte { return nil }

func (p *pinger) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, _ []byte) {
	a := (*Agent)(p)
	a.mu.Lock()
	v, ok := a.view[other.Name]
	revived := ok && v.override
	if ok {
		v.lastSeen, v.rtt = time.Now(), rtt
		if revived { // dead by a notice, but it answers memberlist's probe
			v.State, v.override, v.at = StateAlive, false, v.lastSeen
		}
	}
	a.mu.Unlock()
	if revived {
		a.log.Debug("gossip member alive again", "node", other.Name, "why", "it answered our probe")
		a.signalHosts()
		a.kickCheck(other.Name)
	}
}
