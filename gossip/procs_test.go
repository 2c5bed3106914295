package gossip

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/netns"
)

var (
	procsN      = flag.Int("procs.n", 200, "agents for BenchmarkRingProcesses, one process and network namespace each (at most 245)")
	procsDilate = flag.Float64("procs.k", 4, "time dilation of BenchmarkRingProcesses (Tuning.Dilation): N processes forming a ring at full speed starve two cores as N in-process agents do; CPU is projected ×k")
	procsWindow = flag.Duration("procs.window", 30*time.Second, "steady-state window of BenchmarkRingProcesses")
)

// BenchmarkRingProcesses measures what a node's gossip agent really pays: N
// agents, each a process of its own (the gossip-only program ./internal/ringnode,
// built like nodeagent, running the package's real Agent with the daemon's
// timers, metadata and hosts-file writer) in a network namespace of its own on
// one bridge, started 10 a second as an Auto Scaling launch would. Once every
// agent's hosts file lists every node, it reads each process's resident memory
// (VmRSS, and its parts RssAnon and RssFile) and CPU time (utime+stime) from
// /proc over -procs.window and prints a PROCS line: mean and worst of each per
// process. Like BenchmarkRing's N/k, every timer is dilated -procs.k times and
// CPU and the convergence time are projected back (×k, ÷k); memory is what it
// is. The whole node daemon, which runs this agent among everything else, is
// measured by the daemon's own benchmark, not here.
//
//	flock /tmp/nodeagent-e2e.lock go test -run '^$' -bench BenchmarkRingProcesses -benchtime 1x ./gossip/ -procs.n 200
func BenchmarkRingProcesses(b *testing.B) {
	if why := netns.Available(); why != "" {
		b.Fatal(why)
	}
	n, k := *procsN, max(1, *procsDilate)
	dil := func(d time.Duration) time.Duration { return time.Duration(float64(d) * k) }
	if n < 2 || n > 245 {
		b.Fatalf("-procs.n %d: want 2 to 245 (one /24)", n)
	}
	exe := buildRingNode(b)
	st, err := os.Stat(exe)
	if err != nil {
		b.Fatal(err)
	}
	exeSize := st.Size()
	for range b.N {
		lab := netns.New(b, fmt.Sprintf("gp%d", os.Getpid()%1000), "10.98.0", n)
		var seeds []string
		for _, node := range lab.Nodes {
			seeds = append(seeds, node.IP.String())
		}
		dir := b.TempDir()
		keyFile := writeRingKey(b, dir, []byte("procs-bench-key0"))
		cmds := make([]*exec.Cmd, n)
		b.Cleanup(func() {
			for _, c := range cmds {
				if c != nil {
					c.Process.Kill()
					c.Wait()
				}
			}
		})
		names := make([]string, n)
		hosts := make([]string, n)
		start := time.Now()
		for i := range n {
			names[i] = fmt.Sprintf("ip-10-98-0-%d", 10+i)
			hosts[i] = filepath.Join(dir, fmt.Sprintf("hosts-%d", i))
			if err := os.WriteFile(hosts[i], []byte(hostsPrelude), 0o644); err != nil {
				b.Fatal(err)
			}
			cmd := lab.Command(context.Background(), i, exe, ringNodeArgs{
				name: names[i], seeds: seeds, hosts: hosts[i], router: lab.Router.String(), keyFile: keyFile,
				dilation: k,
			}.args()...)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			cmds[i] = cmd
			if (i+1)%10 == 0 && i+1 < n {
				time.Sleep(dil(time.Second))
			}
		}
		lastStart := time.Now()
		converge := waitForScale(b, dil(3*time.Minute), "every process's hosts file lists every node", func() error {
			for i, h := range hosts {
				raw, err := os.ReadFile(h)
				if err != nil {
					return err
				}
				if got := len(parseHostsBlock(raw)); got != n {
					return fmt.Errorf("agent %d lists %d/%d nodes", i, got, n)
				}
			}
			return nil
		}, lastStart)
		b.Logf("%d processes started in %v, converged %v after the last start", n, lastStart.Sub(start).Round(time.Second), converge)
		// The formation's gossip queues drain, as in BenchmarkRing.
		time.Sleep(min(dil(20*time.Second), time.Minute))
		cpu0 := make([]time.Duration, n)
		for i, c := range cmds {
			cpu0[i], _ = procStat(b, c.Process.Pid)
		}
		t0 := time.Now()
		time.Sleep(*procsWindow)
		el := time.Since(t0)
		cpuPct := make([]float64, n)
		rss := make([]float64, n)
		anon := make([]float64, n)
		file := make([]float64, n)
		for i, c := range cmds {
			var m procMem
			var cpu1 time.Duration
			cpu1, m = procStat(b, c.Process.Pid)
			rss[i], anon[i], file[i] = m.RSS, m.Anon, m.File
			cpuPct[i] = 100 * k * float64(cpu1-cpu0[i]) / float64(el)
		}
		mean := func(v []float64) float64 {
			s := 0.0
			for _, x := range v {
				s += x
			}
			return s / float64(len(v))
		}
		b.ReportMetric(mean(rss), "MiB-RSS/proc")
		b.ReportMetric(mean(anon), "MiB-anon/proc")
		b.ReportMetric(mean(file), "MiB-file/proc")
		b.ReportMetric(mean(cpuPct), "cpu%/proc")
		// rss is VmRSS: anon (heap, stacks, runtime: what the agent itself
		// allocates) plus file (the pages of the executable it has touched,
		// shared by every process of one binary) and shared memory.
		fmt.Printf("PROCS N=%d k=%g converge=%v rss=%.1fMiB(max %.1f) anon=%.1fMiB(max %.1f) file=%.1fMiB(max %.1f) cpu=%.3f%%(max %.3f) window=%v binary=%.1fMB\n",
			n, k, (converge / time.Duration(k)).Round(10*time.Millisecond),
			mean(rss), slices.Max(rss), mean(anon), slices.Max(anon), mean(file), slices.Max(file),
			mean(cpuPct), slices.Max(cpuPct), el.Round(time.Second), float64(exeSize)/1e6)
	}
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
