package gossip

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseScaleSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		def  int
		want scaleSize
	}{
		{"100", 0, scaleSize{n: 100, k: 1}},
		{"100", 10, scaleSize{n: 100, k: 1, batch: 10}},
		{"300/4", 0, scaleSize{n: 300, k: 4}},
		{"300@50", 0, scaleSize{n: 300, k: 1, batch: 50}},
		{" 300/4@50", 10, scaleSize{n: 300, k: 4, batch: 50}},
		{"2000/64", 0, scaleSize{n: 2000, k: 64}},
	} {
		got, err := parseScaleSize(c.in, c.def)
		if err != nil || got != c.want {
			t.Errorf("parseScaleSize(%q, %d) = %+v, %v; want %+v", c.in, c.def, got, err, c.want)
		}
		// The child is handed the size in the same syntax.
		if again, err := parseScaleSize(got.String(), 0); err != nil || again != got {
			t.Errorf("%+v does not survive String(): %q → %+v, %v", got, got.String(), again, err)
		}
	}
	for _, bad := range []string{"", "1", "x", "100/0.5", "100/x", "100@0", "100@x", "100/4@"} {
		if sz, err := parseScaleSize(bad, 0); err == nil {
			t.Errorf("parseScaleSize(%q) = %+v, want an error", bad, sz)
		}
	}
}

func scaleRun(converge float64, cpuBound bool) ringRun {
	return ringRun{cpuBound: cpuBound, figures: map[string]float64{
		"converge-s": converge, "join-s": 0.4, "ready-s": 0.5, "dead-known-s": 3, "B/s/agent": 490, "cpu%/agent": 0.05, "cpu-agents%/agent": 0.04,
	}}
}

func TestMedianLeavesOutStarvedRuns(t *testing.T) {
	r := ringResult{runs: []ringRun{scaleRun(0.7, false), scaleRun(2.1, true), scaleRun(0.9, false), scaleRun(1.7, true), scaleRun(0.8, false)}}
	med, used := r.median()
	if med["converge-s"] != 0.8 || !strings.Contains(used, "not CPU-BOUND") {
		t.Errorf("median = %v (%s), want 0.8 from the three runs that were not CPU-bound", med["converge-s"], used)
	}
	all := ringResult{runs: []ringRun{scaleRun(2.1, true), scaleRun(1.7, true)}}
	med, used = all.median()
	if med["converge-s"] != 1.9 || !strings.Contains(used, "every run CPU-BOUND") {
		t.Errorf("median of starved runs = %v (%s), want 1.9, said to measure the machine", med["converge-s"], used)
	}
	if w := r.worst()["converge-s"]; w != 2.1 {
		t.Errorf("worst = %v, want 2.1", w)
	}
}

func TestCompareDilationGivesAVerdictPerFigure(t *testing.T) {
	und := ringResult{size: scaleSize{n: 300, k: 1, batch: 50}, runs: []ringRun{scaleRun(1.0, false)}}
	near := ringResult{size: scaleSize{n: 300, k: 4, batch: 50}, runs: []ringRun{scaleRun(1.15, false)}}
	far := ringResult{size: scaleSize{n: 300, k: 8, batch: 50}, runs: []ringRun{scaleRun(0.5, false)}}
	otherBatch := ringResult{size: scaleSize{n: 300, k: 4}, runs: []ringRun{scaleRun(0.5, false)}}
	lines := compareDilation([]ringResult{und, near, far, otherBatch})
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want one per dilated run with an undilated run of the same N and batch:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if l := lines[0]; !strings.Contains(l, "converge 1.00s / 1.15s (+15%, within 20 %)") || !strings.Contains(l, "the projection holds for every figure") ||
		!strings.Contains(l, "started 50 per (dilated) second in both") {
		t.Errorf("k=4 line: %s", l)
	}
	if l := lines[1]; !strings.Contains(l, "converge 1.00s / 0.50s (-50%, NOT within 20 %)") || !strings.Contains(l, "1 of 7 figures NOT within 20 %") {
		t.Errorf("k=8 line: %s", l)
	}
}

func TestParseScaleLineTakesTheCollectorOutOfTheAgentsCPU(t *testing.T) {
	line := "SCALE N=2000 k=64 converge=1.68s join=520ms ready=620ms fail=4.78s steady=492B/s/agent cpu=0.457%/agent cpu-gc=0.400%/agent window=2m8s regossip=15s regossip-bytes=2767KB/agent queued-at-converge=3988394 stall=6.198s batch=200 start=9m53.557s"
	m, ok := parseScaleLine(line)
	if !ok {
		t.Fatalf("parseScaleLine did not read every figure: %v", m)
	}
	want := map[string]float64{"converge-s": 1.68, "join-s": 0.52, "ready-s": 0.62, "dead-known-s": 4.78, "B/s/agent": 492,
		"cpu%/agent": 0.457, "cpu-gc%/agent": 0.4, "regossip-s": 15, "stall-s": 6.198}
	for unit, v := range want {
		if got := m[unit]; got < v-1e-9 || got > v+1e-9 {
			t.Errorf("%s = %v, want %v", unit, got, v)
		}
	}
	if got := m["cpu-agents%/agent"]; got < 0.057-1e-9 || got > 0.057+1e-9 {
		t.Errorf("the agents' CPU = %v, want the total less the collector's, 0.057", got)
	}
	if _, ok := parseScaleLine(strings.Replace(line, " cpu-gc=0.400%/agent", "", 1)); ok {
		t.Error("a line without the collector's share was read as whole")
	}
}

