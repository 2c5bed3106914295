package gossip

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/internal/netns"
)

var (
	scaleSizes    = flag.String("scale.n", "100,500,1000", "ring sizes for BenchmarkRing: N[/k][@B] runs N agents with every timer dilated k times (Tuning.Dilation), started B a (dilated) second (@B overrides -scale.batch)")
	scaleNoForm   = flag.Bool("scale.noformation", false, "skip the formation exchanges (formation), to compare")
	scaleRepeat   = flag.Int("scale.repeat", 1, "runs of each size; each figure's median (over the runs not CPU-BOUND, if any) is reported and compared, the worst printed beside it")
	scaleWindow   = flag.Duration("scale.window", 30*time.Second, "steady-state measuring window")
	scaleProtoWin = flag.Bool("scale.protocolwindow", false, "make -scale.window protocol time (k times as long in real time), so that a dilated run's window holds as many probe rounds and collections as the undilated one's")
	scaleBatch    = flag.Int("scale.batch", 0, "start agents in batches of this many, 1s (dilated) apart (0: all at once); N@B in -scale.n sets it for one size")
	scaleTrace    = flag.Bool("scale.trace", false, "print the ring's convergence every 500ms while it forms")
	scaleFormOnly = flag.Bool("scale.formonly", false, "stop each run once the ring has formed: print a FORMED line with the convergence time and CPU (for studying the formation; no SCALE line)")
	scaleDrainMax = flag.Duration("scale.drainmax", 12*time.Minute, "longest wait (real time) for the formation's re-gossip queues to drain before the steady-state figures")
	scaleMemLimit = flag.Int64("scale.memlimit", 4<<30, "the ring process's Go memory limit in bytes (N=2000 holds ~5 GB live while forming)")
	scaleTuning   = flag.String("scale.tuning", "", "memberlist overrides for BenchmarkRing, e.g. probe=1s,timeout=800ms,susp=4,packet=1400; empty = DefaultTuning")
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
		case "packet":
			tu.PacketBytes, err = strconv.Atoi(v)
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
// (127.88.x.y), with the default tuning unless -scale.tuning says otherwise:
//   - converge: from the last Start until every agent has every member's records
//     (-scale.batch starts agents that many a second, as an Auto Scaling launch
//     does; 0 starts them all at once);
//   - join: a new agent's records reach every agent;
//   - ready: a SetReady reaches every agent;
//   - fail: a hard-killed agent is known dead by every agent;
//   - steady bandwidth: bytes sent per agent per second, counted by the transport,
//     and CPU per agent (getrusage), over -scale.window with no changes, once the
//     gossip queues left by the formation have drained.
//
// Each size runs in a child process in a network namespace of its own (see
// runScaleInNetns). All agents share that process, so the figures include the
// CPU contention of N agents on this machine's cores, which a real node does not
// have; -scale.trace prints the ring's shape twice a second while it forms.
//
// Each size is one run whatever b.N is (a ring takes minutes to measure); the
// figures are reported as metrics and printed on a SCALE line:
//
//	go test -run '^$' -bench BenchmarkRing -benchtime 1x -scale.n 100,500,1000 -scale.batch 10 -timeout 30m ./gossip/
func BenchmarkRing(b *testing.B) {
	inNetns := os.Getenv(scaleNetnsMarker) != ""
	if inNetns {
		raiseNoFile(b)
		// N agents share one heap here, so the collector walks all N agents'
		// state on every cycle: a quarter of the ring's CPU at N=300 with the
		// default GOGC, and its pauses stall every agent at once. A real node
		// collects only its own agent's few MiB (see BenchmarkRingProcesses).
		// The limit keeps N=1000 (~1.2 GB live while forming) within a few GB
		// of this shared machine (-scale.memlimit raises it for N=2000).
		debug.SetGCPercent(400)
		debug.SetMemoryLimit(*scaleMemLimit)
	}
	var results []ringResult
	for _, f := range strings.Split(*scaleSizes, ",") {
		sz, err := parseScaleSize(f, *scaleBatch)
		if err != nil {
			b.Fatalf("-scale.n: %v", err)
		}
		name := fmt.Sprintf("N=%d", sz.n)
		if sz.k != 1 {
			name += fmt.Sprintf("/k=%g", sz.k)
		}
		if sz.batch > 0 {
			name += fmt.Sprintf("/batch=%d", sz.batch)
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				if inNetns {
					runScale(b, sz)
				} else {
					results = append(results, runScaleInNetns(b, sz))
				}
			}
		})
	}
	if !inNetns {
		for _, line := range compareDilation(results) {
			fmt.Println(line)
		}
	}
}

