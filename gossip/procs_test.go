package gossip

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/nodeagent/nodeagent/internal/netns"
)

var (
	procsSizes   = flag.String("procs.n", "200/4@10", "rings of BenchmarkRingProcesses, comma-separated, each N, N/k, N@B or N/k@B as in -scale.n: N agents, one process and network namespace each; every timer ×k (Tuning.Dilation: N processes forming a ring at full speed starve two cores as N in-process agents do; CPU is projected ×k); B started per (dilated) second, all at once without @B; N…:P runs P of the N agents as processes, the measured ones, and the other N−P in one ringhost process hosted by one more namespace (undilated rings larger than two cores can run one process per node)")
	procsWindow  = flag.Duration("procs.window", 30*time.Second, "one steady-state window of BenchmarkRingProcesses, in real time")
	procsWindows = flag.Int("procs.windows", 2, "consecutive steady-state windows of BenchmarkRingProcesses: the figures are the last one's; the earlier ones show whether the formation's gossip had drained")
	procsRepeat  = flag.Int("procs.repeat", 1, "runs of each BenchmarkRingProcesses ring; the figures are medians")
	procsNice    = flag.Int("procs.nice", 10, "niceness of BenchmarkRingProcesses' agents (0: the bench's own)")
	procsTrace   = flag.Duration("procs.trace", 0, "print, this often in real time while a process ring forms, how many hosts files are complete, the least and median nodes they list, and the nodes missing from most of them (0: no trace)")
)

// BenchmarkRingProcesses measures what a node's gossip agent really pays: N
// agents, each a process of its own (the gossip-only program ./internal/ringnode,
// built like nodeagent, running the package's real Agent with the daemon's
// timers, metadata and hosts-file writer) in a network namespace of its own,
// started B a second as an Auto Scaling launch would, each at a random moment
// within one gossip interval of its batch's start (nodes that boot do not tick
// in step; see startOffsets). Once every agent's hosts file lists every node
// and the formation's gossip has had time to drain, it reads each process's
// resident memory (VmRSS, and its parts RssAnon and RssFile) and CPU time
// (utime+stime) from /proc over -procs.windows consecutive windows and prints a
// PROCS line: mean and worst of each per process, over the last window. Like
// BenchmarkRing's N/k, every timer is dilated k times and CPU and the
// convergence time are projected back (×k, ÷k); memory is what it is. A ring
// run both undilated and dilated gets a PROCS-COMPARE line, as BenchmarkRing's
// COMPARE: here the processes are as sparse as real nodes, so the CPU must
// project too. A run during which this machine's cores were busy
// procsBusyLimit of the time is marked CPU-BOUND: its agents waited for CPU,
// so its times measure the machine, not the ring. The whole node daemon, which
// runs this agent among everything else, is measured by the daemon's own
// benchmark, not here.
//
// A ring larger than this machine can run as one process per node, undilated,
// is run as N@B:P: P measured processes among N−P agents that one ringhost
// process runs in one more namespace (startRingHost). Their CPU per process,
// fitted against N over the run's undilated rings (PROCS-BYN), estimates
// what a dilated ring larger than all of them would use undilated.
//
//	flock /tmp/nodeagent-e2e.lock go test -run '^$' -bench BenchmarkRingProcesses -benchtime 1x ./gossip/ -procs.n 200@10,200/4@10,500@3:10
func BenchmarkRingProcesses(b *testing.B) {
	if why := netns.Available(); why != "" {
		b.Fatal(why)
	}
	progs := ringPrograms{node: buildRingNode(b)}
	st, err := os.Stat(progs.node)
	if err != nil {
		b.Fatal(err)
	}
	progs.nodeSize = st.Size()
	var results, hosted []ringResult
	for _, f := range strings.Split(*procsSizes, ",") {
		sz, err := parseProcsSize(f)
		if err != nil {
			b.Fatalf("-procs.n: %v", err)
		}
		if sz.measured > netns.Max-1 {
			b.Fatalf("-procs.n %s: a lab holds at most %d nodes", sz, netns.Max)
		}
		if sz.hosted() > 0 && progs.host == "" {
			progs.host = buildRingProgram(b, "ringhost")
		}
		b.Run(sz.String(), func(b *testing.B) {
			res := ringResult{size: sz.scaleSize}
			for range b.N {
				for range max(1, *procsRepeat) {
					res.runs = append(res.runs, runProcs(b, progs, sz))
				}
			}
			med, used := res.median()
			b.ReportMetric(med["rss-MiB"], "MiB-RSS/proc")
			b.ReportMetric(med["anon-MiB"], "MiB-anon/proc")
			b.ReportMetric(med["file-MiB"], "MiB-file/proc")
			b.ReportMetric(med["cpu%"], "cpu%/proc")
			if len(res.runs) > 1 {
				fmt.Printf("PROCS-MEDIAN %s (%d runs, %s): %s\n", sz, len(res.runs), used, formatProcsFigures(med))
			}
			// A ring with hosted members is compared with nothing: its
			// processes are as sparse, but the host shares their cores.
			if sz.hosted() > 0 {
				hosted = append(hosted, res)
			} else {
				results = append(results, res)
			}
		})
	}
	for _, line := range undilatedCPUByN(append(slices.Clone(results), hosted...)) {
		fmt.Println(line)
	}
	for _, line := range compareRuns("PROCS-COMPARE", procsFigures, results) {
		fmt.Println(line)
	}
	for _, line := range estimateUndilatedCPU(results) {
		fmt.Println(line)
	}
}

