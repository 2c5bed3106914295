package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/nspawn"
)

// AgentPath is where the agent binary is put inside a node, as packer/ bakes it.
const AgentPath = "/usr/local/bin/nodeagent"

// ContainerKubeletConfig are the KubeletConfiguration overrides a kubelet needs
// inside a systemd-nspawn machine (internal/nspawn/README.md says why). They
// travel as ordinary user overrides in spec.kubelet.config, as a user would set them.
func ContainerKubeletConfig() map[string]any { return nspawn.KubeletOverrides() }

// NodeSpec describes the user-data of one node.
type NodeSpec struct {
	Cluster  string
	Role     config.Role
	Runtime  config.Runtime
	Assets   []config.Asset
	Kubelet  map[string]any
	Hostname string
	// Extra is applied to the config last (for failure cases and variations).
	Extra func(*config.NodeConfig)
}

// UserData renders a NodeConfig as the YAML a launch template would carry.
func UserData(s NodeSpec) ([]byte, error) {
	c := config.NodeConfig{APIVersion: config.APIVersion, Kind: config.Kind}
	c.Spec.Cluster.Name = s.Cluster
	c.Spec.Role = s.Role
	c.Spec.KubernetesVersion = "v1.34.4"
	c.Spec.ContainerRuntime = s.Runtime
	c.Spec.Assets = SortedAssets(s.Assets)
	c.Spec.Kubelet.Config = s.Kubelet
	c.Spec.Host.Hostname = s.Hostname
	if s.Extra != nil {
		s.Extra(&c)
	}
	return yaml.Marshal(c)
}

// Node is one emulated EC2 instance: a booted nspawn machine holding the agent
// binary, with the environment that points the agent at the emulator.
type Node struct {
	M          *nspawn.Machine
	InstanceID string
	Env        []string
}

// BootNode registers the instance with the emulator, boots its machine and copies
// the agent binary in. The caller closes the node. netns is the network
// namespace the machine runs in (a lab's node), or "" for the host's network.
func BootNode(ctx context.Context, e *Env, inst awsemu.Instance, agentBin string, console io.Writer, netns string) (*Node, error) {
	return BootNodeWithBinds(ctx, e, inst, agentBin, console, netns, nil)
}

// BootNodeWithBinds is BootNode with host directories bound into the machine
// ("host:container", as nspawn.Options.Binds), e.g. a disk of its own.
func BootNodeWithBinds(ctx context.Context, e *Env, inst awsemu.Instance, agentBin string, console io.Writer, netns string, binds []string) (*Node, error) {
	env, err := e.AWSEnv(inst.ID)
	if err != nil {
		return nil, err
	}
	if inst.InstanceProfile != "" {
		// An instance with a profile signs with its own credentials from
		// IMDS (the SDK's default chain), under its role's IAM policy.
		env = slices.DeleteFunc(env, func(kv string) bool {
			return strings.HasPrefix(kv, "AWS_ACCESS_KEY_ID=") || strings.HasPrefix(kv, "AWS_SECRET_ACCESS_KEY=")
		})
	}
	// The same settings reach every unit inside (nodeagent.service among them), as
	// an instance's environment would.
	m, err := nspawn.Boot(ctx, nspawn.Options{Name: inst.ID, Log: console, Env: env, NetworkNamespace: netns, Binds: binds})
	if err != nil {
		return nil, err
	}
	// The instance appears in EC2 once its machine exists, so a volume attached
	// to it always has a machine to show up in.
	e.Emu.AddInstance(inst)
	if err := m.CopyIn(ctx, agentBin, AgentPath, 0o755); err != nil {
		m.Close()
		return nil, err
	}
	return &Node{M: m, InstanceID: inst.ID, Env: env}, nil
}

// Result is one run of the agent inside a node.
type Result struct {
	Stdout, Stderr []byte
	Code           int
	// Start is when the run was started (the machines share the host's clock,
	// so the agent's log timestamps can be set against it).
	Start time.Time
	Wall  time.Duration
	// CPU is user + system time of the agent and every process it waited for.
	CPU time.Duration
	// MaxRSS is the peak resident set of the agent (or the largest process it
	// waited for), in bytes; set by RunMeasured only. The rusage of a child that
	// the test process started is no measure of it: Go starts children with
	// CLONE_VM|CLONE_VFORK, and the kernel records the parent's peak as the
	// child's at its exec, so the child's ru_maxrss is at least the test
	// process's own peak; RunMeasured's parent is a 2 MiB program in the node.
	MaxRSS int64
}

// Run runs `nodeagent args...` inside the node; err is set only when it could
// not run at all (a non-zero exit is Result.Code).
func (n *Node) Run(ctx context.Context, args ...string) (Result, error) {
	return n.run(ctx, nil, args...)
}

