package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

func validateCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	var (
		output, socket string
		vo             agent.ValidateOptions
	)
	c := &cobra.Command{
		Use:   "validate",
		Short: "Judge whether the whole cluster is usable, as kops validate cluster does",
		Long: `Judge the whole cluster from this node (any node), as ` + "`kops validate cluster`" + `
does: every control-plane and worker node, from the API server and from the
gossip ring, with its role, zone and readiness; the kube-system pods that are
not running; the health of every etcd member (on a master; elsewhere the API
server's own etcd check); and the cluster DNS answering for
kubernetes.default.svc at the cluster DNS IP.

A master asks with its add-ons kubeconfig, a worker with its kubelet's. The
output lists every problem found; the cluster is healthy only when there is none.

With --wait, it polls (every 5 s) until the cluster is healthy or the time is up,
and returns as soon as it is healthy.

Exit codes:
  0  healthy
  1  not healthy (every reason listed)
  2  cannot judge: this node has no config or no credentials yet`,
		Example: `  nodeagent validate
  # In a pipeline: wait up to 10 minutes for a usable cluster
  nodeagent validate --wait 10m
  # The reasons, for a script
  nodeagent validate -o json | jq -r '.failures[].message'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vo.Socket = fsutil.Root(g.root).Path(socket)
			vo.Format = output
			code, err := agent.Validate(cmd.Context(), g.options(""), vo, stdout)
			if err != nil {
				fmt.Fprintln(stderr, "nodeagent validate:", err)
				return exitCode(agent.ValidateUnknown)
			}
			return exitCode(code)
		},
	}
	outputFlag(c, &output, "table", "table, json or yaml")
	c.Flags().DurationVar(&vo.Wait, "wait", 0, "poll until the cluster is healthy, for at most this long (e.g. 10m)")
	socketFlag(c, &socket)
	return c
}
