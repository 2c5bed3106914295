package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// WatchInterval is how often `status -w` reads the state file.
const WatchInterval = 250 * time.Millisecond

// WatchStatus follows a boot as it happens, from the state file bootstrap
// writes after every step (so it works from a second SSH session): each
// phase as it starts and ends with its duration, what a running phase does or
// waits on (downloads with bytes and rate), until the node is ready (exit 0)
// or a phase fails (exit 1). A phase that waits on others (a master on its
// peers) is not the end: the daemon's runs that follow are followed too.
func WatchStatus(ctx context.Context, o Options, w io.Writer, interval time.Duration) (int, error) {
	if interval <= 0 {
		interval = WatchInterval
	}
	var (
		run       time.Time
		seen      map[string]bootstrap.PhaseStatus
		announced bool
		ended     time.Time // FinishedAt of the run whose end was reported
	)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		_, statErr := os.Stat(o.store().Path())
		switch {
		case errors.Is(statErr, fs.ErrNotExist):
			if !announced {
				fmt.Fprintf(w, "waiting for a boot to start (no state at %s yet)\n", o.store().Path())
				announced = true
			}
		case statErr != nil:
			return StatusUnknown, statErr
		default:
			st, err := o.store().Load()
			if err != nil {
				return StatusUnknown, err
			}
			if !st.StartedAt.IsZero() && !st.StartedAt.Equal(run) {
				// The daemon's run can follow the boot's so closely that the
				// boot's last steps were never seen: its timeline tells them.
				if b := st.Boot; b != nil && seen != nil && b.StartedAt.Equal(run) && !b.FinishedAt.Equal(ended) {
					ended = b.FinishedAt
					if code, done := watchBootEnd(w, b, seen); done {
						return code, nil
					}
				}
				run, seen = st.StartedAt, map[string]bootstrap.PhaseStatus{}
				n := st.Node
				fmt.Fprintf(w, "%s run started: node %s (%s, %s), %d phases\n", st.StartedAt.Format("15:04:05"), orDash(n.Name), orDash(n.Cluster), orDash(n.Role), len(st.Phases))
			}
			if seen != nil {
				watchPhases(w, st, seen)
				if fin := st.FinishedAt; !fin.IsZero() && !fin.Before(st.StartedAt) && !fin.Equal(ended) {
					ended = fin
					took := fin.Sub(st.StartedAt).Round(time.Millisecond)
					switch {
					case st.Error == "" && st.Readiness.Ready:
						fmt.Fprintf(w, "%s ready: every phase done in %s\n", at(fin, run), took)
						return StatusReady, nil
					case st.Error == "":
						fmt.Fprintf(w, "%s run done in %s but not ready: %s\n", at(fin, run), took, st.Readiness.Reason)
						return StatusNotReady, nil
					case waiting(st):
						fmt.Fprintf(w, "%s waiting, not failed (%s); nodeagent.service keeps trying, following its runs\n", at(fin, run), st.Error)
					default:
						fmt.Fprintf(w, "%s failed after %s: %s\n", at(fin, run), took, st.Error)
						return StatusNotReady, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return StatusUnknown, ctx.Err()
		case <-t.C:
		}
	}
}

// watchBootEnd prints the rest of a boot from its recorded timeline; done is
// true when the boot ended the watch (ready, or failed).
func watchBootEnd(w io.Writer, b *bootstrap.BootRecord, seen map[string]bootstrap.PhaseStatus) (code int, done bool) {
	for _, p := range b.Phases {
		if prev, had := seen[p.Name]; had && prev.State == p.State {
			continue
		}
		dur := time.Duration(p.Duration).Round(time.Millisecond)
		switch p.State {
		case bootstrap.PhaseDone:
			fmt.Fprintf(w, "%s %s done in %s\n", at(p.Started.Add(dur), b.StartedAt), p.Name, dur)
		case bootstrap.PhaseFailed, bootstrap.PhaseWaiting:
			fmt.Fprintf(w, "%s %s %s after %s\n", at(p.Started.Add(dur), b.StartedAt), p.Name, p.State, dur)
		}
	}
	took := b.FinishedAt.Sub(b.StartedAt).Round(time.Millisecond)
	switch b.Result {
	case string(bootstrap.PhaseDone):
		// bootstrap succeeds only when the node is ready.
		fmt.Fprintf(w, "%s ready: every phase done in %s\n", at(b.FinishedAt, b.StartedAt), took)
		return StatusReady, true
	case string(bootstrap.PhaseFailed):
		fmt.Fprintf(w, "%s failed after %s\n", at(b.FinishedAt, b.StartedAt), took)
		return StatusNotReady, true
	}
	fmt.Fprintf(w, "%s waiting, not failed; nodeagent.service keeps trying, following its runs\n", at(b.FinishedAt, b.StartedAt))
	return 0, false
}

// watchPhases prints what changed since the last look.
func watchPhases(w io.Writer, st *bootstrap.State, seen map[string]bootstrap.PhaseStatus) {
	for _, p := range st.Phases {
		prev, had := seen[p.Name]
		seen[p.Name] = p
		if had && prev.State == p.State && prev.Progress == p.Progress {
			continue
		}
		dur := time.Duration(p.Duration).Round(time.Millisecond)
		switch p.State {
		case bootstrap.PhaseRunning:
			if prev.State != bootstrap.PhaseRunning {
				fmt.Fprintf(w, "%s %s running\n", at(p.Started, st.StartedAt), p.Name)
			}
			if p.Progress != "" && p.Progress != prev.Progress {
				fmt.Fprintf(w, "%s   %s: %s (%s in the phase)\n", at(time.Now(), st.StartedAt), p.Name, p.Progress, time.Since(p.Started).Round(100*time.Millisecond))
			}
		case bootstrap.PhaseDone:
			changed := "nothing to change"
			if p.Changed {
				changed = fmt.Sprintf("%d change(s)", len(p.Changes))
			}
			fmt.Fprintf(w, "%s %s done in %s (%s)\n", at(p.Started.Add(dur), st.StartedAt), p.Name, dur, changed)
			for _, wm := range p.Warnings {
				fmt.Fprintf(w, "         warning: %s\n", wm)
			}
		case bootstrap.PhaseFailed:
			fmt.Fprintf(w, "%s %s FAILED after %s: %s\n", at(p.Started.Add(dur), st.StartedAt), p.Name, dur, p.Error)
		case bootstrap.PhaseWaiting:
			fmt.Fprintf(w, "%s %s waiting after %s: %s\n", at(p.Started.Add(dur), st.StartedAt), p.Name, dur, p.Error)
		case bootstrap.PhaseSkipped:
			fmt.Fprintf(w, "%s %s skipped\n", at(st.StartedAt, st.StartedAt), p.Name)
		}
	}
}

// at is a time as an offset into the run: "+12.345s".
func at(t, start time.Time) string {
	return fmt.Sprintf("%9s", "+"+t.Sub(start).Round(time.Millisecond).String())
}

func waiting(st *bootstrap.State) bool {
	for _, p := range st.Phases {
		if p.State == bootstrap.PhaseWaiting {
			return true
		}
	}
	return false
}
