// Package doctor runs read-only checks of a node and names, for each one that
// is not right, the cause and the fix: what `nodeagent doctor` prints. A check
// changes nothing on the host or in AWS (AWS permissions are probed with dry
// runs where AWS has them).
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is how one check came out, from best to worst.
type Result string

const (
	OK   Result = "ok"
	Skip Result = "skip" // does not apply to this node (e.g. etcd volumes on a worker)
	Warn Result = "warn"
	Fail Result = "fail"
)

func (r Result) rank() int {
	switch r {
	case Fail:
		return 3
	case Warn:
		return 2
	case Skip:
		return 1
	}
	return 0
}

// Finding is one check's outcome.
type Finding struct {
	Check  string `json:"check"`
	Result Result `json:"result"`
	// Message says what was found; for warn and fail it is the cause.
	Message string `json:"message"`
	// Fix says what to do about a warn or fail.
	Fix string `json:"fix,omitempty"`
}

// Report is every finding of one doctor run.
type Report struct {
	Node      string    `json:"node,omitempty"`
	CheckedAt time.Time `json:"checkedAt"`
	Worst     Result    `json:"worst"`
	Findings  []Finding `json:"findings"`
}

// Check is one named check; Run returns one finding or more (one per
// certificate, say). A check that cannot run returns a finding saying so.
type Check struct {
	Name string
	Run  func(ctx context.Context) []Finding
}

// DefaultCheckTimeout bounds one check, so one hung endpoint does not hang the
// report.
const DefaultCheckTimeout = 10 * time.Second

// Run runs the checks in order, each under its own deadline.
func Run(ctx context.Context, node string, checks []Check, timeout time.Duration) Report {
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	rep := Report{Node: node, CheckedAt: time.Now().UTC().Truncate(time.Second), Worst: OK}
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		fs := c.Run(cctx)
		cancel()
		for _, f := range fs {
			if f.Check == "" {
				f.Check = c.Name
			}
			if f.Result.rank() > rep.Worst.rank() {
				rep.Worst = f.Result
			}
			rep.Findings = append(rep.Findings, f)
		}
	}
	return rep
}

// Exit codes of `nodeagent doctor`.
const (
	ExitOK      = 0
	ExitWarning = 1
	ExitFailure = 2
)

// ExitCode is 0 when every check is ok (or skipped), 1 with a warning, 2 with
// a failure.
func (r Report) ExitCode() int {
	switch r.Worst {
	case Fail:
		return ExitFailure
	case Warn:
		return ExitWarning
	}
	return ExitOK
}

// Find returns the findings of one check.
func (r Report) Find(check string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Check == check {
			out = append(out, f)
		}
	}
	return out
}

// Write prints the report as a table (format "table" or "") or JSON.
func (r Report) Write(w io.Writer, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "table", "":
	default:
		return fmt.Errorf("unknown output format %q (table or json)", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tFINDING")
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Check, strings.ToUpper(string(f.Result)), f.Message)
		if f.Fix != "" && (f.Result == Warn || f.Result == Fail) {
			fmt.Fprintf(tw, "\t\t  fix: %s\n", f.Fix)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	counts := map[Result]int{}
	for _, f := range r.Findings {
		counts[f.Result]++
	}
	_, err := fmt.Fprintf(w, "\n%d ok, %d warning(s), %d failure(s), %d skipped\n", counts[OK], counts[Warn], counts[Fail], counts[Skip])
	return err
}

func ok(msg string, a ...any) []Finding {
	return []Finding{{Result: OK, Message: fmt.Sprintf(msg, a...)}}
}

func skip(msg string, a ...any) []Finding {
	return []Finding{{Result: Skip, Message: fmt.Sprintf(msg, a...)}}
}

func warn(fix, msg string, a ...any) []Finding {
	return []Finding{{Result: Warn, Message: fmt.Sprintf(msg, a...), Fix: fix}}
}

func fail(fix, msg string, a ...any) []Finding {
	return []Finding{{Result: Fail, Message: fmt.Sprintf(msg, a...), Fix: fix}}
}