// estimateUndilatedCPU gives, for each dilated ring too large to run
// undilated, the CPU per process it would use undilated. Dilated CPU
// over-projects (each sparse event costs a thread wake-up of its own; the
// factor grows with k), so the projection itself is only an upper bound. A
// smaller ring run both undilated and at the same k measures that factor,
// and the estimate divides it out: CPU(N, undilated) ≈ CPU(n, undilated) ×
// CPU(N, k) / CPU(n, k). It assumes the over-projection at one k depends on
// the events' spacing, not on N.
func estimateUndilatedCPU(results []ringResult) []string {
	cpu := func(r ringResult) (float64, bool) {
		if len(r.runs) == 0 {
			return 0, false
		}
		m, _ := r.median()
		v, ok := m["cpu%"]
		return v, ok && v > 0
	}
	var lines []string
	for _, big := range results {
		bigCPU, ok := cpu(big)
		if big.size.k == 1 || !ok {
			continue
		}
		for _, ref := range results {
			refCPU, ok := cpu(ref)
			if ref.size.k != big.size.k || ref.size.n >= big.size.n || !ok {
				continue
			}
			for _, u := range results {
				uCPU, ok := cpu(u)
				if u.size.k != 1 || u.size.n != ref.size.n || !ok {
					continue
				}
				lines = append(lines, fmt.Sprintf("PROCS-ESTIMATE N=%d undilated: cpu per process %.3f%% (= N=%d undilated %.3f%% × N=%d/k=%g %.3f%% ÷ N=%d/k=%g %.3f%%; at k=%g the projection over-states N=%d's CPU %.1f×)",
					big.size.n, uCPU*bigCPU/refCPU, u.size.n, uCPU, big.size.n, big.size.k, bigCPU, ref.size.n, ref.size.k, refCPU, big.size.k, ref.size.n, refCPU/uCPU))
			}
		}
	}
	return lines
}

// procsBusyLimit is the share of this machine's CPU time in use above which a
// process ring's run is CPU-BOUND.
const procsBusyLimit = 0.90

// procsFigures are the figures of a process ring, by unit, as compareRuns sets
// them side by side.
var procsFigures = []figure{
	{"converge-s", "converge", "%.2fs"},
	{"cpu%", "cpu per process", "%.3f%%"},
	{"rss-MiB", "RSS per process", "%.1fMiB"},
	{"anon-MiB", "anonymous RSS per process", "%.1fMiB"},
}

func formatProcsFigures(m map[string]float64) string {
	var parts []string
	for _, f := range procsFigures {
		parts = append(parts, fmt.Sprintf("%s "+f.format, f.name, m[f.unit]))
	}
	return strings.Join(parts, ", ")
}

