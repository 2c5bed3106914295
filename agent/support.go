package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/support"
)

// SupportOptions configure `nodeagent support`.
type SupportOptions struct {
	// Socket is the daemon's status API (a host path), asked for the gossip members.
	Socket string
	Doctor DoctorOptions
}

// journalUnits are the units whose journal since boot goes into the archive.
var journalUnits = []string{"nodeagent.service", "nodeagent-bootstrap.service", "kubelet.service", "containerd.service", "docker.service"}

// Support writes the support archive (tar.gz) to w: state, status, doctor's
// report, the effective config, journals since boot, manifests, kubelet's
// configuration, mounts, /etc/hosts' managed block, gossip members. Every file
// is redacted; what could not be gathered is listed in its README.txt.
func Support(ctx context.Context, o Options, so SupportOptions, w io.Writer) error {
	cfg, secrets := supportConfig(o)
	a := support.NewArchive(w, support.NewRedactor(secrets...), time.Now())
	add := func(name string, b []byte, err error) error {
		if err != nil {
			a.Note("%s: %v", name, err)
			return nil
		}
		return a.Add(name, b)
	}
	readHost := func(p string) ([]byte, error) { return os.ReadFile(o.Root.Path(p)) }

	st, err := os.ReadFile(o.store().Path())
	if err := add("state.json", st, err); err != nil {
		return err
	}
	var status bytes.Buffer
	_, err = Status(o, &status, "table")
	if err := add("status.txt", status.Bytes(), err); err != nil {
		return err
	}
	var rep bytes.Buffer
	err = Doctor(ctx, o, so.Doctor).Write(&rep, "json")
	if err := add("doctor.json", rep.Bytes(), err); err != nil {
		return err
	}
	var cfgYAML []byte
	if cfg != nil {
		cfgYAML, err = yaml.Marshal(redactConfig(cfg))
	} else {
		err = errors.New("no effective config (bootstrap has not run)")
	}
	if err := add("config.yaml", cfgYAML, err); err != nil {
		return err
	}
	journal, err := journals(ctx, o)
	if err := add("journal.txt", journal, err); err != nil {
		return err
	}
	for _, f := range []struct{ name, path string }{
		{"kubelet/config.yaml", "/var/lib/kubelet/config.yaml"},
		{"containerd/config.toml", "/etc/containerd/config.toml"},
		{"mounts.txt", "/proc/self/mountinfo"},
	} {
		b, err := readHost(f.path)
		if err := add(f.name, b, err); err != nil {
			return err
		}
	}
	manifests, _ := filepath.Glob(o.Root.Path("/etc/kubernetes/manifests/*.yaml"))
	sort.Strings(manifests)
	for _, m := range manifests {
		b, err := os.ReadFile(m)
		if err := add("manifests/"+filepath.Base(m), b, err); err != nil {
			return err
		}
	}
	hosts, err := readHost("/etc/hosts")
	if err == nil {
		if hosts = support.ManagedBlock(hosts, gossip.HostsBegin, gossip.HostsEnd); hosts == nil {
			hosts = []byte("(no managed block)\n")
		}
	}
	if err := add("hosts-managed-block.txt", hosts, err); err != nil {
		return err
	}
	var members []ClusterMember
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = queryAPI(qctx, so.Socket, "/cluster", &members)
	cancel()
	var mb []byte
	if err == nil {
		mb, err = json.MarshalIndent(members, "", "  ")
	}
	if err := add("gossip-members.json", mb, err); err != nil {
		return err
	}
	return a.Close()
}

// supportConfig reads the effective config and the secret values on this
// node, for redaction: the bootstrap token, the gossip key, AWS credentials
// from the environment.
func supportConfig(o Options) (*config.NodeConfig, [][]byte) {
	var secrets [][]byte
	for _, v := range []string{"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"} {
		if s := os.Getenv(v); s != "" {
			secrets = append(secrets, []byte(s))
		}
	}
	raw, err := os.ReadFile(filepath.Join(o.stateDir(), effectiveConfigName))
	if err != nil {
		return nil, secrets
	}
	cfg, err := config.Parse(raw)
	if err != nil {
		return nil, secrets
	}
	if t := cfg.Spec.Kubelet.BootstrapToken; t != "" {
		secrets = append(secrets, []byte(t))
	}
	if f := cfg.Spec.Gossip.SecretKeyFile; f != "" {
		if k, err := os.ReadFile(o.Root.Path(f)); err == nil {
			secrets = append(secrets, trimKey(k))
		}
	}
	return cfg, secrets
}

// redactConfig blanks the config's secret fields (the redactor also removes
// their values wherever else they appear).
func redactConfig(c *config.NodeConfig) *config.NodeConfig {
	cp := *c
	if cp.Spec.Kubelet.BootstrapToken != "" {
		cp.Spec.Kubelet.BootstrapToken = support.Redacted
	}
	return &cp
}

// journals is the journal since boot of the agent's and the node's units.
func journals(ctx context.Context, o Options) ([]byte, error) {
	path, err := exec.LookPath("journalctl")
	if err != nil {
		return nil, fmt.Errorf("journalctl not found: %w", err)
	}
	args := []string{"--no-pager", "-o", "short-iso-precise", "-b"}
	if r := string(o.Root); r != "" && r != "/" {
		args = append(args, "--root", r)
	}
	for _, u := range journalUnits {
		args = append(args, "-u", u)
	}
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(jctx, path, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("journalctl: %w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("journalctl: %w", err)
	}
	return out, nil
}
