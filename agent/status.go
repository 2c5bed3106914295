package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// Exit codes of `nodeagent status`.
const (
	StatusReady    = 0
	StatusNotReady = 1
	StatusUnknown  = 2
)

// Status prints the node's state in the given format (table, json or yaml) and
// returns the exit code: ready, not ready, or unknown (nothing recorded yet).
func Status(o Options, w io.Writer, format string) (int, error) {
	st, err := o.store().Load()
	if err != nil {
		return StatusUnknown, err
	}
	code := StatusNotReady
	if st.Readiness.Ready {
		code = StatusReady
	}
	if _, err := os.Stat(o.store().Path()); errors.Is(err, fs.ErrNotExist) {
		code = StatusUnknown
		if format != "json" && format != "yaml" {
			// Scripts asking for json or yaml get the (empty) state they parse.
			fmt.Fprintf(w, "no state at %s: nodeagent has not run on this node\n", o.store().Path())
			return code, nil
		}
	}
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return code, enc.Encode(st)
	case "yaml":
		b, err := yaml.Marshal(st)
		if err != nil {
			return StatusUnknown, err
		}
		_, err = w.Write(b)
		return code, err
	case "table", "":
		if err := WriteStatusTable(w, st); err != nil {
			return code, err
		}
		if es, err := LoadEtcdStatus(o); err == nil {
			return code, WriteEtcdTable(w, es, time.Now())
		}
		return code, nil
	default:
		return StatusUnknown, fmt.Errorf("unknown output format %q (table, json or yaml)", format)
	}
}

// WriteStatusTable renders the state for a person at a terminal.
func WriteStatusTable(w io.Writer, st *bootstrap.State) error {
	n := st.Node
	fmt.Fprintf(w, "Node:      %s", orDash(n.Name))
	if n.InstanceID != "" {
		fmt.Fprintf(w, " (%s, %s, %s, %s)", n.InstanceID, n.InstanceType, n.AvailabilityZone, n.PrivateIP)
	}
	fmt.Fprintf(w, "\nCluster:   %s  role: %s\n", orDash(n.Cluster), orDash(n.Role))
	ready := "no"
	if st.Readiness.Ready {
		ready = "yes"
	}
	if st.Readiness.Reason != "" {
		ready += " (" + st.Readiness.Reason + ")"
	}
	fmt.Fprintf(w, "Ready:     %s\n", ready)
	if !st.StartedAt.IsZero() {
		fmt.Fprintf(w, "Last run:  %s", st.StartedAt.Format(time.RFC3339))
		if !st.FinishedAt.IsZero() {
			fmt.Fprintf(w, ", took %s", st.FinishedAt.Sub(st.StartedAt).Round(time.Millisecond))
		} else {
			fmt.Fprint(w, ", still running or interrupted")
		}
		fmt.Fprintln(w)
	}
	if st.Error != "" {
		fmt.Fprintf(w, "Error:     %s\n", st.Error)
	}
	if ws := st.Warm; ws != nil && st.Readiness.Lifecycle == "" {
		fmt.Fprintf(w, "Warm pool: %s, prepared %s (kubelet not started)\n", ws.Target, ws.PreparedAt.Format(time.RFC3339))
	}
	if e := st.Exit; e != nil {
		state := "running"
		if !e.FinishedAt.IsZero() {
			state = "done in " + e.FinishedAt.Sub(e.StartedAt).Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "Exit:      %s (%s; nodeagent drain shows the steps)\n", e.Reason, state)
	}
	if gs := st.Gossip; gs != nil {
		fmt.Fprintf(w, "Gossip:    %s\n", gossipKeyLine(gs))
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPHASE\tSTATE\tSTARTED\tDURATION\tCHANGED\tERROR")
	var warnings []string
	for _, p := range st.Phases {
		started := "-"
		if !p.Started.IsZero() {
			started = p.Started.Format("15:04:05")
		}
		dur := "-"
		if p.State == bootstrap.PhaseDone || p.State == bootstrap.PhaseFailed {
			dur = time.Duration(p.Duration).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.State, started, dur, yesNo(p.Changed), p.Error)
		for _, wmsg := range p.Warnings {
			warnings = append(warnings, p.Name+": "+wmsg)
		}
	}
	if len(st.Volumes) > 0 {
		fmt.Fprintln(tw, "\nVOLUME\tETCD\tMEMBER\tDEVICE\tMOUNT\tSTATE")
		for _, v := range st.Volumes {
			member := v.Member
			if len(v.Members) > 0 {
				member += " of " + strings.Join(v.Members, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.EtcdCluster, member, orDash(v.Device), orDash(v.MountPoint), v.State)
		}
	}
	if len(st.Units) > 0 {
		fmt.Fprintln(tw, "\nUNIT\tACTIVE\tSUB\tENABLED")
		for _, u := range st.Units {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", u.Name, u.ActiveState, orDash(u.SubState), yesNo(u.Enabled))
		}
	}
	if len(st.Manifests) > 0 {
		fmt.Fprintln(tw, "\nMANIFEST\tPATH\tSHA256")
		for _, m := range st.Manifests {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.Path, short(m.SHA256))
		}
	}
	if len(st.Assets) > 0 {
		fmt.Fprintln(tw, "\nASSET\tPATH\tSHA256\tSOURCE")
		for _, a := range st.Assets {
			name := a.Name
			if a.Member != "" {
				name += ":" + a.Member // a file of an archive asset
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, a.Path, short(a.SHA256), orDash(a.Source))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(warnings) > 0 {
		fmt.Fprintln(w, "\nWarnings:")
		for _, wmsg := range warnings {
			fmt.Fprintln(w, "  "+wmsg)
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// gossipKeyLine says which gossip key generation the node sends with.
func gossipKeyLine(gs *bootstrap.GossipStatus) string {
	line := "single key (no keyring document)"
	if gs.KeyGeneration != 0 {
		line = fmt.Sprintf("key generation %d", gs.KeyGeneration)
		if len(gs.KeyGenerations) > 1 {
			line += fmt.Sprintf(" (accepts %v: a rotation is under way)", gs.KeyGenerations)
		}
	}
	if gs.KeyringError != "" {
		line += "; keyring document not applied: " + gs.KeyringError
	}
	return line
}