// runProcs runs one process ring and returns its figures.
func runProcs(b *testing.B, progs ringPrograms, sz procsSize) ringRun {
	n, k, p := sz.n, sz.k, sz.measured
	dil := func(d time.Duration) time.Duration { return time.Duration(float64(d) * k) }
	// A VPC's network: jumbo frames (the agents size their gossip packets from
	// the MTU, as on EC2; the in-process ring's loopback gets the same budget)
	// and no floods.
	// With hosted members, node 0 is the host's and the processes are on
	// nodes 1 to P.
	first := 0
	if sz.hosted() > 0 {
		first = 1
	}
	lab := netns.New(b, fmt.Sprintf("gp%d", os.Getpid()%1000), "10.98.0", p+first, netns.AsVPC())
	var seeds []string
	for _, node := range lab.Nodes[first:] {
		seeds = append(seeds, node.IP.String())
	}
	dir := b.TempDir()
	keyFile := writeRingKey(b, dir, []byte("procs-bench-key0"))
	var host *ringHost
	if sz.hosted() > 0 {
		// The host's agents talk over its namespace's loopback: the
		// backlog serves N agents, not P+1.
		netns.RaiseBacklog(b, n)
		lab.HostRange(0, hostedRange)
		host = startRingHost(b, lab, progs.host, dir, keyFile, sz, seeds)
		seeds = append(seeds, host.addrs...)
	}
	cmds := make([]*exec.Cmd, p)
	defer func() {
		for _, c := range cmds {
			if c != nil {
				if err := c.Process.Kill(); err != nil {
					b.Logf("stop agent %d: %v", c.Process.Pid, err)
				}
				c.Wait() // killed: its exit status says so and nothing else
			}
		}
	}()
	dilation := k
	if k == 1 {
		dilation = 0 // the agent's own default
	}
	// A directory per agent: the agent replaces its hosts file by a rename in
	// the file's directory, and a thousand agents renaming in one directory
	// queue on its lock (seen at N=1000 as agents and the bench stuck in
	// renameat2 and openat).
	hosts := make([]string, p)
	for i := range hosts {
		hosts[i] = filepath.Join(dir, fmt.Sprintf("node-%d", i), "hosts")
	}
	offsets := startOffsets(p, sz.batch, dil(time.Second), dil(DefaultTuning().GossipInterval))
	host0, drops0 := readHostCPU(b), backlogDrops(b)
	start := time.Now()
	if *procsTrace > 0 {
		done := make(chan struct{})
		defer close(done)
		go traceHostsFiles(hosts, n, k, start, *procsTrace, done)
	}
	for i := range p {
		if err := os.Mkdir(filepath.Dir(hosts[i]), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(hosts[i], []byte(hostsPrelude), 0o644); err != nil {
			b.Fatal(err)
		}
		if i%50 == 0 {
			checkMemoryLeft(b, i)
		}
		// A launch schedule: process i starts offsets[i] after the first.
		time.Sleep(time.Until(start.Add(offsets[i])))
		cmds[i] = startInLab(b, lab, first+i, filepath.Join(filepath.Dir(hosts[i]), "stderr"), nil, progs.node, ringNodeArgs{
			name: ringNodeName(first + i), seeds: seeds, hosts: hosts[i],
			router: lab.Router.String(), keyFile: keyFile, dilation: dilation, logLevel: "info",
		}.args()...)
	}
	lastStart := time.Now()
	// Polling N hosts files of N lines is itself work on the shared cores: the
	// wait rereads only the agents not yet complete, and polls less often on
	// large rings.
	poll := 100 * time.Millisecond * time.Duration(max(1, p/250))
	listed := allListEveryNode(hosts, n)
	converge := waitForScaleEvery(b, poll, dil(3*time.Minute), "every process's hosts file lists every node, every hosted agent sees every node", func() error {
		// A ring that does not fit the cores grows its queues while it
		// forms: stop before the OOM killer picks an agent.
		checkMemoryLeft(b, n)
		if err := listed(); err != nil {
			return err
		}
		return host.whole()
	}, lastStart, func() {
		// What the agents saw, and what the machine did meanwhile.
		fmt.Printf("PROCS-LOG N=%d k=%g (not formed): %s\n", n, k, summariseAgentLogs(b, hosts))
		b.Logf("not formed: this machine %.0f %% busy since the first start; %d packets dropped by full receive backlogs",
			100*readHostCPU(b).busySince(host0), backlogDrops(b)-drops0)
	})
	formBusy, formDrops := readHostCPU(b).busySince(host0), backlogDrops(b)-drops0
	b.Logf("%d processes started in %v, converged %v after the last start (%v projected; polled every %v); this machine %.0f %% busy meanwhile",
		p, lastStart.Sub(start).Round(time.Second), converge.Round(time.Millisecond), (converge / time.Duration(k)).Round(10*time.Millisecond), poll, 100*formBusy)
	// A settling period, not a wait for a condition: the formation's gossip
	// queues drain, as in BenchmarkRing, and the windows that follow show
	// whether they had (nothing is asserted on the strength of this sleep).
	time.Sleep(min(dil(20*time.Second), time.Minute))

	var windows []float64
	var cpuPct, rss, anon, file []float64
	var busy float64
	var hostedCPU time.Duration // the host's, over the last window
	for w := range max(1, *procsWindows) {
		cpu0 := make([]time.Duration, p)
		for i, c := range cmds {
			cpu0[i], _ = procStat(b, c.Process.Pid)
		}
		hostCPU0 := host.cpu(b)
		h0, t0 := readHostCPU(b), time.Now()
		// The window: CPU is read at both ends of it.
		time.Sleep(*procsWindow)
		el := time.Since(t0)
		busy = readHostCPU(b).busySince(h0)
		cpuPct, rss, anon, file = make([]float64, p), make([]float64, p), make([]float64, p), make([]float64, p)
		for i, c := range cmds {
			cpu1, m := procStat(b, c.Process.Pid)
			rss[i], anon[i], file[i] = m.RSS, m.Anon, m.File
			cpuPct[i] = 100 * k * float64(cpu1-cpu0[i]) / float64(el)
		}
		windows = append(windows, mean(cpuPct))
		hostedCPU = host.cpu(b) - hostCPU0
		b.Logf("window %d: %.3f %% of a core per process (projected), this machine %.0f %% busy", w+1, mean(cpuPct), 100*busy)
	}
	drops := udpReceiveDrops(b, cmds)
	if line := summariseAgentLogs(b, hosts); line != "" {
		fmt.Printf("PROCS-LOG N=%d k=%g: %s\n", n, k, line)
	}
	windowDrops := backlogDrops(b) - drops0 - formDrops
	bound := busy >= procsBusyLimit || formBusy >= procsBusyLimit
	var ws []string
	for _, w := range windows {
		ws = append(ws, fmt.Sprintf("%.3f%%", w))
	}
	// rss is VmRSS: anon (heap, stacks, runtime: what the agent itself
	// allocates) plus file (the pages of the executable it has touched,
	// shared by every process of one binary) and shared memory.
	fmt.Printf("PROCS N=%d k=%g%s converge=%v rss=%.1fMiB(max %.1f) anon=%.1fMiB(max %.1f) file=%.1fMiB(max %.1f) cpu=%.3f%%(max %.3f) windows=%s×%v host-busy=%.0f%%(forming %.0f%%) udp-rcvbuf-drops=%d(in %d namespaces) backlog-drops=%d(forming %d) binary=%.1fMB%s\n",
		n, k, host.describe(b, hostedCPU, *procsWindow, k), (converge / time.Duration(k)).Round(10*time.Millisecond),
		mean(rss), slices.Max(rss), mean(anon), slices.Max(anon), mean(file), slices.Max(file),
		mean(cpuPct), slices.Max(cpuPct), strings.Join(ws, ","), (*procsWindow).Round(time.Second), 100*busy, 100*formBusy, drops.total, drops.namespaces, windowDrops, formDrops,
		float64(progs.nodeSize)/1e6, cpuBoundMark(bound))
	return ringRun{cpuBound: bound, figures: map[string]float64{
		"converge-s": converge.Seconds() / k,
		"cpu%":       mean(cpuPct),
		"rss-MiB":    mean(rss),
		"anon-MiB":   mean(anon),
		"file-MiB":   mean(file),
	}}
}

// traceHostsFiles prints, every period until done, the shape of a process
// ring's formation as its hosts files show it: how many list every node, the
// least and median they list, and the nodes missing from the most files (a
// straggler no one has heard of, or a few files that lag).
func traceHostsFiles(hosts []string, n int, k float64, start time.Time, period time.Duration, done <-chan struct{}) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	lastDrops, _ := netns.BacklogDrops()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		drops, err := netns.BacklogDrops()
		if err != nil {
			drops = lastDrops // a diagnostic: the bench's own reading at the end fails the run
		}
		// Agents start in order, each once its file exists: the first
		// len(lists) are running.
		var lists []map[string][]string
		for _, h := range hosts {
			raw, err := os.ReadFile(h)
			if err != nil {
				break // not started yet
			}
			lists = append(lists, parseHostsBlock(raw))
		}
		var counts []int
		missing := map[string]int{}
		complete := 0
		for i, listed := range lists {
			counts = append(counts, len(listed))
			if len(listed) == n {
				complete++
				continue
			}
			if len(listed) < len(lists)/2 {
				continue // still joining: what it misses says nothing about the others
			}
			for j := range lists {
				if name := ringNodeName(j); len(listed[name]) == 0 && j != i {
					missing[name]++
				}
			}
		}
		if len(counts) == 0 {
			continue
		}
		slices.Sort(counts)
		type miss struct {
			name  string
			files int
		}
		var worst []miss
		for name, c := range missing {
			worst = append(worst, miss{name, c})
		}
		slices.SortFunc(worst, func(a, b miss) int { return b.files - a.files })
		var top []string
		for _, m := range worst[:min(len(worst), 5)] {
			top = append(top, fmt.Sprintf("%s×%d", m.name, m.files))
		}
		el := time.Since(start)
		fmt.Printf("PROCS-TRACE %v (%v projected): %d/%d files complete; least %d, median %d listed; backlog drops +%d; %d nodes missing somewhere, most: %s\n",
			el.Round(time.Second), time.Duration(float64(el)/k).Round(100*time.Millisecond), complete, len(counts),
			counts[0], counts[len(counts)/2], drops-lastDrops, len(missing), strings.Join(top, " "))
		lastDrops = drops
	}
}

