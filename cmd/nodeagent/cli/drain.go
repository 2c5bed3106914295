package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

func drainCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	var socket string
	c := &cobra.Command{
		Use:   "drain",
		Short: "Take this node out gracefully: cordon, drain, leave the gossip ring",
		Long: `Take this node out of the cluster gracefully, as the daemon does when its Auto
Scaling group terminates the instance (scale-in, instance refresh) or a spot
interruption notice arrives: cordon the Node and evict its pods through the API
server (PodDisruptionBudgets honoured, bounded by spec.readiness.drainTimeout;
DaemonSet and mirror pods stay), on a master hand the raft leadership of its etcd
members to another member (the member list is not changed), then leave the
gossip ring so that every peer drops this node's names at once. When the group
is terminating the instance, the terminate hook (spec.readiness.terminationHook)
is then completed with CONTINUE.

The daemon runs the exit, once: this command asks it over its status API socket
and waits. A second call prints the first exit's record.

Exit codes:
  0  every step done
  1  a step failed (each step runs even after another failed)
  2  the daemon could not be asked`,
		Example: `  nodeagent drain`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := agent.DrainNode(cmd.Context(), fsutil.Root(g.root).Path(socket), stdout)
			var ee agent.ExitError
			if errors.As(err, &ee) {
				fmt.Fprintln(stderr, "nodeagent drain:", err)
				return exitCode(ee.Code)
			}
			if err != nil {
				fmt.Fprintln(stderr, "nodeagent drain:", err)
				return exitCode(2)
			}
			return nil
		},
	}
	socketFlag(c, &socket)
	return c
}