func TestStartOffsetsSpreadEachBatchOverOnePhase(t *testing.T) {
	const second, phase = 1000 * time.Millisecond, 200 * time.Millisecond
	offs := startOffsets(25, 10, second, phase)
	if len(offs) != 25 {
		t.Fatalf("%d offsets for 25 agents", len(offs))
	}
	for i, d := range offs {
		batchStart := time.Duration(i/10) * second
		if d < batchStart || d >= batchStart+phase {
			t.Errorf("agent %d starts at %v, want within [%v, %v)", i, d, batchStart, batchStart+phase)
		}
		if i > 0 && d < offs[i-1] {
			t.Errorf("agent %d starts at %v, before agent %d (%v)", i, d, i-1, offs[i-1])
		}
	}
	once := startOffsets(100, 0, second, phase)
	if spread := once[99] - once[0]; spread >= phase || spread < phase/2 {
		t.Errorf("all at once: starts spread over %v, want most of one phase (%v)", spread, phase)
	}
}

// The process ring has converged only when every hosts file lists every node
// at once: a file complete on one read and short on the next is pending again.
func TestAllListEveryNodeRereadsOnlyTheIncompleteThenAll(t *testing.T) {
	dir := t.TempDir()
	names := map[string][]string{"a": {"10.0.0.1"}, "b": {"10.0.0.2"}}
	write := func(path string, entries map[string][]string) {
		t.Helper()
		if err := os.WriteFile(path, RenderHostsBlock([]byte(hostsPrelude), entries), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h1, h2 := filepath.Join(dir, "h1"), filepath.Join(dir, "h2")
	write(h1, names)
	write(h2, map[string][]string{"a": {"10.0.0.1"}})
	done := allListEveryNode([]string{h1, h2}, 2)

	if err := done(); err == nil || !strings.Contains(err.Error(), "1 hosts files incomplete") {
		t.Fatalf("h2 lists 1 of 2 nodes: got %v", err)
	}
	// h1 regresses, unseen: only h2 is read until every file has been complete once.
	write(h1, map[string][]string{"a": {"10.0.0.1"}})
	write(h2, names)
	if err := done(); err == nil || !strings.Contains(err.Error(), "checking them all again") {
		t.Fatalf("h2 complete, h1 not reread: got %v, want the full check to come", err)
	}
	if err := done(); err == nil || !strings.Contains(err.Error(), "h1 lists 1/2") {
		t.Fatalf("the full check must find h1 short again: got %v", err)
	}
	write(h1, names)
	if err := done(); err == nil {
		t.Fatal("converged on the first read after h1 came back, without a full check")
	}
	if err := done(); err != nil {
		t.Fatalf("every file complete twice over: %v", err)
	}
}

func TestBusySinceIsTheShareOfCPUTimeNotIdle(t *testing.T) {
	then := hostCPU{total: 1000, idle: 800}
	if got := (hostCPU{total: 1400, idle: 900}).busySince(then); got < 0.749 || got > 0.751 {
		t.Errorf("400 ticks, 100 idle: busy %.3f, want 0.75", got)
	}
	if got := then.busySince(then); got != 0 {
		t.Errorf("no time passed: busy %.3f, want 0", got)
	}
}

func TestUndilatedCPUIsEstimatedFromASmallerRingAtTheSameDilation(t *testing.T) {
	ring := func(n int, k float64, cpu float64) ringResult {
		return ringResult{size: scaleSize{n: n, k: k}, runs: []ringRun{{figures: map[string]float64{"cpu%": cpu}}}}
	}
	lines := estimateUndilatedCPU([]ringResult{ring(200, 1, 0.2), ring(200, 4, 0.3), ring(200, 32, 1.0), ring(1000, 32, 1.5)})
	if len(lines) != 1 {
		t.Fatalf("estimates = %q, want one: N=1000 from N=200 at k=32 (k=4 has no N=1000 ring)", lines)
	}
	// 0.2 % undilated × 1.5 / 1.0: the N=1000 ring is 1.5 times N=200 at k=32.
	if !strings.Contains(lines[0], "N=1000 undilated: cpu per process 0.300%") || !strings.Contains(lines[0], "over-states N=200's CPU 5.0×") {
		t.Errorf("estimate = %q, want 0.300%% and an over-projection of 5.0× at k=32", lines[0])
	}
	if got := estimateUndilatedCPU([]ringResult{ring(1000, 32, 1.5), ring(200, 32, 1.0)}); len(got) != 0 {
		t.Errorf("estimates without an undilated ring = %q, want none", got)
	}
}

// The process ring's agents' warnings are summed up by kind: addresses,
// names and numbers do not make two warnings different, and each kind says
// how many agents logged it.
func TestAgentLogsAreSummedUpByKind(t *testing.T) {
	dir := t.TempDir()
	logs := []string{
		`time=2026-12-02T04:00:00Z level=WARN msg="gossip member gone" node=ip-10-98-0-10 addr=10.98.0.11:7946` + "\n" +
			`time=2026-12-02T04:00:01Z level=WARN msg="gossip member gone" node=ip-10-98-0-12 addr=10.98.0.13:7946` + "\n",
		`time=2026-12-02T04:00:02Z level=WARN msg="gossip member gone" node=ip-10-98-3-1 addr=10.98.3.1:7946` + "\n" +
			`time=2026-12-02T04:00:03Z level=ERROR msg="update hosts file" err="disk full"` + "\n",
		"",
	}
	var hosts []string
	for i, l := range logs {
		d := filepath.Join(dir, fmt.Sprint(i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "stderr"), []byte(l), 0o644); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, filepath.Join(d, "hosts"))
	}
	got := summariseAgentLogs(t, hosts)
	want := `3 lines from 2 agents: level=WARN msg="gossip member gone" node=# addr=# | 1 lines from 1 agents: level=ERROR msg="update hosts file" err="disk full"`
	if got != want {
		t.Errorf("summary:\n got %s\nwant %s", got, want)
	}
	if got := summariseAgentLogs(t, hosts[2:]); got != "" {
		t.Errorf("summary of silent agents = %q, want none", got)
	}
}

func TestParseProcsSizeReadsHowManyAgentsAreMeasuredProcesses(t *testing.T) {
	for _, c := range []struct {
		in   string
		want procsSize
	}{
		{"200@4", procsSize{scaleSize{n: 200, k: 1, batch: 4}, 200}},
		{"1000@10:10", procsSize{scaleSize{n: 1000, k: 1, batch: 10}, 10}},
		{" 500/4@5:20", procsSize{scaleSize{n: 500, k: 4, batch: 5}, 20}},
	} {
		got, err := parseProcsSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseProcsSize(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if again, err := parseProcsSize(got.String()); err != nil || again != got {
			t.Errorf("%+v does not survive String(): %q → %+v, %v", got, got.String(), again, err)
		}
	}
	if got := (procsSize{scaleSize{n: 1000, k: 1, batch: 10}, 10}).hosted(); got != 990 {
		t.Errorf("1000@10:10 hosts %d agents, want 990", got)
	}
	for _, bad := range []string{"200:0", "200:200", "200:x", "200@4:", "x:5", "70000:10"} {
		if sz, err := parseProcsSize(bad); err == nil {
			t.Errorf("parseProcsSize(%q) = %+v, want an error", bad, sz)
		}
	}
}

func TestHostedAddressesFollowEachOther(t *testing.T) {
	a := hostedAddrs(300)
	if a[0] != "10.99.0.1" || a[254] != "10.99.0.255" || a[255] != "10.99.1.0" || a[299] != "10.99.1.44" {
		t.Errorf("hosted addresses %s … %s, %s, %s … %s", a[0], a[254], a[255], a[256], a[299])
	}
}

func procsRun(cpu float64) ringRun { return ringRun{figures: map[string]float64{"cpu%": cpu}} }

func TestUndilatedCPUIsFittedAgainstNAndExtrapolated(t *testing.T) {
	results := []ringResult{
		{size: scaleSize{n: 100, k: 1, batch: 4}, runs: []ringRun{procsRun(0.20)}},
		{size: scaleSize{n: 300, k: 1, batch: 4}, runs: []ringRun{procsRun(0.22)}},
		{size: scaleSize{n: 200, k: 32, batch: 50}, runs: []ringRun{procsRun(0.6)}},
		{size: scaleSize{n: 1000, k: 32, batch: 50}, runs: []ringRun{procsRun(1.1)}},
	}
	lines := undilatedCPUByN(results)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want the fit and one estimate (N=1000, the only dilated ring beyond the undilated ones):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[0], "N=100 0.200%, N=300 0.220%") || !strings.Contains(lines[0], "fit 0.1900% + 0.0100% per 100 nodes") {
		t.Errorf("fit line: %s", lines[0])
	}
	if !strings.Contains(lines[1], "N=1000 undilated, by the fit over N: cpu per process 0.290%") {
		t.Errorf("estimate line: %s", lines[1])
	}
	if got := undilatedCPUByN(results[:1]); got != nil {
		t.Errorf("one undilated ring gives no fit, got %q", got)
	}
}
