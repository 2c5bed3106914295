package bootstrap

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

// filePhase converges a single in-memory value; it counts what it did so the tests
// can tell a no-op re-run from a real one.
type filePhase struct {
	name     string
	have     *string
	want     string
	actErr   error
	acts     int
	warnings []string
}

func (p *filePhase) Name() string { return p.name }
func (p *filePhase) Check(context.Context) ([]Change, error) {
	if *p.have == p.want {
		return nil, nil
	}
	return []Change{{Kind: "file", Target: p.name, Action: "update"}}, nil
}
func (p *filePhase) Act(context.Context) error {
	p.acts++
	if p.actErr != nil {
		return p.actErr
	}
	*p.have = p.want
	return nil
}
func (p *filePhase) Verify(context.Context) error {
	if *p.have != p.want {
		return errors.New("not converged")
	}
	return nil
}
func (p *filePhase) Warnings() []string { return p.warnings }

func TestRunnerConvergesThenNoOps(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	var a, b string
	phases := []Phase{
		&filePhase{name: "a", have: &a, want: "A", warnings: []string{"kernel refused x"}},
		&filePhase{name: "b", have: &b, want: "B"},
	}
	r := &Runner{Store: store, Node: NodeInfo{Name: "n1"}}
	for run, wantChanged := range []bool{true, false} {
		if err := r.Run(context.Background(), phases); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		st, err := store.Load()
		if err != nil {
			t.Fatal(err)
		}
		if !st.AllDone() || st.Error != "" || st.Node.Name != "n1" || st.FinishedAt.IsZero() {
			t.Fatalf("run %d: state %+v", run, st)
		}
		for _, ps := range st.Phases {
			if ps.Changed != wantChanged {
				t.Errorf("run %d phase %s: changed = %v, want %v", run, ps.Name, ps.Changed, wantChanged)
			}
		}
		if got := st.Phase("a").Warnings; len(got) != 1 {
			t.Errorf("run %d: warnings not recorded: %v", run, got)
		}
	}
	if acts := phases[0].(*filePhase).acts; acts != 1 {
		t.Errorf("phase a acted %d times over two runs, want 1", acts)
	}
}

func TestRunnerStopsAtFailureAndResumes(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	var a, b, c string
	failing := &filePhase{name: "b", have: &b, want: "B", actErr: errors.New("disk on fire\nsecond line")}
	phases := []Phase{
		&filePhase{name: "a", have: &a, want: "A"},
		failing,
		&filePhase{name: "c", have: &c, want: "C"},
	}
	r := &Runner{Store: store}
	err := r.Run(context.Background(), phases)
	if !IsPhaseError(err) || err.Error() != "phase b: act: disk on fire" {
		t.Fatalf("err = %v", err)
	}
	st, _ := store.Load()
	wantStates := map[string]PhaseState{"a": PhaseDone, "b": PhaseFailed, "c": PhasePending}
	for name, want := range wantStates {
		if got := st.Phase(name).State; got != want {
			t.Errorf("phase %s: %s, want %s", name, got, want)
		}
	}
	if !strings.HasPrefix(st.Error, "phase b: act: disk on fire") || strings.Contains(st.Error, "\n") {
		t.Errorf("state error = %q", st.Error)
	}

	failing.actErr = nil
	if err := r.Run(context.Background(), phases); err != nil {
		t.Fatalf("re-run: %v", err)
	}
	st, _ = store.Load()
	if !st.AllDone() || st.Error != "" || st.Phase("a").Changed {
		t.Fatalf("re-run did not converge cleanly: %+v", st)
	}
}

func TestPlanChangesNothing(t *testing.T) {
	var a string
	p := &filePhase{name: "a", have: &a, want: "A"}
	plan := Plan(context.Background(), []Phase{p}, Facts{})
	if len(plan) != 1 || len(plan[0].Changes) != 1 || p.acts != 0 || a != "" {
		t.Fatalf("plan = %+v, acts = %d", plan, p.acts)
	}
}

func TestStateStoreRejectsCorruptFile(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	if _, err := store.Update(func(*State) {}); err != nil {
		t.Fatal(err)
	}
	if err := writeRaw(store.Path(), "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Load(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("err = %v", err)
	}
}