// ringNodeName is the node name of the process ring's agent i.
func ringNodeName(i int) string {
	return fmt.Sprintf("ip-10-98-%d-%d", (10+i)/256, (10+i)%256)
}

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// allListEveryNode holds once every hosts file lists n nodes at the same
// time. Each call rereads only the files that did not yet; once none is left
// it checks them all again, and any that no longer do are pending again.
func allListEveryNode(hosts []string, n int) func() error {
	pending := slices.Clone(hosts)
	full := false
	return func() error {
		var still []string
		var first error
		for _, h := range pending {
			raw, err := os.ReadFile(h)
			if err != nil {
				return err
			}
			if got := len(parseHostsBlock(raw)); got != n {
				still = append(still, h)
				if first == nil {
					first = fmt.Errorf("%s lists %d/%d nodes", filepath.Base(h), got, n)
				}
			}
		}
		if len(still) > 0 {
			pending, full = still, false
			return fmt.Errorf("%d hosts files incomplete, e.g. %w", len(still), first)
		}
		if full {
			return nil
		}
		// Each file was complete when last read: read them all once more.
		pending, full = slices.Clone(hosts), true
		return errors.New("every hosts file has been complete once; checking them all again")
	}
}

// hostCPU is this machine's CPU time from /proc/stat, in ticks.
type hostCPU struct{ total, idle float64 }