// scaleSize is one entry of -scale.n.
type scaleSize struct {
	n     int
	k     float64 // every timer ×k
	batch int     // agents started per dilated second; 0: all at once
}

func (s scaleSize) String() string {
	out := fmt.Sprintf("%d/%g", s.n, s.k)
	if s.batch > 0 {
		out += fmt.Sprintf("@%d", s.batch)
	}
	return out
}

// parseScaleSize reads one entry of -scale.n: "N", "N/k", "N@B" or "N/k@B";
// without @B the batch is def (-scale.batch).
func parseScaleSize(f string, def int) (scaleSize, error) {
	f = strings.TrimSpace(f)
	sz := scaleSize{k: 1, batch: def}
	rest, bs, batched := strings.Cut(f, "@")
	ns, ks, dilated := strings.Cut(rest, "/")
	var err error
	if sz.n, err = strconv.Atoi(ns); err != nil || sz.n < 2 {
		return sz, fmt.Errorf("size %q: want N ≥ 2, N/k, N@B or N/k@B", f)
	}
	if dilated {
		if sz.k, err = strconv.ParseFloat(ks, 64); err != nil || sz.k < 1 {
			return sz, fmt.Errorf("size %q: dilation k must be a number ≥ 1", f)
		}
	}
	if batched {
		if sz.batch, err = strconv.Atoi(bs); err != nil || sz.batch < 1 {
			return sz, fmt.Errorf("size %q: batch B must be a whole number ≥ 1", f)
		}
	}
	return sz, nil
}

// scaleNetnsMarker tells a re-executed test binary that it runs in its own
// network namespace.
const scaleNetnsMarker = "GOSSIP_SCALE_NETNS"

// runScaleInNetns re-runs this benchmark for one size in a new network namespace
// and reports the child's figures. N agents that all talk to each other make N²
// UDP flows: in a namespace where connection tracking is on (the host's, on most
// machines, with its default table of 262,144 entries), N=1000 fills the table and
// the kernel drops packets, which the ring sees as failures. A real node has N
// flows, not N², and a fresh namespace tracks nothing. The child also has a
// process of its own, so its CPU figure counts only the agents.
func runScaleInNetns(b *testing.B, sz scaleSize) ringResult {
	res := ringResult{size: sz}
	for run := range max(1, *scaleRepeat) {
		r := runScaleChild(b, sz)
		if r.figures == nil { // -scale.formonly
			continue
		}
		res.runs = append(res.runs, r)
		if *scaleRepeat > 1 {
			fmt.Printf("SCALE-RUN %d/%d N=%s %s%s\n", run+1, *scaleRepeat, sz, formatFigures(r.figures), cpuBoundMark(r.cpuBound))
		}
	}
	if len(res.runs) == 0 {
		return res
	}
	median, used := res.median()
	for unit, v := range median {
		b.ReportMetric(v, unit)
	}
	if *scaleRepeat > 1 {
		fmt.Printf("SCALE-MEDIAN of %d runs (%d CPU-BOUND, %s) N=%s %s\n", len(res.runs), res.cpuBound(), used, sz, formatFigures(median))
		fmt.Printf("SCALE-WORST of %d runs N=%s %s\n", len(res.runs), sz, formatFigures(res.worst()))
	}
	return res
}

func cpuBoundMark(bound bool) string {
	if bound {
		return " CPU-BOUND"
	}
	return ""
}

// ringRun is the figures of one run of one size, projected to real time.
type ringRun struct {
	figures  map[string]float64 // by unit, see parseScaleLine
	cpuBound bool               // a stall reached half the dilated probe timeout
}

// ringResult is every run of one size.
type ringResult struct {
	size scaleSize
	runs []ringRun
}

func (r ringResult) cpuBound() (n int) {
	for _, run := range r.runs {
		if run.cpuBound {
			n++
		}
	}
	return n
}

// median is each figure's median over the runs that were not CPU-bound (a
// starved run measures this machine, not the ring), or over all runs when
// every one was; used says which.
func (r ringResult) median() (med map[string]float64, used string) {
	runs := slices.DeleteFunc(slices.Clone(r.runs), func(run ringRun) bool { return run.cpuBound })
	used = "median of the runs not CPU-BOUND"
	if len(runs) == 0 {
		runs, used = r.runs, "every run CPU-BOUND: the median measures this machine"
	}
	med = map[string]float64{}
	for unit := range runs[0].figures {
		var vs []float64
		for _, run := range runs {
			vs = append(vs, run.figures[unit])
		}
		slices.Sort(vs)
		if len(vs)%2 == 1 {
			med[unit] = vs[len(vs)/2]
		} else {
			med[unit] = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
		}
	}
	return med, used
}

