package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/kubelet"
)

// CheckConfig validates a NodeConfig file ("-" for stdin; user-data MIME wrapping is
// accepted) and prints every problem with its field path. It returns 0 when valid.
func CheckConfig(path string, stdin io.Reader, w io.Writer) int {
	r := checkConfig(path, stdin)
	switch {
	case len(r.Problems) > 0:
		fmt.Fprintf(w, "%s: %s:\n", path, config.Problems(len(r.Problems)))
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  %s: %s\n", p.Path, p.Message)
		}
		return 1
	case r.Error != "":
		fmt.Fprintf(w, "%s: %s\n", path, r.Error)
		return 1
	}
	fmt.Fprintf(w, "%s: valid NodeConfig for %s (role %s, Kubernetes %s, %d assets)\n",
		path, r.Cluster, r.Role, r.KubernetesVersion, r.Assets)
	return 0
}

// ConfigCheck is the result of checking a NodeConfig, as `config check -o json`
// prints it.
type ConfigCheck struct {
	File              string          `json:"file"`
	Valid             bool            `json:"valid"`
	Error             string          `json:"error,omitempty"`
	Problems          []ConfigProblem `json:"problems,omitempty"`
	Cluster           string          `json:"cluster,omitempty"`
	Role              string          `json:"role,omitempty"`
	KubernetesVersion string          `json:"kubernetesVersion,omitempty"`
	Assets            int             `json:"assets,omitempty"`
}

// ConfigProblem is one invalid field.
type ConfigProblem struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// CheckConfigFormat is CheckConfig printing its result as json or yaml.
func CheckConfigFormat(path string, stdin io.Reader, w io.Writer, format string) int {
	r := checkConfig(path, stdin)
	b, err := json.MarshalIndent(r, "", "  ")
	if err == nil && format == "yaml" {
		b, err = yaml.JSONToYAML(b)
	}
	if err != nil {
		fmt.Fprintf(w, "%s: %v\n", path, err)
		return 1
	}
	w.Write(append(b, '\n'))
	if !r.Valid {
		return 1
	}
	return 0
}

func checkConfig(path string, stdin io.Reader) ConfigCheck {
	r := ConfigCheck{File: path}
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
		r.Error = err.Error()
		return r
	}
	cfg, err := parseConfig(raw)
	var verr config.ValidationError
	switch {
	case errors.As(err, &verr):
		for _, fe := range verr {
			r.Problems = append(r.Problems, ConfigProblem{Path: fe.Path, Message: fe.Message})
		}
		r.Error = config.Problems(len(verr))
		return r
	case err != nil:
		r.Error = err.Error()
		return r
	}
	r.Valid = true
	r.Cluster, r.Role = cfg.Spec.Cluster.Name, string(cfg.Spec.Role)
	r.KubernetesVersion, r.Assets = cfg.Spec.KubernetesVersion, len(cfg.Spec.Assets)
	return r
}

// validateForPhases checks what a phase would refuse about the config alone, so
// that a config `config check` and bootstrap accept never fails later for a
// reason the config decides. The rules stay with the packages that own them
// (kubelet's strict KubeletConfiguration merge); the field paths are theirs.
func validateForPhases(cfg *config.NodeConfig) error {
	var errs config.ValidationError
	if _, err := kubelet.BuildConfig(cfg.Spec); err != nil {
		msg := strings.TrimPrefix(err.Error(), "spec.kubelet.config: ")
		errs = append(errs, config.FieldError{Path: "spec.kubelet.config", Message: msg})
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// parseConfig is config.Parse plus validateForPhases: what `config check`
// accepts is what bootstrap and the daemon accept.
func parseConfig(raw []byte) (*config.NodeConfig, error) {
	cfg, err := config.Parse(raw)
	if err != nil {
		return nil, err
	}
	if err := validateForPhases(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}