// hostProc is this machine's /proc.
func hostProc(t testing.TB) procfs.FS {
	t.Helper()
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func readHostCPU(t testing.TB) hostCPU {
	t.Helper()
	stat, err := hostProc(t).Stat()
	if err != nil {
		t.Fatalf("/proc/stat: %v", err)
	}
	c := stat.CPUTotal // guest and guest_nice are already counted in user and nice
	return hostCPU{
		total: c.User + c.Nice + c.System + c.Idle + c.Iowait + c.IRQ + c.SoftIRQ + c.Steal,
		idle:  c.Idle + c.Iowait,
	}
}

// busySince is the share of every core's time in use between then and h.
func (h hostCPU) busySince(then hostCPU) float64 {
	dt := h.total - then.total
	if dt <= 0 {
		return 0
	}
	return 1 - (h.idle-then.idle)/dt
}

// checkMemoryLeft stops the run before this machine runs out of memory: the
// kernel's OOM killer would take an agent, or something else, at random.
func checkMemoryLeft(t testing.TB, started int) {
	t.Helper()
	mem, err := hostProc(t).Meminfo()
	if err != nil {
		t.Fatalf("/proc/meminfo: %v", err)
	}
	if mem.MemAvailableBytes == nil {
		t.Fatal("/proc/meminfo has no MemAvailable")
	}
	if left := *mem.MemAvailableBytes; left < 1<<30 {
		t.Fatalf("only %d MiB of memory left after starting %d agents: this machine holds no more", left>>20, started)
	}
}

// logNoise is what varies between two warnings of one kind: addresses,
// names, numbers, durations.
var logNoise = regexp.MustCompile(`[0-9]+(\.[0-9]+)*(:[0-9]+)?[a-zµ]*|ip-[0-9-]+`)

// summariseAgentLogs counts the agents' warnings by kind (the text with its
// addresses and numbers blanked) and says how many agents logged each: the
// five most frequent, "" when no agent logged anything.
func summariseAgentLogs(t testing.TB, hosts []string) string {
	t.Helper()
	type kind struct {
		text          string
		lines, agents int
	}
	kinds := map[string]*kind{}
	for _, h := range hosts {
		raw, err := os.ReadFile(filepath.Join(filepath.Dir(h), "stderr"))
		if err != nil {
			t.Fatalf("agent log: %v", err)
		}
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			if line == "" {
				continue
			}
			// slog's text: keep the message and the error, not the time.
			if _, rest, ok := strings.Cut(line, " level="); ok {
				line = "level=" + rest
			}
			key := logNoise.ReplaceAllString(line, "#")
			k := kinds[key]
			if k == nil {
				k = &kind{text: key}
				kinds[key] = k
			}
			k.lines++
			if !seen[key] {
				seen[key] = true
				k.agents++
			}
		}
	}
	var all []*kind
	for _, k := range kinds {
		all = append(all, k)
	}
	slices.SortFunc(all, func(a, b *kind) int { return b.lines - a.lines })
	var out []string
	for _, k := range all[:min(len(all), 5)] {
		out = append(out, fmt.Sprintf("%d lines from %d agents: %.200s", k.lines, k.agents, k.text))
	}
	return strings.Join(out, " | ")
}

