package bootstrap

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"time"
)

// Warner is implemented by phases that finish with things they could not do but
// that do not fail the phase; the warnings are shown in status, never dropped.
type Warner interface {
	Warnings() []string
}

// Runner runs phases in order and records each outcome in the state file.
type Runner struct {
	Store StateStore
	Log   *slog.Logger
	// Node and ConfigHash are recorded in the state at the start of a run.
	Node       NodeInfo
	ConfigHash string
	// Observe, when set, is called with each phase's final status (metrics).
	Observe func(PhaseStatus)
	// RecordBoot makes this run the boot's timeline (State.Boot): bootstrap
	// sets it, the daemon's reconcile runs do not.
	RecordBoot bool
	now        func() time.Time
}

// Run runs every phase: check, then act and verify when check found changes (a
// converged phase is only verified). It stops at the first failure and returns it
// as "phase NAME: reason"; later phases stay pending.
func (r *Runner) Run(ctx context.Context, phases []Phase) error {
	unlock, err := r.Store.LockRun(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return r.RunHeld(ctx, phases)
}

// RunHeld is Run for a caller that already holds the run lock (StateStore.LockRun),
// e.g. to decide under it which config the run applies.
func (r *Runner) RunHeld(ctx context.Context, phases []Phase) error {
	now := r.clock()
	log := r.logger()
	start := now()
	var facts Facts
	if _, err := r.Store.Update(func(st *State) {
		// What earlier runs learned (the volumes this node claimed) is where this
		// run starts; a phase that learns otherwise overwrites it.
		facts = st.Facts.Clone()
		st.Node = mergeNode(st.Node, r.Node)
		st.ConfigHash = r.ConfigHash
		st.StartedAt = start
		st.FinishedAt = time.Time{}
		st.Error = ""
		st.Phases = make([]PhaseStatus, len(phases))
		for i, p := range phases {
			st.Phases[i] = PhaseStatus{Name: p.Name(), State: PhasePending}
		}
		// The first phase starts now: one write records both.
		if len(phases) > 0 {
			st.Phases[0].State, st.Phases[0].Started = PhaseRunning, start
		}
	}); err != nil {
		return err
	}

	// Each phase's outcome is written together with the next phase's start (or,
	// after the last, the run's end). A phase that found nothing to do, learned
	// nothing and warns of nothing is not written on its own: its record goes
	// with the next write, or before a phase that reads the record
	// (RecordReader). A converged run writes the state file two or three times
	// (its start, before readiness, its end) instead of once per phase; a crash
	// in between leaves the record of the last phase that changed something,
	// and the next run checks every phase again anyway.
	started := start
	finished := false
	lag := &lagging{}
	for i, p := range phases {
		if _, ok := p.(RecordReader); ok && lag.pending() {
			if _, err := r.Store.Update(func(st *State) {
				lag.apply(st)
				if cur := st.Phase(p.Name()); cur != nil {
					*cur = PhaseStatus{Name: cur.Name, State: PhaseRunning, Started: started}
				}
			}); err != nil {
				return err
			}
			lag.written()
		}
		before := facts.Clone()
		ps := r.runPhase(ctx, p, &facts, log, started, lag)
		if r.Observe != nil {
			r.Observe(ps)
		}
		started = now()
		lag.add(p, ps)
		last := i+1 == len(phases)
		quiet := ps.State == PhaseDone && !ps.Changed && len(ps.Warnings) == 0 && reflect.DeepEqual(before, facts)
		if !quiet || last {
			_, werr := r.Store.Update(func(st *State) {
				lag.apply(st)
				st.Facts = facts.Clone()
				if ps.State == PhaseFailed || ps.State == PhaseWaiting {
					st.Error = "phase " + ps.Name + ": " + firstLine(ps.Error)
					st.FinishedAt = now()
					if r.RecordBoot {
						st.Boot = st.bootRecord(string(ps.State))
					}
					return
				}
				if !last {
					if next := st.Phase(phases[i+1].Name()); next != nil {
						*next = PhaseStatus{Name: next.Name, State: PhaseRunning, Started: started}
					}
					return
				}
				st.FinishedAt = now()
				if r.RecordBoot {
					st.Boot = st.bootRecord(string(PhaseDone))
				}
				finished = true
			})
			if werr == nil {
				lag.written()
			}
			if werr != nil && (ps.State == PhaseFailed || ps.State == PhaseWaiting) {
				// The phase's own error is what the run returns; the record's is logged.
				log.Error("record phase outcome", "phase", ps.Name, "err", werr)
			}
			switch ps.State {
			case PhaseFailed:
				return &PhaseError{Phase: ps.Name, Message: ps.Error}
			case PhaseWaiting:
				return &PhaseError{Phase: ps.Name, Message: ps.Error, Waiting: true}
			}
			if werr != nil {
				return werr
			}
		}
		// gofail: var bootstrapBetweenPhases string
		// failpointCrash("bootstrapBetweenPhases", bootstrapBetweenPhases, ps.Name)
	}
	var err error
	if !finished { // no phases
		_, err = r.Store.Update(func(st *State) {
			st.FinishedAt = now()
			if r.RecordBoot {
				st.Boot = st.bootRecord(string(PhaseDone))
			}
		})
	}
	log.Info("bootstrap finished", "phases", len(phases), "duration", now().Sub(start).Round(time.Millisecond))
	return err
}

// lagging holds the outcomes of quiet phases (done, nothing changed, nothing
// learned, no warnings) that RunHeld has not written yet: they go with the next
// write of the state file, whoever makes it.
type lagging struct {
	mu   sync.Mutex
	recs []lagged
}

type lagged struct {
	p  Phase
	ps PhaseStatus
}

func (l *lagging) add(p Phase, ps PhaseStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, lagged{p, ps})
}