func (r ringResult) worst() map[string]float64 {
	out := map[string]float64{}
	for _, run := range r.runs {
		for unit, v := range run.figures {
			out[unit] = max(out[unit], v)
		}
	}
	return out
}

// dilationTolerance is how far a dilated run's projection may be from the
// undilated run of the same ring for the method to hold (the 20 %).
const dilationTolerance = 0.20

// figure is one figure that a dilated projection must reproduce: its unit
// (the key in ringRun.figures), its name and how it prints.
type figure struct{ unit, name, format string }

// compareFigures are the figures of an in-process ring, in the order printed.
var compareFigures = []figure{
	{"converge-s", "converge", "%.2fs"},
	{"join-s", "join", "%.2fs"},
	{"ready-s", "ready", "%.2fs"},
	{"dead-known-s", "dead", "%.2fs"},
	{"B/s/agent", "bytes", "%.0fB/s"},
	{"cpu%/agent", "cpu", "%.3f%%"},
	{"cpu-agents%/agent", "cpu outside the collector", "%.3f%%"},
}

// compareDilation is compareRuns for BenchmarkRing's COMPARE lines.
func compareDilation(results []ringResult) []string {
	return compareRuns("COMPARE", compareFigures, results)
}

// compareRuns sets each dilated ring beside the undilated run of the same N
// and batch: per figure both medians, the difference relative to the
// undilated one and whether it is within dilationTolerance. A size with no
// undilated run in the same invocation has nothing to compare with.
func compareRuns(prefix string, figures []figure, results []ringResult) []string {
	type key struct{ n, batch int }
	undilated := map[key]ringResult{}
	for _, r := range results {
		if r.size.k == 1 && len(r.runs) > 0 {
			undilated[key{r.size.n, r.size.batch}] = r
		}
	}
	var lines []string
	for _, d := range results {
		u, ok := undilated[key{d.size.n, d.size.batch}]
		if d.size.k == 1 || !ok || len(d.runs) == 0 {
			continue
		}
		um, uUsed := u.median()
		dm, dUsed := d.median()
		start := "all started at once"
		if d.size.batch > 0 {
			start = fmt.Sprintf("started %d per (dilated) second in both", d.size.batch)
		}
		var parts []string
		fails := 0
		for _, f := range figures {
			uv, dv := um[f.unit], dm[f.unit]
			diff := 0.0
			if uv != 0 {
				diff = (dv - uv) / uv
			} else if dv != 0 {
				diff = 1
			}
			verdict := "within 20 %"
			if diff > dilationTolerance || diff < -dilationTolerance {
				verdict, fails = "NOT within 20 %", fails+1
			}
			parts = append(parts, fmt.Sprintf("%s "+f.format+" / "+f.format+" (%+.0f%%, %s)", f.name, uv, dv, 100*diff, verdict))
		}
		summary := "the projection holds for every figure"
		if fails > 0 {
			summary = fmt.Sprintf("%d of %d figures NOT within 20 %%", fails, len(figures))
		}
		lines = append(lines, fmt.Sprintf(prefix+" N=%d (%s) undilated / k=%g projected, medians of %d / %d runs (%d / %d CPU-BOUND; %s / %s): %s — %s",
			d.size.n, start, d.size.k, len(u.runs), len(d.runs), u.cpuBound(), d.cpuBound(), uUsed, dUsed, strings.Join(parts, "; "), summary))
	}
	return lines
}

func formatFigures(m map[string]float64) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s=%.3g", k, m[k]))
	}
	return strings.Join(out, " ")
}

// runScaleChild is one run of one size in a fresh network namespace.
func runScaleChild(b *testing.B, sz scaleSize) ringRun {
	if why := netns.Available(); why != "" {
		b.Fatal(why)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		b.Fatal("needs unshare (util-linux) for a private network namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"--net", "--", "sh", "-c", `ip link set lo up && exec "$@"`, "sh", exe,
		"-test.run=^$", "-test.bench=^BenchmarkRing$", "-test.benchtime=1x", "-test.timeout=0",
		"-scale.n=" + sz.String()}
	flag.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, "scale.") && f.Name != "scale.n" && f.Name != "scale.repeat" && f.Name != "scale.batch" || f.Name == "gossip.log" {
			args = append(args, "-"+f.Name+"="+f.Value.String())
		}
	})
	// The ring's packets go through its namespace's loopback, whose receive
	// backlog is this machine's, shared by N agents.
	netns.RaiseBacklog(b, sz.n)
	drops0 := backlogDrops(b)
	cmd := exec.CommandContext(b.Context(), "unshare", args...)
	cmd.Env = append(os.Environ(), scaleNetnsMarker+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var run ringRun
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if !childHeader(line) {
			fmt.Println(line)
		}
		if m, ok := parseScaleLine(line); ok {
			run = ringRun{figures: m, cpuBound: strings.Contains(line, "CPU-BOUND")}
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("ring of %d in its own network namespace: %v", sz.n, err)
	}
	fmt.Printf("RING-BACKLOG N=%d k=%g: %d packets dropped by full receive backlogs during the run\n", sz.n, sz.k, backlogDrops(b)-drops0)
	if run.figures == nil && !*scaleFormOnly {
		b.Fatalf("ring of %d: the child printed no SCALE line", sz.n)
	}
	return run
}