// backlogDrops is this machine's count of packets dropped since boot
// because a CPU's receive backlog was full (netns.RaiseBacklog).
func backlogDrops(t testing.TB) uint64 {
	t.Helper()
	n, err := netns.BacklogDrops()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// udpDrops counts the UDP datagrams the agents' kernels dropped because a
// socket's receive buffer was full (Udp RcvbufErrors, per network namespace):
// gossip lost on the way in, which only retransmission and push/pull repair.
type udpDrops struct{ total, namespaces int }

// udpReceiveDrops sums RcvbufErrors over the agents' namespaces (each agent
// has one of its own, so /proc/<pid>/net/snmp is its namespace's).
func udpReceiveDrops(t testing.TB, cmds []*exec.Cmd) udpDrops {
	t.Helper()
	var d udpDrops
	for _, c := range cmds {
		p, err := procfs.NewProc(c.Process.Pid)
		if err != nil {
			t.Fatalf("agent process %d: %v", c.Process.Pid, err)
		}
		snmp, err := p.Snmp()
		if err != nil {
			t.Fatalf("agent process %d: UDP counters: %v", c.Process.Pid, err)
		}
		if snmp.Udp.RcvbufErrors != nil && *snmp.Udp.RcvbufErrors > 0 {
			d.total += int(*snmp.Udp.RcvbufErrors)
			d.namespaces++
		}
	}
	return d
}

// procMem is a process's resident memory in MiB from /proc/<pid>/status:
// RSS is VmRSS, Anon its RssAnon part and File its RssFile part (the
// executable's pages; RssShmem is the rest).
type procMem struct{ RSS, Anon, File float64 }

// procStat reads a process's CPU time (utime+stime) and resident memory from
// /proc.
func procStat(t testing.TB, pid int) (time.Duration, procMem) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("agent process %d: %v", pid, err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("agent process %d: %v", pid, err)
	}
	var m procMem
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			m.RSS = kb / 1024
		case "RssAnon":
			m.Anon = kb / 1024
		case "RssFile":
			m.File = kb / 1024
		}
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasSuffix(exe, "/ip") {
		t.Fatalf("process %d is ip, not the agent: `ip netns exec` forked", pid)
	}
	return time.Duration(utime+stime) * time.Second / ticks, m
}

// ringPrograms are the programs a process ring runs: ringnode, one per
// measured process, and ringhost for the hosted members ("" when no ring of
// the run has any).
type ringPrograms struct {
	node, host string
	nodeSize   int64
}

// procsSize is one ring of BenchmarkRingProcesses: a scaleSize and, with
// ":P", how many of its N agents are measured processes, the other N−P
// running in one ringhost process.
type procsSize struct {
	scaleSize
	measured int // P; N when every agent is a process
}

// hosted is how many of the ring's agents run in the host process.
func (s procsSize) hosted() int { return s.n - s.measured }

