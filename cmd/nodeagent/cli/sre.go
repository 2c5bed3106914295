package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/doctor"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

func doctorFlags(c *cobra.Command, do *agent.DoctorOptions) {
	c.Flags().StringVar(&do.NTPServer, "ntp-server", doctor.AmazonTimeSync, "NTP server the clock is measured against (host or host:port)")
	c.Flags().DurationVar(&do.CheckTimeout, "check-timeout", doctor.DefaultCheckTimeout, "how long one check may take")
}

func doctorCmd(g *globals, stdout io.Writer) *cobra.Command {
	var (
		output string
		do     agent.DoctorOptions
	)
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Run read-only checks; name the cause of what is wrong and the fix",
		Long: `Run read-only checks of this node and print each as ok, warn or fail, with
the cause and the fix: IMDS and its PUT response hop limit, the instance
identity and IAM role, the AWS calls the config needs (dry runs where AWS has
them) and the state store, the clock's offset and sync daemon, swap, kernel
modules and sysctls, cgroup v2 and the runtime's cgroup driver against
kubelet's, disk space and inodes on /var/lib, certificate expiry, the gossip
port and key against a peer, (control plane) the etcd volumes of this zone,
and the API server at api.internal.<cluster>. Nothing is changed; the gossip
check joins a peer's ring for a moment under <node>-doctor and leaves.

It reads the config bootstrap ran with (else EC2 user-data) and what the
state file recorded of the instance, so it works when IMDS does not.

Exit codes:
  0  every check ok (or skipped)
  1  a warning
  2  a failure`,
		Example: `  nodeagent doctor
  # Only what is wrong
  nodeagent doctor -o json | jq '.findings[] | select(.result != "ok")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o must be table or json, got %q", output)
			}
			rep := agent.Doctor(cmd.Context(), g.options(""), do)
			if err := rep.Write(stdout, output); err != nil {
				return err
			}
			return exitCode(rep.ExitCode())
		},
	}
	outputFlag(c, &output, "table", "table or json")
	doctorFlags(c, &do)
	return c
}

func supportCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	var (
		file, socket string
		so           agent.SupportOptions
	)
	c := &cobra.Command{
		Use:   "support",
		Short: "Write one tar.gz for a support ticket (secrets redacted)",
		Long: `Write one archive (tar.gz) to attach to a ticket: state.json, status,
doctor's report, the effective config, the journal since boot of nodeagent,
kubelet and the container runtime, the static pod manifests, kubelet's and
containerd's configuration, mounts, /etc/hosts' managed block and the gossip
members. Bootstrap tokens, gossip keys, private keys and AWS credentials are
replaced by <redacted> in every file; README.txt in the archive lists its
files and what could not be gathered.

Exit codes:
  0  the archive was written
  *  it could not be; the reason is printed on one line to stderr`,
		Example: `  nodeagent support
  nodeagent support -f /tmp/node.tar.gz
  # To stdout
  nodeagent support -f - > node.tar.gz`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			so.Socket = fsutil.Root(g.root).Path(socket)
			if file == "" {
				file = fmt.Sprintf("nodeagent-support-%s.tar.gz", time.Now().UTC().Format("20060102T150405Z"))
			}
			if file == "-" {
				return exitOn(cmd, agent.Support(cmd.Context(), g.options(""), so, stdout))
			}
			return exitOn(cmd, writeSupport(cmd, g, so, file, stderr))
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "where to write the archive ('-' for stdout); default nodeagent-support-<time>.tar.gz here")
	socketFlag(c, &socket)
	doctorFlags(c, &so.Doctor)
	return c
}

// writeSupport writes the archive beside its final name and renames it into
// place, so a failed run leaves no half archive.
func writeSupport(cmd *cobra.Command, g *globals, so agent.SupportOptions, file string, stderr io.Writer) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := agent.Support(cmd.Context(), g.options(""), so, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", file)
	return nil
}
