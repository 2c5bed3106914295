// Package cri installs and starts the container runtime kubelet talks to:
// containerd, or Docker Engine with cri-dockerd in front of it. The binaries come
// from the assets phase; this package owns their configuration and units.
//
// containerd (the default) gets /etc/containerd/config.toml (config version 2:
// runc through io.containerd.runc.v2 with the systemd cgroup driver, the pause
// image as sandbox) and containerd.service, whose PATH starts with BinDir so the
// shim and runc installed there are the ones used.
//
// Registry mirrors: the CRI plugin reads registry hosts from
// /etc/containerd/certs.d (config_path); the phase writes one hosts.toml per
// configured registry and removes those it wrote for registries no longer
// configured (files without its header are never touched). containerd reads them
// at each pull, so they need no restart.
//
// Pod networking, kubenet mode (the default): containerd's CRI plugin renders a
// CNI configuration template (conf_template) into
// /etc/cni/net.d/10-containerd-net.conflist once kubelet reports the node's pod
// CIDR, if no other CNI configuration is there: a bridge (cbr0) over the node's
// pod CIDR with host-local IPAM, and portmap for hostPort. The CNI plugins are
// ordinary assets installed under /opt/cni/bin. In cni mode no template is
// written and something else (a network add-on) drops the CNI configuration.
//
// Docker: kubelet lost its built-in Docker support (dockershim) in 1.24, so a
// Docker node needs cri-dockerd, which serves CRI on unix:///run/cri-dockerd.sock
// and drives dockerd. The phase writes /etc/docker/daemon.json (systemd cgroup
// driver, overlay2, bounded json-file logs, the data root, no bridge or
// iptables of Docker's own), docker.socket and docker.service (dockerd using the
// agent's containerd rather than starting its own), and the containerd units
// above; it verifies through the Engine API (GET /info on /run/docker.sock) that
// the engine runs with the systemd cgroup driver and that data root. cri-docker.service is written, enabled and started
// only when BinDir/cri-dockerd exists, i.e. when the node's assets list it; without
// it the phase warns, because kubelet will find no CRI endpoint.
package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

// PhaseName is the name of the phase in status.
const PhaseName = "container-runtime"

// Defaults for Options.
const (
	DefaultBinDir     = "/usr/local/bin"
	DefaultPauseImage = config.DefaultRegistry + "/" + config.DefaultPauseImageName
)

// Host paths this package writes and the sockets the runtimes listen on.
const (
	ContainerdConfigPath = "/etc/containerd/config.toml"
	ContainerdSocket     = "/run/containerd/containerd.sock"
	DockerDaemonJSONPath = "/etc/docker/daemon.json"
	CRIDockerdSocket     = "/run/cri-dockerd.sock"
	// RegistryHostsDir is containerd's config_path: <dir>/<registry host>/hosts.toml.
	RegistryHostsDir = "/etc/containerd/certs.d"
	// CNITemplatePath is the kubenet CNI configuration template (conf_template).
	CNITemplatePath = "/etc/containerd/cni-kubenet.conflist.tmpl"
	// CNIBinDir and CNIConfDir are where CNI plugins and configurations live.
	CNIBinDir  = "/opt/cni/bin"
	CNIConfDir = "/etc/cni/net.d"
	// CRIDockerdBinary is cri-dockerd's name in BinDir (its asset's name).
	CRIDockerdBinary = "cri-dockerd"
)

// Options configure the runtime phase.
type Options struct {
	Root    fsutil.Root
	Runtime config.Runtime // containerd (default) or docker
	Systemd func(context.Context) (*systemd.Manager, error)
	Log     *slog.Logger
	// BinDir is where the assets phase installed the binaries; default /usr/local/bin.
	BinDir string
	// PauseImage is the pod sandbox image; default registry.k8s.io/pause:3.10
	// (the config defaults it to <spec.images.registry>/pause:3.10).
	PauseImage string
	// RegistryMirrors maps a registry host to the mirror URLs tried before it
	// (containerd only).
	RegistryMirrors map[string][]string
	// Networking is kubenet (default: a CNI template containerd renders with the
	// node's pod CIDR) or cni (the CNI configuration comes from elsewhere).
	Networking config.NetworkMode
	// RestrictOOMScoreAdj tells containerd not to lower containers'
	// oom_score_adj, for a node whose root lacks CAP_SYS_RESOURCE (a node inside
	// a container); see host.CanLowerOOMScore.
	RestrictOOMScoreAdj bool
}

