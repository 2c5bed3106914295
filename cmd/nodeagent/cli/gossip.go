package cli

import (
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodeagent/nodeagent/agent"
)

func gossipCmd(g *globals, stdout io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "gossip",
		Short: "The gossip ring of a .k8s.local cluster: key rotation",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(gossipRotateKeyCmd(g, stdout))
	return c
}

func gossipRotateKeyCmd(g *globals, stdout io.Writer) *cobra.Command {
	var keyFile string
	var wait time.Duration
	c := &cobra.Command{
		Use:   "rotate-key",
		Short: "Rotate the gossip ring's key without splitting the ring",
		Long: `Ask the ring to change its key. A new key (random 32 bytes, or --key-file's)
is written into the state store's keyring document (nodeagent/gossip-keyring.json)
as installed. Every node's daemon follows the document live: it installs the new
key, and the masters' daemons make it primary once every alive member holds it,
then remove the old key once every alive member sends with the new one. No
member ever stops understanding another's packets, and a node that was down
during the rotation boots with the new key. The first rotation of a cluster that
has only nodeagent/gossip.key takes that key as generation 1.

Needs write access to the keyring document (iam/masters.json grants it): run it
on a master. 'nodeagent status' shows each node's key generation, and
'nodeagent status --cluster' every member's.

Exit codes:
  0  the rotation was requested (with --wait: it finished)
  1  a rotation is already under way, the new key is invalid, the document
     could not be read or written, or --wait ran out`,
		Example: `  nodeagent gossip rotate-key --wait 5m
  head -c 32 /dev/urandom > new.key && nodeagent gossip rotate-key --key-file new.key`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.GossipRotateKey(cmd.Context(), g.options(""), stdout, keyFile, wait))
		},
	}
	c.Flags().StringVar(&keyFile, "key-file", "", "the new key (16, 24 or 32 bytes; default: a random 32-byte key)")
	c.Flags().DurationVar(&wait, "wait", 0, "follow the rotation until it is done, at most this long (0: return once requested)")
	return c
}