// childHeader tells the child's own benchmark framing (goos, pkg, its Benchmark
// and PASS lines), which the parent prints again for itself.
func childHeader(line string) bool {
	for _, p := range []string{"goos:", "goarch:", "pkg:", "cpu:", "Benchmark", "PASS"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// parseScaleLine reads the figures back from a SCALE line (see runScale).
func parseScaleLine(line string) (map[string]float64, bool) {
	if !strings.HasPrefix(line, "SCALE ") {
		return nil, false
	}
	units := map[string]string{"converge": "converge-s", "join": "join-s", "ready": "ready-s", "fail": "dead-known-s",
		"steady": "B/s/agent", "cpu": "cpu%/agent", "cpu-gc": "cpu-gc%/agent", "regossip": "regossip-s", "stall": "stall-s"}
	out := map[string]float64{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		unit, ok := units[k]
		if !ok {
			continue
		}
		v = strings.TrimSuffix(strings.TrimSuffix(v, "B/s/agent"), "%/agent")
		if d, err := time.ParseDuration(v); err == nil {
			out[unit] = d.Seconds()
		} else if x, err := strconv.ParseFloat(v, 64); err == nil {
			out[unit] = x
		}
	}
	if len(out) != len(units) {
		return out, false
	}
	// The agents' own CPU: what is left once the shared heap's collections
	// are taken out (see collectorCPU).
	out["cpu-agents%/agent"] = out["cpu%/agent"] - out["cpu-gc%/agent"]
	return out, true
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

// queuedBroadcasts is the length of memberlist's own broadcast queue (alive,
// suspect and dead messages still to be re-gossiped). memberlist keeps the
// queue unexported and reports it only as a go-metrics sample every
// QueueCheckInterval, process-wide; the benchmark reads it directly.
func (a *Agent) queuedBroadcasts() int {
	f := reflect.ValueOf(a.ml).Elem().FieldByName("broadcasts")
	return (*memberlist.TransmitLimitedQueue)(f.UnsafePointer()).NumQueued()
}

func anyForming(agents []*Agent) bool {
	return slices.ContainsFunc(agents, func(a *Agent) bool { return a.forming.Load() })
}

// totalQueued sums queuedBroadcasts over a ring.
func totalQueued(agents []*Agent) (sum int) {
	for _, a := range agents {
		sum += a.queuedBroadcasts()
	}
	return sum
}

// windowProfile writes a CPU profile of the steady-state window alone to
// $GOSSIP_WINDOW_CPUPROFILE-<name>.pprof when that is set (the ring runs in a
// child process, whose window the parent's -cpuprofile cannot see).
func windowProfile(t testing.TB, name string) (stop func()) {
	base := os.Getenv("GOSSIP_WINDOW_CPUPROFILE")
	if base == "" {
		return func() {}
	}
	f, err := os.Create(base + "-" + name + ".pprof")
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}
}

// startOffsets is when each of n agents starts, from the first start: batch
// after batch every batchEvery (batch 0: all in one), each agent of a batch at
// a uniformly random moment within phase of its batch's start, in order.
func startOffsets(n, batch int, batchEvery, phase time.Duration) []time.Duration {
	if batch <= 0 {
		batch = n
	}
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i/batch)*batchEvery + rand.N(phase)
	}
	for b := 0; b < n; b += batch {
		slices.Sort(out[b:min(b+batch, n)])
	}
	return out
}

// collectorCPU is the CPU the Go runtime has spent collecting and returning
// memory (runtime/metrics' gc and scavenge classes; the runtime's estimates).
// In the ring's process that work is over one heap shared by N agents: a
// collection marks every agent's state, and the periodic one (every two
// minutes of real time, whatever k) does not dilate.
func collectorCPU() time.Duration {
	samples := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/cpu/classes/scavenge/total:cpu-seconds"}}
	metrics.Read(samples)
	var sum float64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindFloat64 {
			sum += s.Value.Float64()
		}
	}
	return time.Duration(sum * float64(time.Second))
}

