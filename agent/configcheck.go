package agent

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nodeagent/nodeagent/config"
)

// CheckConfig validates a NodeConfig file ("-" for stdin; user-data MIME wrapping is
// accepted) and prints every problem with its field path. It returns 0 when valid.
func CheckConfig(path string, stdin io.Reader, w io.Writer) int {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		raw, err = os.ReadFile(path)
	}
	if err == nil {
		raw, err = config.ExtractUserData(raw)
	}
	if err != nil {
		fmt.Fprintf(w, "%s: %v\n", path, err)
		return 1
	}
	cfg, err := config.Parse(raw)
	var verr config.ValidationError
	switch {
	case errors.As(err, &verr):
		fmt.Fprintf(w, "%s: %d problem(s):\n", path, len(verr))
		for _, fe := range verr {
			fmt.Fprintf(w, "  %s: %s\n", fe.Path, fe.Message)
		}
		return 1
	case err != nil:
		fmt.Fprintf(w, "%s: %v\n", path, err)
		return 1
	}
	fmt.Fprintf(w, "%s: valid NodeConfig for %s (role %s, Kubernetes %s, %d assets)\n",
		path, cfg.Spec.Cluster.Name, cfg.Spec.Role, cfg.Spec.KubernetesVersion, len(cfg.Spec.Assets))
	return 0
}