// The boot's own run records its timeline; the daemon's later runs leave it.
func TestBootTimelineIsKept(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	var a, b string
	failing := &filePhase{name: "b", have: &b, want: "B", actErr: errors.New("no disk")}
	phases := []Phase{&filePhase{name: "a", have: &a, want: "A"}, failing}
	boot := &Runner{Store: store, RecordBoot: true}
	if err := boot.Run(context.Background(), phases); err == nil {
		t.Fatal("a failing phase did not fail the boot")
	}
	st, _ := store.Load()
	if st.Boot == nil || st.Boot.Result != "failed" || len(st.Boot.Phases) != 2 || st.Boot.Phases[1].State != PhaseFailed {
		t.Fatalf("failed boot's timeline: %+v", st.Boot)
	}
	failing.actErr = nil
	if err := boot.Run(context.Background(), phases); err != nil {
		t.Fatal(err)
	}
	st, _ = store.Load()
	first := st.Boot
	if first == nil || first.Result != "done" || first.Phases[0].Name != "a" || first.Phases[0].Started.IsZero() ||
		first.FinishedAt.Before(first.StartedAt) || first.Phases[1].Duration <= 0 {
		t.Fatalf("boot timeline: %+v", first)
	}
	daemon := &Runner{Store: store}
	if err := daemon.Run(context.Background(), phases); err != nil {
		t.Fatal(err)
	}
	st, _ = store.Load()
	if !st.Boot.StartedAt.Equal(first.StartedAt) || st.StartedAt.Equal(first.StartedAt) {
		t.Errorf("a reconcile run replaced the boot's timeline: %+v", st.Boot)
	}
}

// watchPhase is a filePhase that, when it acts, records what the state file
// says at that moment and the file's identity (every write renames a new file
// into place).
type watchPhase struct {
	filePhase
	store StateStore
	seen  *State
}

func (p *watchPhase) Act(ctx context.Context) error {
	st, err := p.store.Load()
	if err != nil {
		return err
	}
	p.seen = st
	return p.filePhase.Act(ctx)
}

// readerPhase reads the record as readiness does: in Check, every phase
// before it must be on record as done.
type readerPhase struct {
	store  StateStore
	before []string
	seen   []PhaseState
}

func (p *readerPhase) Name() string { return "reader" }
func (p *readerPhase) ReadsRecord() {}
func (p *readerPhase) Check(context.Context) ([]Change, error) {
	st, err := p.store.Load()
	if err != nil {
		return nil, err
	}
	p.seen = p.seen[:0]
	for _, n := range p.before {
		p.seen = append(p.seen, st.Phase(n).State)
	}
	return nil, nil
}
func (p *readerPhase) Act(context.Context) error    { return nil }
func (p *readerPhase) Verify(context.Context) error { return nil }

// A converged run writes the state file at its start and its end, not once per
// phase; when a later phase has something to do, the phases before it are
// recorded done, and it running, before it acts; a phase that reads the record
// (readiness) finds the phases before it on record.
func TestQuietPhasesAreRecordedWithTheNextWrite(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	var a, b, c, d string
	reader := &readerPhase{store: store, before: []string{"a", "b", "c", "d"}}
	phases := []Phase{
		&filePhase{name: "a", have: &a, want: "A"},
		&filePhase{name: "b", have: &b, want: "B"},
		&filePhase{name: "c", have: &c, want: "C"},
		&filePhase{name: "d", have: &d, want: "D"},
		reader,
	}
	r := &Runner{Store: store}
	if err := r.Run(context.Background(), phases); err != nil {
		t.Fatal(err)
	}
	// Count the writes over a converged run: every write changes the file
	// (timestamps, records), so each phase's end sees which version is there.
	version := func() string {
		b, err := os.ReadFile(store.Path())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	seen := map[string]bool{version(): true}
	r.Observe = func(PhaseStatus) { seen[version()] = true }
	if err := r.Run(context.Background(), phases); err != nil {
		t.Fatal(err)
	}
	seen[version()] = true
	// Versions seen: the one before the run, the run's start, the record of
	// a–d before the reader runs, and the run's end.
	if writes := len(seen) - 1; writes != 3 {
		t.Errorf("a converged run of 5 phases wrote the state file %d times, want 3 (its start, before the reader, its end)", writes)
	}
	for i, st := range reader.seen {
		if st != PhaseDone {
			t.Errorf("the reader found phase %s on record as %s, want done", reader.before[i], st)
		}
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !st.AllDone() || st.FinishedAt.IsZero() {
		t.Fatalf("after a converged run: %+v", st)
	}
	for _, ps := range st.Phases {
		if ps.Changed || ps.Started.IsZero() {
			t.Errorf("phase %s recorded %+v", ps.Name, ps)
		}
	}

	// Drift in c: a and b are on record as done, c as running, when c acts.
	c = "drifted"
	w := &watchPhase{filePhase: filePhase{name: "c", have: &c, want: "C"}, store: store}
	phases[2] = w
	if err := r.Run(context.Background(), phases); err != nil {
		t.Fatal(err)
	}
	if w.seen == nil {
		t.Fatal("c did not act")
	}
	for name, want := range map[string]PhaseState{"a": PhaseDone, "b": PhaseDone, "c": PhaseRunning, "d": PhasePending, "reader": PhasePending} {
		if got := w.seen.Phase(name).State; got != want {
			t.Errorf("while c acts, phase %s is on record as %s, want %s", name, got, want)
		}
	}
	if st, err := store.Load(); err != nil || !st.AllDone() || !st.Phase("c").Changed || st.Phase("b").Changed {
		t.Errorf("after the repair: %+v %v", st, err)
	}
}
