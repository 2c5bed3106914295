// Package cli is nodeagent's command tree (spf13/cobra): every command with its
// own flags, help, examples and exit codes. It only parses the command line and
// calls package agent; see DESIGN.md ("Binary and commands") for the contract.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// Exit codes every command shares.
const (
	exitOK    = 0
	exitUsage = 2 // a bad command line: unknown command or flag, missing argument
)

// exitCode ends a command with a code; its reason is already printed.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit %d", int(c)) }

// usageError is a bad command line: it exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// globals are the persistent flags every command has.
type globals struct {
	root, stateDir, logFormat, logLevel string
	log                                 *slog.Logger
	stdin                               io.Reader
}

func (g *globals) options(configFile string) agent.Options {
	return agent.Options{Root: fsutil.Root(g.root), StateDir: g.stateDir, ConfigFile: configFile, Stdin: g.stdin, Log: g.log}
}

// New builds the command tree writing to stdout and stderr and reading stdin.
func New(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin}
	root := &cobra.Command{
		Use:   "nodeagent",
		Short: "Turn an EC2 instance into a Kubernetes node",
		Long: `nodeagent turns an EC2 instance into a Kubernetes node: one static binary that
boots the node from its NodeConfig (EC2 user-data or --config FILE), keeps it
converged as a daemon, and tells what happened on it.

Global flags (--root, --state-dir, --log-format, --log-level) go before or after
the command. Logs go to stderr; data (status, plan, ...) to stdout. Each
command's help lists its exit codes; a bad command line (unknown command or
flag, missing argument) exits 2 on every command.`,
		Example: `  # Where is this node's boot at?
  nodeagent status
  # Which phases are not done yet?
  nodeagent status -o json | jq '.phases[] | select(.state != "done")'
  # What would bootstrap change, with this config?
  nodeagent plan --config node.yaml`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(g.logFormat, g.logLevel, stderr)
			if err != nil {
				return usageError{err.Error()}
			}
			g.log = log
			slog.SetDefault(log)
			return nil
		},
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.root, "root", "/", "host filesystem root; every host path is resolved under it")
	pf.StringVar(&g.stateDir, "state-dir", agent.DefaultStateDir, "state directory")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	root.AddCommand(
		bootstrapCmd(g),
		planCmd(g, stdout),
		runCmd(g),
		statusCmd(g, stdout, stderr),
		validateCmd(g, stdout, stderr),
		configCmd(g, stdout),
		bakeCmd(g),
		versionCmd(stdout),
		doctorCmd(g, stdout),
		supportCmd(g, stdout, stderr),
		etcdCmd(g, stdout),
		drainCmd(g, stdout, stderr),
		gossipCmd(g, stdout),
	)
	root.InitDefaultCompletionCmd()
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{err.Error() + hint(cmd, err)}
	})
	for _, c := range root.Commands() {
		c.DisableAutoGenTag = true
	}
	return root
}

func configFlag(c *cobra.Command, dst *string, usage string) {
	c.Flags().StringVar(dst, "config", "", usage)
}

func outputFlag(c *cobra.Command, dst *string, def, formats string) {
	c.Flags().StringVarP(dst, "output", "o", def, "output format: "+formats)
}

func bootstrapCmd(g *globals) *cobra.Command {
	var configFile string
	c := &cobra.Command{
		Use:   "bootstrap",
		Short: "Boot this node (from EC2 user-data, or --config FILE)",
		Long: `Boot this node once: load and validate the NodeConfig (EC2 user-data over
IMDSv2, or --config FILE), then host prep, install, (control plane: volumes,
PKI, manifests), start units, and wait for readiness. Progress is recorded in
the state directory, where 'nodeagent status' reads it.

Exit codes:
  0  the node is ready
  *  not ready; the reason is printed on one line to stderr`,
		Example: `  # On EC2, from user-data (what cloud-init runs)
  nodeagent bootstrap
  # From a file
  nodeagent bootstrap --config node.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.Bootstrap(cmd.Context(), g.options(configFile)))
		},
	}
	configFlag(c, &configFile, "NodeConfig file ('-' for stdin); default: EC2 user-data")
	return c
}

func planCmd(g *globals, stdout io.Writer) *cobra.Command {
	var configFile, output string
	c := &cobra.Command{
		Use:   "plan",
		Short: "Show what bootstrap would change; change nothing",
		Long: `Show what 'nodeagent bootstrap' would change on this node (files, units,
volumes), phase by phase, and change nothing.

Exit codes:
  0  the plan was printed
  1  the NodeConfig is invalid (or the plan could not be made)`,
		Example: `  nodeagent plan --config node.yaml
  # Only the phases that would change something
  nodeagent plan --config node.yaml -o json | jq '.[] | select(.changes)'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.Plan(cmd.Context(), g.options(configFile), stdout, output))
		},
	}
	configFlag(c, &configFile, "NodeConfig file ('-' for stdin); default: EC2 user-data")
	outputFlag(c, &output, "table", "table, json or yaml")
	return c
}

