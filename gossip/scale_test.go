package gossip

import (
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	scaleSizes  = flag.String("scale.n", "100,500,1000", "ring sizes for BenchmarkRing")
	scaleWindow = flag.Duration("scale.window", 30*time.Second, "steady-state measuring window")
	scaleBatch  = flag.Int("scale.batch", 0, "start agents in batches of this many, 1s apart (0: all at once)")
	scaleTuning = flag.String("scale.tuning", "", "memberlist overrides for BenchmarkRing, e.g. probe=1s,timeout=800ms,susp=4; empty = DefaultTuning")
)

// parseTuning reads -scale.tuning.
func parseTuning(t testing.TB, s string) *Tuning {
	if s == "" {
		return nil
	}
	var tu Tuning
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "probe":
			tu.ProbeInterval, err = time.ParseDuration(v)
		case "timeout":
			tu.ProbeTimeout, err = time.ParseDuration(v)
		case "gossip":
			tu.GossipInterval, err = time.ParseDuration(v)
		case "pushpull":
			tu.PushPullInterval, err = time.ParseDuration(v)
		case "susp":
			tu.SuspicionMult, err = strconv.Atoi(v)
		case "fanout":
			tu.GossipNodes, err = strconv.Atoi(v)
		case "retransmit":
			tu.RetransmitMult, err = strconv.Atoi(v)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			t.Fatalf("-scale.tuning %q: %v", kv, err)
		}
	}
	return &tu
}

// BenchmarkRing measures a ring of N in-process agents on loopback addresses
// (127.88.x.y), with the default tuning:
//   - converge: from the last Start until every agent has every member's records;
//   - join: a new agent's records reach every agent;
//   - ready: a SetReady reaches every agent;
//   - fail: a hard-killed agent is known dead by every agent;
//   - steady bandwidth: bytes sent per agent per second, counted by the transport,
//     and CPU per agent (getrusage), over -scale.window with no changes.
//
// All agents share one process, so the figures include the CPU contention of N
// agents on this machine's cores, which a real node does not have.
//
// Each size is one run whatever b.N is (a ring takes minutes to measure); the
// figures are reported as metrics and printed on a SCALE line:
//
//	go test -run '^$' -bench BenchmarkRing -benchtime 1x -scale.n 100,500,1000 -timeout 30m ./gossip/
func BenchmarkRing(b *testing.B) {
	raiseNoFile(b)
	for _, f := range strings.Split(*scaleSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			b.Fatalf("-scale.n: %v", err)
		}
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				runScale(b, n)
			}
		})
	}
}

func raiseNoFile(t testing.TB) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

func scaleIP(i int) net.IP { return net.IPv4(127, 88, byte(i/250), byte(i%250+1)) }

// aliveRecords counts the alive members in an agent's view and their names.
func (a *Agent) aliveRecords() (members, names int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, v := range a.view {
		if v.State == StateAlive {
			members++
			names += 1 + len(v.Names)
		}
	}
	return members, names
}

func (a *Agent) viewStates() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{}
	for _, v := range a.view {
		out[v.State]++
	}
	return out
}