func (s procsSize) String() string {
	if s.hosted() == 0 {
		return s.scaleSize.String()
	}
	return fmt.Sprintf("%s:%d", s.scaleSize, s.measured)
}

// parseProcsSize reads one entry of -procs.n: a -scale.n size, then
// optionally ":P".
func parseProcsSize(f string) (procsSize, error) {
	rest, ps, mixed := strings.Cut(strings.TrimSpace(f), ":")
	sz, err := parseScaleSize(rest, 0)
	if err != nil {
		return procsSize{}, err
	}
	out := procsSize{scaleSize: sz, measured: sz.n}
	if mixed {
		p, err := strconv.Atoi(ps)
		if err != nil || p < 1 || p >= sz.n {
			return out, fmt.Errorf("size %q: want N, N/k, N@B or N/k@B, then optionally :P with 1 ≤ P < N measured processes", f)
		}
		if sz.n-p > hostedMax {
			return out, fmt.Errorf("size %q: at most %d hosted agents", f, hostedMax)
		}
		out.measured = p
	}
	return out, nil
}

// hostedRange holds the host process's addresses, outside the lab's subnet
// (10.98.0.0/16 at most); its first hostedMax addresses are used.
const (
	hostedRange = "10.99.0.0/16"
	hostedMax   = 65000
)

// hostedAddrs are the addresses of a host's m agents: 10.99.0.1 on.
func hostedAddrs(m int) []string {
	ip := netip.MustParseAddr("10.99.0.1")
	out := make([]string, m)
	for i := range out {
		out[i] = ip.String()
		ip = ip.Next()
	}
	return out
}

// ringHost is the ringhost process that runs a ring's hosted members in the
// lab's node 0, undilated or dilated like the processes. Its methods are
// no-ops on a nil host (a ring without hosted members).
type ringHost struct {
	cmd     *exec.Cmd
	addrs   []string
	n       int          // the whole ring's size
	least   atomic.Int64 // the least alive members an agent of it sees, by its latest ring line
	started atomic.Bool
	line    atomic.Value // its latest ring line
	stderr  string
}

// startRingHost starts the host process, whose agents start sz.batch a
// (dilated) second like the processes', and returns once all of them have.
func startRingHost(b *testing.B, lab *netns.Lab, exe, dir, keyFile string, sz procsSize, processSeeds []string) *ringHost {
	h := &ringHost{addrs: hostedAddrs(sz.hosted()), n: sz.n, stderr: filepath.Join(dir, "host-stderr")}
	seedsFile := filepath.Join(dir, "seeds")
	seeds := append(slices.Clone(processSeeds), h.addrs...)
	if err := os.WriteFile(seedsFile, []byte(strings.Join(seeds, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	batch := sz.batch
	if batch <= 0 {
		batch = sz.hosted()
	}
	// Its stdout is a pipe whose write end only it holds once started: the
	// reader below sees the end of it when the host exits.
	out, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	h.cmd = startInLab(b, lab, 0, h.stderr, w, exe, "-cluster", testCluster, "-first-ip", h.addrs[0],
		"-count", strconv.Itoa(sz.hosted()), "-ring-size", strconv.Itoa(sz.n), "-seeds-file", seedsFile, "-key-file", keyFile,
		"-per-second", strconv.Itoa(batch), "-dilation", strconv.FormatFloat(sz.k, 'g', -1, 64),
		"-report", (time.Duration(sz.k * float64(time.Second))).String())
	w.Close()
	b.Cleanup(func() {
		if err := h.cmd.Process.Kill(); err != nil {
			b.Logf("stop the ring host: %v", err)
		}
		h.cmd.Wait() // killed: its exit status says so and nothing else
	})
	go func() {
		defer out.Close()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "started "):
				b.Logf("ring host: %s", line)
				h.started.Store(true)
			case strings.HasPrefix(line, "ring "):
				h.line.Store(line)
				for _, f := range strings.Fields(line) {
					if v, ok := strings.CutPrefix(f, "alive-least="); ok {
						least, _ := strconv.Atoi(v)
						h.least.Store(int64(least))
					}
				}
			}
		}
	}()
	dil := time.Duration(sz.k * float64(time.Second))
	waitForScaleEvery(b, 100*time.Millisecond, time.Duration(sz.hosted()/batch+60)*dil, "the ring host has started its agents", func() error {
		checkMemoryLeft(b, sz.n)
		if !h.started.Load() {
			return errors.New("not yet")
		}
		return nil
	}, time.Now(), func() { b.Logf("ring host's log:\n%s", tailFile(h.stderr, 20)) })
	return h
}