func runCmd(g *globals) *cobra.Command {
	var (
		configFile string
		socket     string
		ro         agent.RunOptions
	)
	c := &cobra.Command{
		Use:   "run",
		Short: "The daemon: reconcile drift, gossip, readiness, status API",
		Long: `Run the daemon behind nodeagent.service (Type=notify): serve the status API
on a unix socket, join the gossip ring, re-check every phase and repair drift,
and keep readiness current. It follows the node's config: the inputs bootstrap
ran with (user-data or its --config file, the state store's cluster.yaml) are
re-read every --config-interval; a change the node can take is applied in place,
one that needs a new instance is refused and reported as needs-replacement.

Exit codes:
  0  stopped (SIGTERM or SIGINT)
  *  failed; the reason is printed on one line to stderr`,
		Example: `  # What nodeagent.service runs
  nodeagent run
  # Repair drift more often
  nodeagent run --reconcile-interval 15s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ro.Socket = fsutil.Root(g.root).Path(socket)
			return exitOn(cmd, agent.Run(cmd.Context(), g.options(configFile), ro))
		},
	}
	configFlag(c, &configFile, "NodeConfig file ('-' for stdin); default: the config bootstrap ran with")
	socketFlag(c, &socket)
	c.Flags().DurationVar(&ro.ReconcileInterval, "reconcile-interval", time.Minute, "how often every phase is re-checked and drift repaired")
	c.Flags().DurationVar(&ro.ReadinessInterval, "readiness-interval", 10*time.Second, "how often readiness is re-evaluated and reported")
	c.Flags().DurationVar(&ro.ConfigInterval, "config-interval", agent.DefaultConfigInterval, "how often the config inputs (user-data, cluster.yaml) are re-read; a change is applied at once")
	return c
}

func socketFlag(c *cobra.Command, dst *string) {
	c.Flags().StringVar(dst, "socket", agent.DefaultSocket, "status API unix socket (under --root)")
}

func statusCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	var (
		output, socket string
		cluster, watch bool
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show what happened on this node (or, --cluster, on every node)",
		Long: `Show what happened on this node: each phase with its state, start, duration
and error; volumes, units, gossip peers. It reads the state file, so it works
whether or not the daemon runs.

With --cluster, show every node's readiness as the gossip ring sees it, asking
the local daemon over its status API socket.

With -w (--watch), follow a boot as it happens, from a second session while
bootstrap runs: each phase as it starts and ends with its duration, what a
running phase waits on, downloads with bytes and rate; it ends when the node
is ready (0) or a phase fails (1). A phase waiting on other nodes is followed
on into the daemon's runs.

Exit codes:
  0  ready (--cluster: every node alive and ready)
  1  not ready
  2  unknown: nothing recorded yet, or the state cannot be read`,
		Example: `  nodeagent status
  # Phases that are not done
  nodeagent status -o json | jq '.phases[] | select(.state != "done")'
  # Wait in a script until the node is ready
  until nodeagent status >/dev/null; do sleep 5; done
  # Every node the gossip ring knows
  nodeagent status --cluster
  # Follow the boot from a second SSH session
  nodeagent status -w`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var (
				code int
				err  error
			)
			switch {
			case watch && cluster:
				return usagef("--watch follows this node's boot; it does not go with --cluster")
			case watch:
				code, err = agent.WatchStatus(cmd.Context(), g.options(""), stdout, agent.WatchInterval)
			case cluster:
				code, err = agent.ClusterStatus(cmd.Context(), fsutil.Root(g.root).Path(socket), stdout, output)
			default:
				code, err = agent.Status(g.options(""), stdout, output)
			}
			if err != nil {
				fmt.Fprintln(stderr, "nodeagent status:", err)
				return exitCode(agent.StatusUnknown)
			}
			return exitCode(code)
		},
	}
	outputFlag(c, &output, "table", "table, json or yaml")
	c.Flags().BoolVar(&cluster, "cluster", false, "every node's readiness as the gossip ring sees it")
	c.Flags().BoolVarP(&watch, "watch", "w", false, "follow a boot as it happens until the node is ready or a phase fails")
	socketFlag(c, &socket)
	return c
}

func configCmd(g *globals, stdout io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Work with NodeConfig files",
		Long:  `Work with NodeConfig files (the YAML in EC2 user-data, or --config FILE).`,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("nodeagent config needs a command: nodeagent config check FILE|-")
			}
			return unknownCommand(cmd, args[0])
		},
	}
	var output string
	check := &cobra.Command{
		Use:   "check FILE|-",
		Short: "Validate a NodeConfig; list every problem with its field path",
		Long: `Validate a NodeConfig file ('-' reads stdin; user-data wrapped in MIME
multi-part is accepted). Every problem is listed with its field path, e.g.
spec.cluster.name.

Exit codes:
  0  valid
  1  invalid, or unreadable`,
		Example: `  nodeagent config check node.yaml
  # The user-data this instance booted with
  curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/user-data | nodeagent config check -
  # Problems as JSON
  nodeagent config check -o json node.yaml | jq -r '.problems[].path'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("usage: nodeagent config check FILE|-")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "text", "":
				return exitCode(agent.CheckConfig(args[0], g.stdin, stdout))
			case "json", "yaml":
				return exitCode(agent.CheckConfigFormat(args[0], g.stdin, stdout, output))
			}
			return usagef("-o must be text, json or yaml, got %q", output)
		},
	}
	outputFlag(check, &output, "text", "text, json or yaml")
	c.AddCommand(check)
	return c
}