func (o Options) withDefaults() Options {
	if o.Runtime == "" {
		o.Runtime = config.RuntimeContainerd
	}
	if o.BinDir == "" {
		o.BinDir = DefaultBinDir
	}
	if o.PauseImage == "" {
		o.PauseImage = DefaultPauseImage
	}
	if o.Networking == "" {
		o.Networking = config.NetworkKubenet
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// CRIEndpoint is the CRI socket kubelet uses for the runtime. Docker Engine has no
// CRI of its own any more; cri-dockerd provides it.
func CRIEndpoint(rt config.Runtime) string {
	if rt == config.RuntimeDocker {
		return "unix://" + CRIDockerdSocket
	}
	return "unix://" + ContainerdSocket
}

// Plan is what the phase converges: files and the units to enable and start.
type Plan struct {
	Files  []systemd.File
	Enable []string
	Start  []string
	// Remove are files this package wrote earlier that the configuration no
	// longer wants (each carries the managed header).
	Remove []string
	// Warnings are problems that do not stop the runtime from starting but will
	// stop kubelet from using it.
	Warnings []string
}

// Render computes the runtime's files from the options and from which binaries
// are present under BinDir (runc and cri-dockerd are optional assets).
func Render(o Options) (Plan, error) {
	o = o.withDefaults()
	present := func(name string) bool {
		fi, err := os.Stat(o.Root.Path(path.Join(o.BinDir, name)))
		return err == nil && fi.Mode().IsRegular()
	}
	var runc string
	if present("runc") {
		runc = path.Join(o.BinDir, "runc")
	}
	var template string
	switch o.Networking {
	case config.NetworkKubenet:
		template = CNITemplatePath
	case config.NetworkCNI:
	default:
		return Plan{}, fmt.Errorf("networking mode %q: want kubenet or cni", o.Networking)
	}
	p := Plan{
		Files: []systemd.File{
			{Path: ContainerdConfigPath, Content: containerdConfig(o.PauseImage, runc, template, o.RestrictOOMScoreAdj), Mode: 0o644, Unit: "containerd.service"},
			{Path: systemd.UnitDir + "/containerd.service", Content: containerdUnit(o.BinDir), Mode: 0o644},
		},
		Enable: []string{"containerd.service"},
		Start:  []string{"containerd.service"},
	}
	// containerd reads the template when kubelet reports the pod CIDR, and the
	// hosts files at each pull: neither needs a restart.
	if template != "" {
		p.Files = append(p.Files, systemd.File{Path: CNITemplatePath, Content: kubenetTemplate(), Mode: 0o644})
	} else if managedFile(o.Root.Path(CNITemplatePath)) {
		p.Remove = append(p.Remove, CNITemplatePath)
	}
	hosts, stale, err := registryHosts(o.Root, o.RegistryMirrors)
	if err != nil {
		return Plan{}, err
	}
	p.Files = append(p.Files, hosts...)
	p.Remove = append(p.Remove, stale...)
	switch o.Runtime {
	case config.RuntimeContainerd:
	case config.RuntimeDocker:
		dj, err := dockerDaemonJSON()
		if err != nil {
			return Plan{}, err
		}
		p.Files = append(p.Files,
			systemd.File{Path: DockerDaemonJSONPath, Content: dj, Mode: 0o644, Unit: "docker.service"},
			systemd.File{Path: systemd.UnitDir + "/docker.socket", Content: dockerSocket(), Mode: 0o644},
			systemd.File{Path: systemd.UnitDir + "/docker.service", Content: dockerUnit(o.BinDir), Mode: 0o644},
		)
		p.Enable = append(p.Enable, "docker.socket", "docker.service")
		p.Start = append(p.Start, "docker.service")
		if present(CRIDockerdBinary) {
			p.Files = append(p.Files, systemd.File{Path: systemd.UnitDir + "/cri-docker.service", Content: criDockerdUnit(o.BinDir, o.PauseImage, o.Networking), Mode: 0o644})
			p.Enable = append(p.Enable, "cri-docker.service")
			p.Start = append(p.Start, "cri-docker.service")
		} else {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s is not installed: kubelet has no CRI endpoint (%s) for Docker until it is; add cri-dockerd to spec.assets",
				path.Join(o.BinDir, CRIDockerdBinary), CRIEndpoint(config.RuntimeDocker)))
		}
	default:
		return Plan{}, fmt.Errorf("container runtime %q: want containerd or docker", o.Runtime)
	}
	return p, nil
}

// NewPhase returns the "container-runtime" phase. The plan is rendered each time
// it runs, because the binaries it looks for are installed by the assets phase
// that runs just before it.
func NewPhase(o Options) bootstrap.Phase {
	o = o.withDefaults()
	return &phase{o: o, RenderedPhase: systemd.NewRenderedPhase(PhaseName, systemd.UnitSet{Root: o.Root, Systemd: o.Systemd, Log: o.Log},
		func() (systemd.Rendered, error) {
			pl, err := Render(o)
			return systemd.Rendered{Files: pl.Files, Enable: pl.Enable, Start: pl.Start, Warnings: pl.Warnings}, err
		})}
}

// The engine's storage and log drivers (daemon.json).
const (
	dockerStorageDriver = "overlay2"
	dockerLogDriver     = "json-file"
)

// dockerDaemonJSON is /etc/docker/daemon.json. The systemd cgroup driver is
// kubelet's (cgroupDriver: systemd); container logs rotate at 10 MiB, five
// files kept. Pod networking is kubenet's or the CNI plugin's, through
// cri-dockerd, never Docker's own: no docker0 bridge (whose 172.17.0.0/16 may
// collide with the VPC), no iptables rules and no masquerading of the engine's.
// net.ipv4.ip_forward is host-prep's sysctl (spec.host.sysctls), so the engine
// leaves it alone (ip-forward: false).
func dockerDaemonJSON() ([]byte, error) {
	// A struct keeps the key order stable for golden files and diffs on disk.
	v := struct {
		Bridge        string            `json:"bridge"`
		DataRoot      string            `json:"data-root"`
		ExecOpts      []string          `json:"exec-opts"`
		IPForward     bool              `json:"ip-forward"`
		IPMasq        bool              `json:"ip-masq"`
		IPTables      bool              `json:"iptables"`
		LogDriver     string            `json:"log-driver"`
		LogOpts       map[string]string `json:"log-opts"`
		StorageDriver string            `json:"storage-driver"`
	}{
		Bridge:        "none",
		DataRoot:      DockerDataRoot,
		ExecOpts:      []string{"native.cgroupdriver=systemd"},
		LogDriver:     dockerLogDriver,
		LogOpts:       map[string]string{"max-size": "10m", "max-file": "5"},
		StorageDriver: dockerStorageDriver,
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode daemon.json: %w", err)
	}
	return append(b, '\n'), nil
}