func (l *lagging) pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs) > 0
}

// apply writes the lagging outcomes into st (inside a StateStore.Update).
func (l *lagging) apply(st *State) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.recs {
		if cur := st.Phase(o.ps.Name); cur != nil {
			*cur = o.ps
		}
		if rep, ok := o.p.(Reporter); ok {
			rep.Report(st)
		}
	}
}

// written forgets the outcomes an Update that applied them has stored.
func (l *lagging) written() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = nil
}

// runPhase runs one phase, recorded as running since started (by the caller,
// in the same write as the phase before it, or not yet when that phase was
// quiet). Before the phase acts or reports progress, the outcomes lag holds are
// written, with this phase as the running one, so that status shows what the
// node is doing while it changes something.
func (r *Runner) runPhase(ctx context.Context, p Phase, facts *Facts, log *slog.Logger, started time.Time, lag *lagging) PhaseStatus {
	now := r.clock()
	ps := PhaseStatus{Name: p.Name(), State: PhaseRunning, Started: started}
	cpu0 := processCPU()
	log = log.With("phase", ps.Name)
	var (
		progressMu   sync.Mutex // a phase may report from several goroutines
		lastProgress string
	)
	// catchUp writes what lags and marks this phase running (inside an Update).
	catchUp := func(st *State) {
		lag.apply(st)
		if cur := st.Phase(ps.Name); cur != nil && cur.State != PhaseRunning {
			*cur = PhaseStatus{Name: ps.Name, State: PhaseRunning, Started: ps.Started}
		}
	}
	ctx = withProgress(ctx, func(msg string) {
		progressMu.Lock()
		defer progressMu.Unlock()
		if msg == lastProgress {
			return
		}
		lastProgress = msg
		if _, err := r.Store.Update(func(st *State) {
			catchUp(st)
			if cur := st.Phase(ps.Name); cur != nil && cur.State == PhaseRunning {
				cur.Progress = msg
			}
		}); err != nil {
			log.Warn("record progress", "err", err)
		} else {
			lag.written()
		}
	})
	fail := func(step string, err error) PhaseStatus {
		ps.State = PhaseFailed
		ps.Error = step + ": " + err.Error()
		ps.Duration = Duration(now().Sub(ps.Started))
		if IsWaiting(err) {
			ps.State = PhaseWaiting
			log.Warn("phase waiting", "step", step, "reason", err, "duration", time.Duration(ps.Duration).Round(time.Millisecond))
			return ps
		}
		log.Error("phase failed", "step", step, "err", err, "duration", time.Duration(ps.Duration).Round(time.Millisecond))
		return ps
	}
	if err := ctx.Err(); err != nil {
		return fail("start", err)
	}
	if c, ok := p.(FactConsumer); ok {
		c.UseFacts(facts.Clone())
	}
	changes, err := p.Check(ctx)
	learn(p, facts)
	if err != nil {
		return fail("check", err)
	}
	if len(changes) > 0 {
		ps.Changed = true
		ps.Changes = changes
		log.Info("phase acting", "changes", len(changes))
		if lag.pending() {
			progressMu.Lock()
			if _, err := r.Store.Update(catchUp); err != nil {
				log.Warn("record the phases before this one", "err", err)
			} else {
				lag.written()
			}
			progressMu.Unlock()
		}
		if err := p.Act(ctx); err != nil {
			return fail("act", err)
		}
	}
	err = p.Verify(ctx)
	learn(p, facts)
	if err != nil {
		return fail("verify", err)
	}
	if w, ok := p.(Warner); ok {
		ps.Warnings = w.Warnings()
		for _, msg := range ps.Warnings {
			log.Warn("phase warning", "warning", msg)
		}
	}
	ps.State = PhaseDone
	ps.Duration = Duration(now().Sub(ps.Started))
	log.Info("phase done", "changed", ps.Changed, "duration", time.Duration(ps.Duration).Round(time.Millisecond),
		"cpu", (processCPU() - cpu0).Round(time.Millisecond))
	return ps
}