// startInLab starts a ring program in node i of the lab, at -procs.nice so
// that the bench's own work (the launch schedule, the convergence polls, the
// /proc reads) is not queued behind a thousand agents while a large ring
// forms (the CPU each uses is the same, only its place in the queue changes).
// It dies with the bench, even when the bench is killed: no orphan ring keeps
// the machine busy after an interrupted run. Its stderr (memberlist's
// warnings among them) goes to a file of its own; stdout, when not nil, to
// that file.
func startInLab(b *testing.B, lab *netns.Lab, i int, stderr string, stdout *os.File, exe string, args ...string) *exec.Cmd {
	b.Helper()
	argv := append([]string{"nice", "-n", strconv.Itoa(*procsNice), exe}, args...)
	if *procsNice == 0 {
		argv = argv[3:]
	}
	cmd := lab.Command(context.Background(), i, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errFile, err := os.Create(stderr)
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = errFile
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err = cmd.Start()
	errFile.Close() // the program holds its own descriptor
	if err != nil {
		b.Fatal(err)
	}
	return cmd
}

// whole holds once every hosted agent sees every member alive.
func (h *ringHost) whole() error {
	if h == nil {
		return nil
	}
	if least := h.least.Load(); least != int64(h.n) {
		line, _ := h.line.Load().(string)
		return fmt.Errorf("hosted agents: least %d/%d alive members (%s)", least, h.n, line)
	}
	return nil
}

// cpu is the host process's CPU time so far.
func (h *ringHost) cpu(t testing.TB) time.Duration {
	if h == nil {
		return 0
	}
	c, _ := procStat(t, h.cmd.Process.Pid)
	return c
}

// describe is the host's part of a PROCS line: how many agents it runs and
// what they cost each over the window (CPU projected ×k).
func (h *ringHost) describe(t testing.TB, cpu, window time.Duration, k float64) string {
	if h == nil {
		return ""
	}
	_, m := procStat(t, h.cmd.Process.Pid)
	return fmt.Sprintf(" measured=%d hosted=%d(in one process: cpu=%.3f%%/agent rss=%.0fMiB)", h.n-len(h.addrs), len(h.addrs),
		100*k*float64(cpu)/float64(window)/float64(len(h.addrs)), m.RSS)
}

// tailFile is the last n lines of a file, or why it could not be read.
func tailFile(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// undilatedCPUByN fits the CPU per process of the undilated rings of a run
// against N (least squares over their medians) and gives, for each dilated
// ring larger than all of them, what the fit says its processes would use
// undilated. A node's agent probes one member a second and is probed about
// once a second whatever N, and a formed ring gossips nothing: what grows
// with N is the full-state exchanges' size, which memberlist makes rarer as
// the ring grows. The fit measures that slope instead of assuming it.
func undilatedCPUByN(results []ringResult) []string {
	var ns, cpus []float64
	var parts []string
	for _, r := range results {
		if r.size.k != 1 || len(r.runs) == 0 {
			continue
		}
		m, _ := r.median()
		ns, cpus = append(ns, float64(r.size.n)), append(cpus, m["cpu%"])
		parts = append(parts, fmt.Sprintf("N=%d %.3f%%", r.size.n, m["cpu%"]))
	}
	if len(ns) < 2 || slices.Min(ns) == slices.Max(ns) {
		return nil
	}
	slope, intercept := leastSquares(ns, cpus)
	lines := []string{fmt.Sprintf("PROCS-BYN undilated cpu per process: %s; fit %.4f%% + %.4f%% per 100 nodes",
		strings.Join(parts, ", "), intercept, 100*slope)}
	for _, r := range results {
		if r.size.k == 1 || float64(r.size.n) <= slices.Max(ns) {
			continue
		}
		lines = append(lines, fmt.Sprintf("PROCS-ESTIMATE N=%d undilated, by the fit over N: cpu per process %.3f%%",
			r.size.n, intercept+slope*float64(r.size.n)))
	}
	return lines
}

// leastSquares fits y = slope·x + intercept.
func leastSquares(x, y []float64) (slope, intercept float64) {
	mx, my := mean(x), mean(y)
	var sxy, sxx float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
	}
	slope = sxy / sxx
	return slope, my - slope*mx
}
