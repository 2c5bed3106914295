// Command nodeagent turns an EC2 instance into a Kubernetes node. This file only
// parses flags and calls package agent; see DESIGN.md for the command contract.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const usage = `nodeagent turns an EC2 instance into a Kubernetes node.

Usage:
  nodeagent bootstrap [--config FILE]        boot this node (EC2 user-data when no --config)
  nodeagent plan [--config FILE]             show what bootstrap would change; change nothing
  nodeagent run                              the daemon: reconcile drift, gossip, readiness, status API
  nodeagent status [-o table|json|yaml] [--cluster]
  nodeagent config check FILE|-              validate a NodeConfig
  nodeagent bake --config FILE [--root DIR]  prefetch and install verified assets (Packer)
  nodeagent version

Global flags (before or after the command):
  --root DIR          host filesystem root (default /)
  --state-dir DIR     state directory (default /var/lib/nodeagent)
  --log-format FMT    text or json (default text)
  --log-level LEVEL   debug, info, warn or error (default info)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, rest := args[0], args[1:]
	if cmd == "config" {
		if len(rest) == 0 || rest[0] != "check" {
			fmt.Fprintln(stderr, "usage: nodeagent config check FILE|-")
			return 2
		}
		cmd, rest = "config check", rest[1:]
	}

	fs := flag.NewFlagSet("nodeagent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", "/", "host filesystem root")
	stateDir := fs.String("state-dir", agent.DefaultStateDir, "state directory")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level")
	configFile := fs.String("config", "", "NodeConfig file ('-' for stdin)")
	output := fs.String("o", "table", "output format: table, json or yaml")
	cluster := fs.Bool("cluster", false, "status: every node as the gossip ring sees it")
	socket := fs.String("socket", agent.DefaultSocket, "status API socket")
	reconcile := fs.Duration("reconcile-interval", time.Minute, "run: how often to repair drift")
	if err := fs.Parse(rest); err != nil {
		return 2
	}

	log, err := newLogger(*logFormat, *logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	slog.SetDefault(log)
	opts := agent.Options{
		Root: fsutil.Root(*root), StateDir: *stateDir, ConfigFile: *configFile, Stdin: stdin, Log: log,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "nodeagent %s (commit %s, %s)\n", agent.Version, agent.Commit, runtime.Version())
		return 0
	case "config check":
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: nodeagent config check FILE|-")
			return 2
		}
		return agent.CheckConfig(fs.Arg(0), stdin, stdout)
	case "status":
		var code int
		if *cluster {
			code, err = agent.ClusterStatus(ctx, fsutil.Root(*root).Path(*socket), stdout, *output)
		} else {
			code, err = agent.Status(opts, stdout, *output)
		}
		if err != nil {
			fmt.Fprintln(stderr, "nodeagent status:", err)
			return agent.StatusUnknown
		}
		return code
	case "plan":
		return exitOn(stderr, cmd, agent.Plan(ctx, opts, stdout, *output))
	case "bootstrap":
		return exitOn(stderr, cmd, agent.Bootstrap(ctx, opts))
	case "run":
		return exitOn(stderr, cmd, agent.Run(ctx, opts, agent.RunOptions{
			Socket: fsutil.Root(*root).Path(*socket), ReconcileInterval: *reconcile,
		}))
	case "bake":
		if *configFile == "" {
			fmt.Fprintln(stderr, "usage: nodeagent bake --config FILE [--root DIR]")
			return 2
		}
		return exitOn(stderr, cmd, agent.Bake(ctx, opts))
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

// exitOn prints a failed command's reason on one line, as scripts and cloud-init
// logs want it.
func exitOn(stderr io.Writer, cmd string, err error) int {
	if err == nil {
		return 0
	}
	var ce agent.ExitError
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "nodeagent %s: %v\n", cmd, err)
		return ce.Code
	}
	fmt.Fprintf(stderr, "nodeagent %s: %v\n", cmd, err)
	return 1
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