// switches is the process's voluntary and involuntary context switches.
func switches() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Nvcsw + ru.Nivcsw
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runScale measures one ring of n agents whose timers are all dilated k
// times. Every wait of the measurement is dilated with them, and each figure is
// projected back to real time: durations ÷ k, bytes and CPU per second × k (the
// same work done k times faster). The SCALE line holds the projected figures; a
// DILATED line beside it the measured ones and the durations in protocol
// periods (probe intervals).
func runScale(t testing.TB, sz scaleSize) {
	n, k := sz.n, sz.k
	tune := parseTuning(t, *scaleTuning)
	if tune == nil {
		tune = &Tuning{}
	}
	tune.Dilation = k
	if *scaleNoForm {
		saved := formation
		formation.Waits = nil
		t.Cleanup(func() { formation = saved })
	}
	dil := func(d time.Duration) time.Duration { return time.Duration(float64(d) * k) }
	period := dil(tune.withDefaults().ProbeInterval)
	// Every wait polls at the same resolution in protocol time, 20 ms
	// projected, so that undilated and dilated figures are read alike (a fixed
	// 100 ms poll was a fifth of a probe period undilated but 3 ms at k=32).
	poll := dil(20 * time.Millisecond)
	key := []byte("0123456789abcdef")
	cluster := "scale.k8s.local"
	const newcomers = 3
	cfgs := make([]Config, n+newcomers) // the last ones join later, one at a time
	var seeds []string
	wantNames := 0
	for i := range cfgs {
		ip := scaleIP(i)
		c := Config{
			ClusterName: cluster, NodeName: fmt.Sprintf("ip-127-88-%d-%d.internal", i/250, i%250+1),
			BindIP: ip, Port: freePort(t, ip), SecretKey: key, Role: "Node", Log: discardLogger(),
			Tuning: tune,
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
	agents := make([]*Agent, 0, n+newcomers)
	var agentsMu sync.Mutex // agents grows while traceConvergence reads it
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

	// The watch's own wake-ups are dilated like every other timer: undilated
	// they would be a fixed cost that the projection multiplies by k.
	stalls := watchStalls(t, dil(20*time.Millisecond))
	startCPU, firstStart := cpuTime(), time.Now()
	traceDone := make(chan struct{})
	if *scaleTrace {
		go traceConvergence(&agents, &agentsMu, firstStart, traceDone)
	}
	// memberlist's tickers tick from the moment it is created (its random
	// stagger only delays the first tick read, v0.7.0 state.go), so agents
	// created in the same instant gossip in lockstep, and news waits a whole
	// interval at every hop. Creating N agents takes the same real time at every
	// k, which spreads the phases over a gossip interval undilated but not at
	// k=32. Booting nodes have independent phases: each agent here starts at a
	// random moment within one (dilated) gossip interval of its batch's start
	// (all at once: of the first start).
	offsets := startOffsets(n, sz.batch, dil(time.Second), dil(tune.withDefaults().GossipInterval))
	for i := range n {
		// A launch schedule, not a wait for a condition: the agent starts at its
		// offset (at once if starting the ones before it took longer).
		if d := time.Until(firstStart.Add(offsets[i])); d > 0 {
			time.Sleep(d)
		}
		cfgs[i].Seeds = StaticSeeds(seeds)
		a, err := Start(t.Context(), cfgs[i])
		if err != nil {
			t.Fatalf("start agent %d: %v", i, err)
		}
		agentsMu.Lock()
		agents = append(agents, a)
		agentsMu.Unlock()
	}
	started := time.Now()
	startSpan := started.Sub(firstStart)
	converge := waitForScaleEvery(t, poll, dil(120*time.Second), "every agent has every record", func() error {
		for i, a := range agents {
			if m, names := a.aliveRecords(); m != n || names != wantNames {
				var missing []string
				for _, c := range cfgs[:n] {
					if v, ok := a.memberView(c.NodeName); !ok || v.State != StateAlive {
						missing = append(missing, fmt.Sprintf("%s(%v,%s)", c.NodeName, ok, v.State))
					}
				}
				return fmt.Errorf("agent %d: %d/%d members, %d/%d names; view by state %v; memberlist counts %d alive; missing %v",
					i, m, n, names, wantNames, a.viewStates(), a.ml.NumMembers(), missing[:min(len(missing), 5)])
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
	close(traceDone)
	convergeCPU := cpuTime() - startCPU
	t.Logf("N=%d converged %v after the last start (CPU %v since the first)", n, converge, convergeCPU)
	if *scaleFormOnly {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("FORMED N=%d k=%g batch=%d converge=%v (projected %v, %.1f probe periods; starting took %v) cpu=%v (%.2f cores while forming) heap=%dMiB queued=%d stall=%v%s\n",
			n, k, sz.batch, converge.Round(10*time.Millisecond), time.Duration(float64(converge)/k).Round(10*time.Millisecond),
			float64(converge)/float64(period), startSpan.Round(time.Millisecond), convergeCPU.Round(time.Second), float64(convergeCPU)/float64(time.Since(firstStart)),
			ms.HeapAlloc>>20, totalQueued(agents), stalls.max().Round(time.Millisecond), stalls.verdict(dil(tune.withDefaults().ProbeTimeout)))
		return
	}

	// A node's formation exchanges (formationSync) go on for a few rounds after
	// its view is whole: full-state exchanges, not the steady state either.
	// Every member a node learns (by gossip or a full-state exchange) is queued
	// for re-gossip RetransmitMult·ceil(log10(N+1)) times, so a ring that just
	// formed at once carries N² such sends: a backlog of minutes at N=1000, during
	// which fresh news waits behind it. The steady state starts when memberlist's
	// own broadcast queues are empty; join, readiness and death are measured
	// after that (or, past -scale.drainmax, with the backlog named on the lines).
	totalSent := func() (sum uint64) {
		for _, a := range agents {
			sum += a.tr.sent.Load()
		}
		return sum
	}
	drainStart, sentAtConverge := time.Now(), totalSent()
	queuedAtConverge := totalQueued(agents)
	drained := func(context.Context) (bool, error) { return totalQueued(agents) <= n/100 && !anyForming(agents), nil }
	// Past the deadline the lines below name the backlog (UNDRAINED) instead.
	_ = wait.PollUntilContextTimeout(context.Background(), min(dil(time.Second), 10*time.Second), *scaleDrainMax, true, drained)
	drain := time.Since(drainStart)
	regossipBytes := float64(totalSent()-sentAtConverge) / float64(n)
	undrained := ""
	if queued := totalQueued(agents); queued > n/100 || anyForming(agents) {
		undrained = fmt.Sprintf(" UNDRAINED (%d messages still queued after %v: join, ready and fail were measured behind the re-gossip)", queued, drain.Round(time.Second))
	}
	t.Logf("N=%d re-gossip queues: %d messages queued at convergence, waited %v; %.0f B per agent sent meanwhile%s",
		n, queuedAtConverge, drain.Round(time.Second), regossipBytes, undrained)
	sent0 := totalSent()
	stopProfile := windowProfile(t, fmt.Sprintf("N%d-k%g", n, k))
	sw0 := switches()
	cpu0, gc0, t0 := cpuTime(), collectorCPU(), time.Now()
	// The measuring window (not a wait for a condition): bytes and CPU are
	// counted over it, at least four probe periods so every agent's probes are in.
	// A window of real time holds k times fewer rounds (and collections, which
	// come whole or not at all) when dilated: -scale.protocolwindow evens that out.
	window := *scaleWindow
	if *scaleProtoWin {
		window = dil(window)
	}
	time.Sleep(max(window, 4*period))
	sent1 := totalSent()
	cpu1, gc1, el := cpuTime(), collectorCPU(), time.Since(t0)
	stopProfile()
	// Context switches over the window, projected like CPU (×k): where the
	// projected CPU exceeds the undilated one, they show whether each event
	// costs more when events are sparse (a thread woken per event instead of
	// several events per wake-up).
	sw := switches() - sw0
	t.Logf("N=%d k=%g over the window: %.0f context switches a second, projected %.0f (%.1f per agent)", n, k,
		float64(sw)/el.Seconds(), float64(sw)/el.Seconds()*k, float64(sw)/el.Seconds()*k/float64(n))
	bps := float64(sent1-sent0) / float64(n) / el.Seconds()
	cpuPct := 100 * float64(cpu1-cpu0) / float64(n) / float64(el)
	gcPct := 100 * float64(gc1-gc0) / float64(n) / float64(el)
	t.Logf("N=%d steady state over %v: %.0f B/s sent per agent, CPU %.3f%% of a core per agent (%.1f%% total, of which the collector and scavenger %.1f%%)",
		n, el.Round(time.Second), bps, cpuPct, cpuPct*float64(n), gcPct*float64(n))

	// New nodes join, one at a time: each one's records everywhere. As with
	// readiness below, the figure is the median of three: one join alone is a
	// few gossip rounds and moves by a round from run to run.
	// An event not seen by all within three times the 5 s target is a
	// failure to explain, not a figure to wait for (dilated, a minute of
	// protocol time is half an hour at k=32).
	eventWait := dil(15 * time.Second)
	var joins []time.Duration
	for _, c := range cfgs[n:] {
		c.Seeds = StaticSeeds(seeds)
		t1 := time.Now()
		newcomer, err := Start(t.Context(), c)
		if err != nil {
			t.Fatal(err)
		}
		agentsMu.Lock()
		agents = append(agents, newcomer)
		agentsMu.Unlock()
		// When each agent first had it, to tell how the news spread (the
		// poll's resolution): the quartiles, projected.
		learned := map[*Agent]time.Duration{}
		joins = append(joins, waitForScaleEvery(t, poll, eventWait, "newcomer "+c.NodeName+" known by all", func() error {
			var err error
			for i, a := range agents {
				if _, done := learned[a]; done {
					continue
				}
				if v, ok := a.memberView(c.NodeName); ok && v.State == StateAlive {
					learned[a] = time.Since(t1)
				} else if err == nil {
					err = fmt.Errorf("agent %d does not know the newcomer", i)
				}
			}
			return err
		}, t1))
		spread := slices.Sorted(maps.Values(learned))
		q := func(f float64) time.Duration {
			return time.Duration(float64(spread[int(f*float64(len(spread)-1))]) / k).Round(time.Millisecond)
		}
		t.Logf("N=%d newcomer %s known (projected) by a quarter of the ring after %v, half %v, three quarters %v, all %v",
			n, c.NodeName, q(0.25), q(0.5), q(0.75), q(1))
	}
	slices.Sort(joins)
	join := joins[len(joins)/2]
	t.Logf("N=%d joins of one node known by all: %v (median %v)", n, joins, join)

	// Readiness changes: ready, not ready, ready again. Each is known by all
	// a whole number of gossip rounds after it is made, so one change alone
	// moves by a round (a quarter of the figure) from run to run; the figure
	// is the median of the three.
	var readies []time.Duration
	for _, want := range []bool{true, false, true} {
		t2 := time.Now()
		agents[0].SetReady(want)
		readies = append(readies, waitForScaleEvery(t, poll, eventWait, fmt.Sprintf("ready=%v everywhere", want), func() error {
			for i, a := range agents {
				if v, _ := a.memberView(cfgs[0].NodeName); v.Ready != want {
					return fmt.Errorf("agent %d has node 0 ready=%v", i, v.Ready)
				}
			}
			return nil
		}, t2))
	}
	slices.Sort(readies)
	ready := readies[len(readies)/2]
	t.Logf("N=%d readiness changes seen by all: %v (median %v)", n, readies, ready)

	// A crash: no leave message.
	victim := n / 2
	t3 := time.Now()
	agents[victim].halt()
	fail := waitForScaleEvery(t, poll, eventWait, "failure known by all", func() error {
		for i, a := range agents {
			if i == victim {
				continue
			}
			if v, _ := a.memberView(cfgs[victim].NodeName); v.State == StateAlive {
				return fmt.Errorf("agent %d still has the victim alive", i)
			}
		}
		return nil
	}, t3, func() { explainAlive(t, agents, victim, cfgs[victim].NodeName) })
	t.Logf("N=%d hard kill known dead by all: %v", n, fail)

	stopAll()
	real := func(d time.Duration) time.Duration { return time.Duration(float64(d) / k).Round(10 * time.Millisecond) }
	periods := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(period)) }
	fmt.Printf("DILATED N=%d k=%g measured converge=%v join=%v ready=%v fail=%v steady=%.0fB/s/agent cpu=%.3f%%/agent; in probe periods converge=%s join=%s ready=%s fail=%s; stall=%v%s\n",
		n, k, converge.Round(10*time.Millisecond), join.Round(10*time.Millisecond), ready.Round(10*time.Millisecond),
		fail.Round(10*time.Millisecond), bps, cpuPct, periods(converge), periods(join), periods(ready), periods(fail),
		stalls.max().Round(time.Millisecond), stalls.verdict(dil(tune.withDefaults().ProbeTimeout)))
	bound := stalls.verdict(dil(tune.withDefaults().ProbeTimeout))
	if bound != "" {
		bound = " CPU-BOUND"
	}
	fmt.Printf("SCALE N=%d k=%g converge=%v join=%v ready=%v fail=%v steady=%.0fB/s/agent cpu=%.3f%%/agent cpu-gc=%.3f%%/agent window=%v regossip=%v regossip-bytes=%.0fKB/agent queued-at-converge=%d stall=%v batch=%d start=%v%s%s\n",
		n, k, real(converge), real(join), real(ready), real(fail), bps*k, cpuPct*k, gcPct*k, el.Round(time.Second),
		real(drain), regossipBytes/1000, queuedAtConverge, stalls.max().Round(time.Millisecond), sz.batch, startSpan.Round(time.Millisecond), undrained, bound)
	// The parent process reports these figures from this line (runScaleInNetns).
}

// explainAlive logs, for a hard-killed agent still held alive by some agents,
// how many hold it so and what their memberlist makes of it (suspect, alive or
// unknown), with their own broadcast queues and health.
func explainAlive(t testing.TB, agents []*Agent, victim int, name string) {
	var holders []int
	for i, a := range agents {
		if v, _ := a.memberView(name); i != victim && v.State == StateAlive {
			holders = append(holders, i)
		}
	}
	t.Logf("%d of %d agents still have the killed %s alive", len(holders), len(agents)-1, name)
	for _, i := range holders[:min(len(holders), 5)] {
		a := agents[i]
		state := "not a member"
		for _, m := range a.ml.Members() {
			if m.Name == name {
				state = fmt.Sprintf("memberlist state %d (0 alive, 1 suspect)", m.State)
			}
		}
		t.Logf("agent %d (%s): %s; %d broadcasts queued; health score %d; %d members", i, a.cfg.NodeName, state,
			a.queuedBroadcasts(), a.ml.GetHealthScore(), a.ml.NumMembers())
	}
}

// stallWatch measures how late a goroutine that sleeps a tick at a time (20 ms
// of protocol time: 20 ms × k) wakes up: how long the process was kept off the
// CPU (by its own N agents, the collector or other work on the machine). A dilated run is valid only while
// its stalls stay well below the dilated probe timeout: longer, and probes time
// out for want of CPU, not of the protocol, so false deaths and slow formation
// measure this machine rather than the ring.
type stallWatch struct {
	mu      sync.Mutex
	longest time.Duration
}

func watchStalls(t testing.TB, tick time.Duration) *stallWatch {
	w := &stallWatch{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			before := time.Now()
			select {
			case <-done:
				return
			case <-time.After(tick):
			}
			late := time.Since(before) - tick
			w.mu.Lock()
			w.longest = max(w.longest, late)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *stallWatch) max() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.longest
}

// verdict flags a run whose longest stall reached half the probe timeout.
func (w *stallWatch) verdict(probeTimeout time.Duration) string {
	if w.max() >= probeTimeout/2 {
		return fmt.Sprintf(" CPU-BOUND (a stall ≥ half the dilated probe timeout %v: raise k or free the machine)", probeTimeout)
	}
	return ""
}

// waitForScale polls less often than waitFor: one check walks N agents.
func waitForScale(t testing.TB, timeout time.Duration, what string, cond func() error, since time.Time, onFail ...func()) time.Duration {
	t.Helper()
	return waitForScaleEvery(t, 100*time.Millisecond, timeout, what, cond, since, onFail...)
}

// waitForScaleEvery polls every poll (dilated with the ring) until cond holds.
func waitForScaleEvery(t testing.TB, poll, timeout time.Duration, what string, cond func() error, since time.Time, onFail ...func()) time.Duration {
	t.Helper()
	var err error
	ctx, cancel := context.WithDeadline(context.Background(), since.Add(timeout))
	defer cancel()
	if wait.PollUntilContextCancel(ctx, poll, true, func(context.Context) (bool, error) {
		err = cond()
		return err == nil, nil
	}) == nil {
		return time.Since(since)
	}
	for _, f := range onFail {
		f()
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// traceConvergence prints, twice a second, how many members the agents see
// alive (least, median, most) and how many dead entries they hold in total: the
// shape of a start storm, and whether false deaths hold it back.
func traceConvergence(list *[]*Agent, mu *sync.Mutex, since time.Time, done <-chan struct{}) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		mu.Lock()
		agents := slices.Clone(*list)
		mu.Unlock()
		alive := make([]int, len(agents))
		dead := 0
		for i, a := range agents {
			st := a.viewStates()
			alive[i] = st[StateAlive]
			dead += st[StateDead]
		}
		slices.Sort(alive)
		if *verbose {
			for _, a := range agents {
				if st := a.viewStates(); st[StateAlive] == alive[0] && alive[0] < len(agents) {
					fmt.Printf("TRACE %s sees %v, memberlist %d, status %+v\n", a.cfg.NodeName, st, a.ml.NumMembers(), a.Status())
					break
				}
			}
		}
		fmt.Printf("TRACE t=%.1fs agents=%d alive min=%d med=%d max=%d dead-entries=%d queued=%d\n",
			time.Since(since).Seconds(), len(agents), alive[0], alive[len(alive)/2], alive[len(alive)-1], dead, totalQueued(agents))
	}
}