func (n *Node) run(ctx context.Context, wrap func(*exec.Cmd), args ...string) (Result, error) {
	var o, e bytes.Buffer
	cmd := n.M.Command(ctx, n.Env, append([]string{AgentPath}, args...)...)
	if wrap != nil {
		wrap(cmd)
	}
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	r := Result{Start: start, Wall: time.Since(start), Code: -1}
	if ps := cmd.ProcessState; ps != nil {
		r.Code = ps.ExitCode()
		r.CPU = ps.UserTime() + ps.SystemTime()
	}
	r.Stdout, r.Stderr = o.Bytes(), e.Bytes()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return r, fmt.Errorf("run agent in %s: %w", n.InstanceID, err)
	}
	return r, nil
}

// RunMeasured is Run measured from inside the node: the small program
// internal/testenv/measure, copied into the machine, starts the agent and
// reports what the agent alone cost — Wall from its fork to its exit, CPU as
// its user + system time (and that of the children it waited for), MaxRSS its
// peak resident set. Run's own figures also count entering the machine
// (nsenter forks twice and joins seven namespaces: ~13–19 ms wall and ~10 ms
// CPU here), which is not the agent's. measure starts the agent with a
// vfork-style clone like any Go program, so MaxRSS is at least measure's own
// ~2 MiB, far below the agent's.
func (n *Node) RunMeasured(ctx context.Context, args ...string) (Result, error) {
	helper, err := measureHelper()
	if err != nil {
		return Result{Code: -1}, err
	}
	const inNode = "/usr/local/bin/nodeagent-measure"
	if _, err := os.Stat(n.M.Path(inNode)); err != nil {
		b, err := os.ReadFile(helper)
		if err != nil {
			return Result{Code: -1}, err
		}
		if err := os.WriteFile(n.M.Path(inNode), b, 0o755); err != nil {
			return Result{Code: -1}, fmt.Errorf("install the measuring program in %s: %w", n.InstanceID, err)
		}
	}
	report := fmt.Sprintf("/root/.nodeagent-measure-%d.json", time.Now().UnixNano())
	defer os.Remove(n.M.Path(report))
	r, err := n.run(ctx, func(cmd *exec.Cmd) {
		// nsenter ... -- AGENT ARGS  →  nsenter ... -- measure REPORT AGENT ARGS
		for i, a := range cmd.Args {
			if a == AgentPath {
				cmd.Args = append(append(slices.Clone(cmd.Args[:i]), inNode, report), cmd.Args[i:]...)
				break
			}
		}
	}, args...)
	if err != nil {
		return r, err
	}
	b, err := os.ReadFile(n.M.Path(report))
	if err != nil {
		return r, fmt.Errorf("measure the agent: %w (exit %d)\n%s", err, r.Code, r.Stderr)
	}
	var m struct {
		WallNanos    int64 `json:"wallNanos"`
		UserMicros   int64 `json:"userMicros"`
		SystemMicros int64 `json:"systemMicros"`
		MaxRSSKiB    int64 `json:"maxRSSKiB"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return r, fmt.Errorf("measure the agent: report %q: %w", b, err)
	}
	r.Wall = time.Duration(m.WallNanos)
	r.CPU = time.Duration(m.UserMicros+m.SystemMicros) * time.Microsecond
	r.MaxRSS = m.MaxRSSKiB << 10
	return r, nil
}

var measureBuild struct {
	sync.Once
	path string
	err  error
}

// measureHelper builds internal/testenv/measure once per test process, static.
func measureHelper() (string, error) {
	measureBuild.Do(func() {
		dir, err := os.MkdirTemp("", "nodeagent-measure-")
		if err != nil {
			measureBuild.err = err
			return
		}
		out := dir + "/measure"
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/nodeagent/nodeagent/internal/testenv/measure")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			measureBuild.err = fmt.Errorf("build the measuring program: %w\n%s", err, b)
			return
		}
		measureBuild.path = out
	})
	return measureBuild.path, measureBuild.err
}

// Agent is Run for callers that want only the output and exit code.
func (n *Node) Agent(ctx context.Context, args ...string) (stdout, stderr []byte, code int, err error) {
	r, err := n.Run(ctx, args...)
	return r.Stdout, r.Stderr, r.Code, err
}

// Journal returns the last lines of a unit's journal inside the node, for test
// failures.
func (n *Node) Journal(ctx context.Context, unit string) string {
	out, errOut, err := n.M.Exec(ctx, nil, "journalctl", "--no-pager", "-n", "40", "-u", unit)
	if err != nil {
		return fmt.Sprintf("journalctl -u %s: %v\n%s", unit, err, errOut)
	}
	return string(out)
}

// Close powers the machine off and removes it.
func (n *Node) Close() error { return n.M.Close() }
