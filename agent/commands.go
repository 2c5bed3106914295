package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/images"
)

// ExitError carries a specific exit code for a command's failure.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string { return e.Err.Error() }
func (e ExitError) Unwrap() error { return e.Err }

// Bootstrap boots the node: it loads and validates the config before touching the
// host, runs every phase, and reports the outcome upward (state file, lifecycle
// hook). It returns nil only when the node is ready.
func Bootstrap(ctx context.Context, o Options) error {
	leanOneShotCPU()
	log := o.log()
	log.Debug("bootstrap started")
	n, err := LoadNode(ctx, o, needIdentity)
	if err != nil {
		return err
	}
	log.Info("bootstrapping", "node", n.Name, "cluster", n.Config.Spec.Cluster.Name,
		"role", n.Config.Spec.Role, "instance", n.Identity.InstanceID, "config", n.ConfigHash)
	ps, err := buildPhases(ctx, o, n)
	if err != nil {
		return err
	}
	defer ps.close()
	// The config is decided under the run lock: the daemon's reconcile, which
	// takes it too, then re-reads the inputs kept here and runs this config, not
	// the one it had (bootstrap and the daemon never fight).
	unlock, err := o.store().LockRun(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	applied, _, err := loadApplied(o)
	if err != nil {
		log.Warn("the applied config is unreadable; taking the new one as the first", "err", err)
	}
	if err := admit(applied, n); err != nil {
		if rerr := recordRejected(ctx, o, n, n.ConfigHash, err); rerr != nil {
			log.Error("record the refused config", "err", rerr)
		}
		return err
	}
	if err := recordApplied(ctx, o, n); err != nil {
		return err
	}
	runner := &bootstrap.Runner{Store: o.store(), Log: log, Node: n.Info(), ConfigHash: n.ConfigHash, RecordBoot: true}
	// A launch into a warm pool prepares and stops short of joining (warm.go).
	if inPool, err := bootWarm(ctx, n, ps, runner, log); inPool || err != nil {
		return err
	}
	if err := runner.RunHeld(ctx, ps.phases); err != nil {
		if bootstrap.IsWaiting(err) {
			// Waiting on others (a master on its peers) is not a failed launch:
			// the daemon, already running, keeps at it, heartbeats the launch
			// hook and completes it once the node is ready.
			ps.readiness.wait(err)
			return fmt.Errorf("not ready yet, nodeagent.service keeps waiting: %w", err)
		}
		ps.readiness.abandon(ctx, err)
		return err
	}
	return nil
}

// Plan prints what bootstrap would change and changes nothing. An invalid config
// exits 1.
func Plan(ctx context.Context, o Options, w io.Writer, format string) error {
	n, err := LoadNode(ctx, o, identityIfAvailable)
	if err != nil {
		var verr config.ValidationError
		if errors.As(err, &verr) {
			return ExitError{Code: 1, Err: err}
		}
		return err
	}
	applied, _, err := loadApplied(o)
	if err != nil {
		o.log().Warn("planning without the applied config", "err", err)
	}
	changes := config.Classify(applied, n.Config)
	if format != "json" && format != "yaml" && len(changes) > 0 {
		fmt.Fprintf(w, "Config %s → %s:\n", hashConfig(applied), n.ConfigHash)
		for _, c := range changes {
			fmt.Fprintf(w, "  %s\n", c)
		}
		if rep := config.Replacements(changes); len(rep) > 0 {
			fmt.Fprintf(w, "\nneeds-replacement: %d change(s) need a new instance; bootstrap refuses this config and the node keeps running as it is.\n", len(rep))
			return nil
		}
		fmt.Fprintln(w)
	}
	ps, err := buildPhases(ctx, o, n)
	if err != nil {
		return err
	}
	defer ps.close()
	var facts bootstrap.Facts
	if st, err := o.store().Load(); err == nil {
		facts = st.Facts
	} else {
		o.log().Warn("planning without what earlier runs learned", "err", err)
	}
	plan := bootstrap.Plan(ctx, ps.phases, facts)
	switch format {
	case "json", "yaml":
		b, err := json.MarshalIndent(plan, "", "  ")
		if err == nil && format == "yaml" {
			b, err = yaml.JSONToYAML(b)
		}
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	fmt.Fprintf(w, "Plan for %s (%s, %s):\n", n.Name, n.Config.Spec.Cluster.Name, n.Config.Spec.Role)
	total := 0
	for _, p := range plan {
		switch {
		case p.Error != "":
			fmt.Fprintf(w, "\n%s: cannot tell: %s\n", p.Name, p.Error)
		case len(p.Changes) == 0:
			fmt.Fprintf(w, "\n%s: up to date\n", p.Name)
		default:
			fmt.Fprintf(w, "\n%s:\n", p.Name)
			for _, c := range p.Changes {
				fmt.Fprintf(w, "  %s\n", c)
			}
			total += len(p.Changes)
		}
	}
	if total == 0 {
		fmt.Fprintln(w, "\nNo changes: the node is converged.")
		return nil
	}
	fmt.Fprintf(w, "\n%d change(s).\n", total)
	return nil
}

// Bake fetches and verifies every asset and image archive into the cache and
// installs the binaries, starting nothing, so that an image built by Packer boots
// without network. Image archives are also imported when the container runtime
// already answers on its socket.
func Bake(ctx context.Context, o Options) error {
	raw, err := readConfigFile(o)
	if err != nil {
		return err
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return err
	}
	inst := &assets.Installer{Root: o.Root, HTTP: &http.Client{Timeout: 10 * time.Minute}, Log: o.log()}
	if awsCfg, err := cloud.LoadConfig(ctx); err == nil {
		inst.S3 = cloud.NewS3(awsCfg)
	}
	if err := inst.Bake(ctx, cfg.Spec.Assets); err != nil {
		return fmt.Errorf("bake: %w", err)
	}
	o.log().Info("baked assets", "count", len(cfg.Spec.Assets), "root", string(o.Root))
	// Image archives go into the cache too; when the runtime runs during the
	// bake (its socket answers), they are imported as well.
	imp := images.NewPhase(images.Options{
		Root: o.Root, Runtime: cfg.Spec.ContainerRuntime, Archives: cfg.Spec.Images.Archives, Fetcher: inst, StateDir: o.StateDir, Log: o.log(),
	})
	imported, err := imp.Bake(ctx)
	if err != nil {
		return fmt.Errorf("bake: %w", err)
	}
	if n := len(cfg.Spec.Images.Archives); n > 0 {
		o.log().Info("baked image archives", "count", n, "imported", imported)
	}
	return nil
}

// ClusterStatus prints every node the gossip ring knows, as the local daemon sees it.
func ClusterStatus(ctx context.Context, socket string, w io.Writer, format string) (int, error) {
	var members []ClusterMember
	if err := queryAPI(ctx, socket, "/cluster", &members); err != nil {
		return StatusUnknown, err
	}
	allReady := len(members) > 0
	for _, m := range members {
		allReady = allReady && m.Ready && m.State == "alive"
	}
	code := StatusNotReady
	if allReady {
		code = StatusReady
	}
	switch format {
	case "json", "yaml":
		b, err := json.MarshalIndent(members, "", "  ")
		if err == nil && format == "yaml" {
			b, err = yaml.JSONToYAML(b)
		}
		if err != nil {
			return StatusUnknown, err
		}
		_, err = w.Write(append(b, '\n'))
		return code, err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tIP\tSTATE\tREADY\tPOD CIDR\tSINCE\tLAST SEEN\tINCARNATION")
	now := time.Now()
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	}
	for _, m := range members {
		inc := "-"
		if m.Incarnation != 0 {
			inc = strconv.FormatUint(m.Incarnation, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Role, m.IP, m.State, yesNo(m.Ready), orDash(m.PodCIDR),
			ago(m.Since), ago(m.LastSeen), inc)
	}
	return code, tw.Flush()
}
