package cli

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/nodeagent/nodeagent/agent"
)

// etcdCmd groups the control plane's etcd commands.
func etcdCmd(g *globals, stdout io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "etcd",
		Short: "Control plane: etcd members, backups and restore",
		Long: `Look after this master's etcd clusters (main, events): the member table,
the backups in the state store (backups/etcd/<cluster>/<time>/), a backup
taken now, and a restore after quorum is lost.

The daemon takes a backup every spec.etcd.backups.schedule (1h) on the master
whose member leads, and keeps hourly ones 7 days and one a day for a year.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(etcdMembersCmd(g, stdout), etcdBackupsCmd(g, stdout), etcdBackupCmd(g, stdout), etcdRestoreCmd(g, stdout))
	return c
}

func clusterFlag(c *cobra.Command, dst *string) {
	c.Flags().StringVar(dst, "cluster", "main", "etcd cluster (spec.etcd.clusters): main or events")
}

func etcdMembersCmd(g *globals, stdout io.Writer) *cobra.Command {
	var cluster, output string
	c := &cobra.Command{
		Use:   "members",
		Short: "The member table of an etcd cluster, as the local member sees it",
		Long: `Show the members of an etcd cluster as this master's member lists them:
ID, name, role (leader, voter, learner), peer and client URLs. A member that was
added but never started has no name yet.

Exit codes:
  0  the table was printed
  1  the local member did not answer`,
		Example: `  nodeagent etcd members
  nodeagent etcd members --cluster events -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.EtcdMembers(cmd.Context(), g.options(""), stdout, cluster, output))
		},
	}
	clusterFlag(c, &cluster)
	outputFlag(c, &output, "table", "table or json")
	return c
}

func etcdBackupsCmd(g *globals, stdout io.Writer) *cobra.Command {
	var cluster, output string
	c := &cobra.Command{
		Use:   "backups",
		Short: "The complete backups of an etcd cluster in the state store",
		Long: `List the complete backups of an etcd cluster in the state store, newest
first, with their age, size, revision, key count, etcd version and SHA-256.
A backup is complete once its info file exists; partial uploads are not listed.

Exit codes:
  0  the list was printed
  1  the state store could not be read`,
		Example: `  nodeagent etcd backups
  nodeagent etcd backups --cluster events -o json | jq -r '.[0].time'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.EtcdBackups(cmd.Context(), g.options(""), stdout, cluster, output))
		},
	}
	clusterFlag(c, &cluster)
	outputFlag(c, &output, "table", "table or json")
	return c
}

func etcdBackupCmd(g *globals, stdout io.Writer) *cobra.Command {
	var cluster string
	c := &cobra.Command{
		Use:   "backup",
		Short: "Take a backup of an etcd cluster now",
		Long: `Take a snapshot of an etcd cluster from this master's member now, verify it,
and upload it to the state store, whoever leads.

Exit codes:
  0  the backup is stored and complete
  1  it could not be taken, verified or stored (nothing partial is left listed)`,
		Example: `  # Before a risky change
  nodeagent etcd backup --cluster main`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.EtcdBackupNow(cmd.Context(), g.options(""), stdout, cluster))
		},
	}
	clusterFlag(c, &cluster)
	return c
}

func etcdRestoreCmd(g *globals, stdout io.Writer) *cobra.Command {
	var cluster, backup string
	c := &cobra.Command{
		Use:   "restore",
		Short: "Restore an etcd cluster from a backup after quorum is lost",
		Long: `Ask every master to restore an etcd cluster from a backup: the backup is
verified first (a corrupt one is refused; with "latest" the next older one is
offered), then a command object is written to the state store
(backups/etcd/<cluster>/commands/). This master's member restores the snapshot
into a fresh data dir as a one-member cluster; every other master's daemon stops
its member, keeps its old data dir (renamed, never deleted) and joins the
restored cluster as a new member.

Exit codes:
  0  the restore was requested
  1  no usable backup, or the request could not be written`,
		Example: `  nodeagent etcd restore --cluster main --backup latest
  nodeagent etcd restore --cluster main --backup 2026-11-30T13:00:00Z`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitOn(cmd, agent.EtcdRestore(cmd.Context(), g.options(""), stdout, cluster, backup))
		},
	}
	clusterFlag(c, &cluster)
	c.Flags().StringVar(&backup, "backup", "", `backup to restore: "latest" or its time (RFC 3339, as 'etcd backups' lists it)`)
	_ = c.MarkFlagRequired("backup")
	return c
}