func (a *Agent) memberView(name string) (viewMember, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.view[name]
	if !ok {
		return viewMember{}, false
	}
	return *v, true
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runScale(t testing.TB, n int) {
	key := []byte("0123456789abcdef")
	cluster := "scale.k8s.local"
	cfgs := make([]Config, n+1) // the last one joins later
	var seeds []string
	wantNames := 0
	for i := range cfgs {
		ip := scaleIP(i)
		c := Config{
			ClusterName: cluster, NodeName: fmt.Sprintf("ip-127-88-%d-%d.internal", i/250, i%250+1),
			BindIP: ip, Port: freePort(t, ip), SecretKey: key, Role: "Node", Log: discardLogger(),
			Tuning: parseTuning(t, *scaleTuning),
		}
		if i == 0 && *verbose {
			c.Log = testLogger(t, c.NodeName)
		}
		if i < 3 {
			m := string(rune('a' + i))
			c.Role = "ControlPlane"
			c.Names = []string{"api.internal." + cluster, "etcd-" + m + ".internal." + cluster, "etcd-events-" + m + ".internal." + cluster}
		}
		cfgs[i] = c
		if i < n {
			seeds = append(seeds, net.JoinHostPort(ip.String(), strconv.Itoa(c.Port)))
			wantNames += 1 + len(c.Names)
		}
	}
	// Every agent gets every address, as EC2Seeds would list every instance.
	agents := make([]*Agent, 0, n+1)
	var stopOnce sync.Once
	stopAll := func() {
		stopOnce.Do(func() {
			var wg sync.WaitGroup
			for _, a := range agents {
				wg.Add(1)
				go func() { defer wg.Done(); a.halt() }()
			}
			wg.Wait()
		})
	}
	t.Cleanup(stopAll)

	startCPU := cpuTime()
	for i := range n {
		cfgs[i].Seeds = StaticSeeds(seeds)
		a, err := Start(t.Context(), cfgs[i])
		if err != nil {
			t.Fatalf("start agent %d: %v", i, err)
		}
		agents = append(agents, a)
		if *scaleBatch > 0 && (i+1)%*scaleBatch == 0 && i+1 < n {
			time.Sleep(time.Second)
		}
	}
	started := time.Now()
	converge := waitForScale(t, 120*time.Second, "every agent has every record", func() error {
		for i, a := range agents {
			if m, names := a.aliveRecords(); m != n || names != wantNames {
				return fmt.Errorf("agent %d: %d/%d members, %d/%d names; view by state %v; memberlist counts %d alive",
					i, m, n, names, wantNames, a.viewStates(), a.ml.NumMembers())
			}
		}
		return nil
	}, started, func() {
		a := agents[0]
		a.mu.Lock()
		var dead []string
		for name, v := range a.view {
			if v.State != StateAlive {
				dead = append(dead, name)
			}
		}
		a.mu.Unlock()
		for _, name := range dead {
			for j, c := range cfgs[:n] {
				if c.NodeName == name {
					m, _ := agents[j].aliveRecords()
					t.Logf("agent 0 has %s dead; that agent sees %d alive, status %+v", name, m, agents[j].Status())
				}
			}
		}
	})
	convergeCPU := cpuTime() - startCPU
	t.Logf("N=%d converge after simultaneous start: %v (CPU %v)", n, converge, convergeCPU)

	// Let join-time push/pulls and gossip queues drain before measuring.
	time.Sleep(5 * time.Second)
	var sent0 uint64
	for _, a := range agents {
		sent0 += a.tr.sent.Load()
	}
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(*scaleWindow)
	var sent1 uint64
	for _, a := range agents {
		sent1 += a.tr.sent.Load()
	}
	cpu1, el := cpuTime(), time.Since(t0)
	bps := float64(sent1-sent0) / float64(n) / el.Seconds()
	cpuPct := 100 * float64(cpu1-cpu0) / float64(n) / float64(el)
	t.Logf("N=%d steady state over %v: %.0f B/s sent per agent, CPU %.3f%% of a core per agent (%.0f%% total)",
		n, el.Round(time.Second), bps, cpuPct, cpuPct*float64(n))

	// A new node joins: its records everywhere.
	last := cfgs[n]
	last.Seeds = StaticSeeds(seeds)
	t1 := time.Now()
	newcomer, err := Start(t.Context(), last)
	if err != nil {
		t.Fatal(err)
	}
	agents = append(agents, newcomer)
	join := waitForScale(t, 60*time.Second, "newcomer known by all", func() error {
		for i, a := range agents {
			if v, ok := a.memberView(last.NodeName); !ok || v.State != StateAlive {
				return fmt.Errorf("agent %d does not know the newcomer", i)
			}
		}
		return nil
	}, t1)
	t.Logf("N=%d join of one node known by all: %v", n, join)

	// A readiness change.
	t2 := time.Now()
	agents[0].SetReady(true)
	ready := waitForScale(t, 60*time.Second, "ready flag everywhere", func() error {
		for i, a := range agents {
			if v, _ := a.memberView(cfgs[0].NodeName); !v.Ready {
				return fmt.Errorf("agent %d has node 0 not ready", i)
			}
		}
		return nil
	}, t2)
	t.Logf("N=%d SetReady seen by all: %v", n, ready)

	// A crash: no leave message.
	victim := n / 2
	t3 := time.Now()
	agents[victim].halt()
	fail := waitForScale(t, 60*time.Second, "failure known by all", func() error {
		for i, a := range agents {
			if i == victim {
				continue
			}
			if v, _ := a.memberView(cfgs[victim].NodeName); v.State == StateAlive {
				return fmt.Errorf("agent %d still has the victim alive", i)
			}
		}
		return nil
	}, t3)
	t.Logf("N=%d hard kill known dead by all: %v", n, fail)

	stopAll()
	fmt.Printf("SCALE N=%d converge=%v join=%v ready=%v fail=%v steady=%.0fB/s/agent cpu=%.3f%%/agent window=%v\n",
		n, converge.Round(10*time.Millisecond), join.Round(10*time.Millisecond), ready.Round(10*time.Millisecond),
		fail.Round(10*time.Millisecond), bps, cpuPct, el.Round(time.Second))
	if b, ok := t.(*testing.B); ok {
		b.ReportMetric(converge.Seconds(), "converge-s")
		b.ReportMetric(join.Seconds(), "join-s")
		b.ReportMetric(fail.Seconds(), "dead-known-s")
		b.ReportMetric(bps, "B/s/agent")
		b.ReportMetric(cpuPct, "cpu%/agent")
	}
}

// waitForScale polls less often than waitFor: one check walks N agents.
func waitForScale(t testing.TB, timeout time.Duration, what string, cond func() error, since time.Time, onFail ...func()) time.Duration {
	t.Helper()
	var err error
	for time.Since(since) < timeout {
		if err = cond(); err == nil {
			return time.Since(since)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, f := range onFail {
		f()
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}
