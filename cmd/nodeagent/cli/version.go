package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/agent"
)

// versionInfo is what `nodeagent version -o json|yaml` prints.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
}

func versionCmd(stdout io.Writer) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print nodeagent's version, commit and Go version",
		Long: `Print nodeagent's version, the commit it was built from, and the Go version.

Exit codes:
  0  always (2 on a bad command line)`,
		Example: `  nodeagent version
  nodeagent version -o json | jq -r .version`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versionInfo{Version: agent.Version, Commit: agent.Commit, GoVersion: runtime.Version()}
			switch output {
			case "text", "":
				_, err := fmt.Fprintf(stdout, "nodeagent %s (commit %s, %s)\n", v.Version, v.Commit, v.GoVersion)
				return err
			case "json", "yaml":
				b, err := json.MarshalIndent(v, "", "  ")
				if err == nil && output == "yaml" {
					b, err = yaml.JSONToYAML(b)
				}
				if err != nil {
					return err
				}
				_, err = stdout.Write(append(b, '\n'))
				return err
			}
			return usagef("-o must be text, json or yaml, got %q", output)
		},
	}
	outputFlag(c, &output, "text", "text, json or yaml")
	return c
}