// learn lets a producing phase add what it found to the run's facts.
func learn(p Phase, facts *Facts) {
	if fp, ok := p.(FactProducer); ok {
		fp.LearnFacts(facts)
	}
}

// PlannedPhase is what one phase would change.
type PlannedPhase struct {
	Name    string   `json:"name"`
	Changes []Change `json:"changes"`
	Error   string   `json:"error,omitempty"`
}

// Plan runs every phase's Check and changes nothing. A phase whose check fails is
// reported with its error and the plan goes on, so one problem does not hide others.
// facts are what earlier runs recorded; what the checks find is passed on as in Run.
func Plan(ctx context.Context, phases []Phase, facts Facts) []PlannedPhase {
	out := make([]PlannedPhase, 0, len(phases))
	for _, p := range phases {
		if c, ok := p.(FactConsumer); ok {
			c.UseFacts(facts.Clone())
		}
		changes, err := p.Check(ctx)
		learn(p, &facts)
		pp := PlannedPhase{Name: p.Name(), Changes: changes}
		if err != nil {
			pp.Error = err.Error()
		}
		out = append(out, pp)
	}
	return out
}

// PhaseError is a failed phase, as returned by Runner.Run.
type PhaseError struct {
	Phase   string
	Message string
	// Waiting: the phase waits on something outside this node (WaitError).
	Waiting bool
}

func (e *PhaseError) Error() string { return "phase " + e.Phase + ": " + firstLine(e.Message) }

// Unwrap lets IsWaiting see through a waiting phase's error.
func (e *PhaseError) Unwrap() error {
	if e.Waiting {
		return &WaitError{Reason: e.Message}
	}
	return nil
}

// IsPhaseError reports whether err is a failed phase.
func IsPhaseError(err error) bool {
	var pe *PhaseError
	return errors.As(err, &pe)
}

func (r *Runner) clock() func() time.Time {
	if r.now != nil {
		return r.now
	}
	return time.Now
}

func (r *Runner) logger() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

func mergeNode(old, cur NodeInfo) NodeInfo {
	if cur.Name == "" && cur.InstanceID == "" {
		return old
	}
	return cur
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