func bakeCmd(g *globals) *cobra.Command {
	var configFile string
	c := &cobra.Command{
		Use:   "bake --config FILE [--root DIR]",
		Short: "Prefetch and install verified assets into an image (Packer)",
		Long: `For image builds (Packer): fetch and verify every asset and image archive
into the cache and install the binaries under --root, starting nothing, so
that a node booted from the image needs no network for them.

Exit codes:
  0  baked
  *  failed; the reason is printed on one line to stderr`,
		Example: `  # In a Packer shell provisioner
  nodeagent bake --config node.yaml
  # Into a mounted image
  nodeagent bake --config node.yaml --root /mnt/image`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile == "" {
				return usagef("usage: nodeagent bake --config FILE [--root DIR]")
			}
			return exitOn(cmd, agent.Bake(cmd.Context(), g.options(configFile)))
		},
	}
	configFlag(c, &configFile, "NodeConfig file ('-' for stdin); required")
	return c
}

// noArgs rejects positional arguments with exit code 2.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%q takes no arguments, got %q; see '%s --help'", cmd.CommandPath(), args, cmd.CommandPath())
	}
	return nil
}

// exitOn prints a failed command's reason on one line, as scripts and cloud-init
// logs want it, and ends with the error's exit code (agent.ExitError), else 1.
func exitOn(cmd *cobra.Command, err error) error {
	if err == nil {
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", cmd.CommandPath(), err)
	var ce agent.ExitError
	if errors.As(err, &ce) {
		return exitCode(ce.Code)
	}
	return exitCode(1)
}

func unknownCommand(cmd *cobra.Command, name string) error {
	cmd.SuggestionsMinimumDistance = 2
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return usagef("%s\nRun '%s --help' for usage.", msg, cmd.CommandPath())
}

// hint names the commands that have the flag a command was given but lacks.
func hint(cmd *cobra.Command, err error) string {
	name, short := flagInError(err.Error())
	if name == "" {
		return fmt.Sprintf("\nRun '%s --help' for its flags.", cmd.CommandPath())
	}
	var owners []string
	walk(cmd.Root(), func(c *cobra.Command) {
		var f *pflag.Flag
		if short {
			f = c.LocalNonPersistentFlags().ShorthandLookup(name)
		} else {
			f = c.LocalNonPersistentFlags().Lookup(name)
		}
		if f != nil && c != cmd {
			owners = append(owners, "`"+c.CommandPath()+"`")
		}
	})
	spelled := "--" + name
	if short {
		spelled = "-" + name
	}
	if len(owners) == 0 {
		return fmt.Sprintf("\n%s is not a flag of any nodeagent command; run '%s --help' for its flags.", spelled, cmd.CommandPath())
	}
	sort.Strings(owners)
	return fmt.Sprintf("\n%s is a flag of %s, not of `%s`.", spelled, strings.Join(owners, ", "), cmd.CommandPath())
}

// flagInError finds the flag pflag complains about: "unknown flag: --name",
// "unknown shorthand flag: 'o' in -o".
func flagInError(msg string) (name string, short bool) {
	if rest, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		name, _, _ = strings.Cut(rest, "=")
		return name, false
	}
	if rest, ok := strings.CutPrefix(msg, "unknown shorthand flag: '"); ok && len(rest) > 1 {
		return rest[:1], true
	}
	return "", false
}

func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	default:
		return nil, fmt.Errorf("--log-format must be text or json, got %q", format)
	}
}

// Execute runs the command line args (without the program name) and returns
// the process's exit code.
func Execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := New(stdin, stdout, stderr)
	root.SetArgs(normalizeArgs(root, args))
	err := root.ExecuteContext(ctx)
	var code exitCode
	var uerr usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &uerr):
		fmt.Fprintln(stderr, "nodeagent:", uerr.msg)
		return exitUsage
	default:
		// cobra's own: unknown command (with suggestions), bad arguments.
		fmt.Fprintln(stderr, "nodeagent:", err)
		if strings.HasPrefix(err.Error(), "unknown command") {
			fmt.Fprintln(stderr, "Run 'nodeagent --help' for usage.")
		}
		return exitUsage
	}
}

// normalizeArgs keeps the Go flag package's spellings working: "-config FILE"
// and "-config=FILE" become "--config FILE" and "--config=FILE" for every long
// flag (longer than one letter) that some command has. Everything after "--" is
// left alone.
func normalizeArgs(root *cobra.Command, args []string) []string {
	long := map[string]bool{"help": true}
	walk(root, func(c *cobra.Command) {
		fs := []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()}
		for _, f := range fs {
			f.VisitAll(func(fl *pflag.Flag) { long[fl.Name] = true })
		}
	})
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && long[name] {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}
