package gossip

import (
	"strings"
	"testing"
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
		"converge-s": converge, "join-s": 0.4, "ready-s": 0.5, "dead-known-s": 3, "B/s/agent": 490, "cpu%/agent": 0.05,
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
	if l := lines[1]; !strings.Contains(l, "converge 1.00s / 0.50s (-50%, NOT within 20 %)") || !strings.Contains(l, "1 of 6 figures NOT within 20 %") {
		t.Errorf("k=8 line: %s", l)
	}
}
