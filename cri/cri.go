// Package cri installs and starts the container runtime kubelet talks to:
// containerd, or Docker Engine with cri-dockerd in front of it. The binaries come
// from the assets phase; this package owns their configuration and units.
//
// containerd (the default) gets /etc/containerd/config.toml (config version 2:
// runc through io.containerd.runc.v2 with the systemd cgroup driver, the pause
// image as sandbox) and containerd.service, whose PATH starts with BinDir so the
// shim and runc installed there are the ones used.
//
// Docker: kubelet lost its built-in Docker support (dockershim) in 1.24, so a
// Docker node needs cri-dockerd, which serves CRI on unix:///run/cri-dockerd.sock
// and drives dockerd. The phase writes /etc/docker/daemon.json (systemd cgroup
// driver, overlay2, bounded json-file logs), docker.socket and docker.service
// (dockerd using the agent's containerd rather than starting its own), and the
// containerd units above. cri-docker.service is written, enabled and started
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
	DefaultPauseImage = config.DefaultRegistry + "/pause:3.10"
)

// Host paths this package writes and the sockets the runtimes listen on.
const (
	ContainerdConfigPath = "/etc/containerd/config.toml"
	ContainerdSocket     = "/run/containerd/containerd.sock"
	DockerDaemonJSONPath = "/etc/docker/daemon.json"
	CRIDockerdSocket     = "/run/cri-dockerd.sock"
)

// Options configure the runtime phase.
type Options struct {
	Root    fsutil.Root
	Runtime config.Runtime // containerd (default) or docker
	Systemd func(context.Context) (*systemd.Manager, error)
	Log     *slog.Logger
	// BinDir is where the assets phase installed the binaries; default /usr/local/bin.
	BinDir string
	// PauseImage is the pod sandbox image; default registry.k8s.io/pause:3.10.
	PauseImage string
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
	p := Plan{
		Files: []systemd.File{
			{Path: ContainerdConfigPath, Content: containerdConfig(o.PauseImage, runc), Mode: 0o644, Unit: "containerd.service"},
			{Path: systemd.UnitDir + "/containerd.service", Content: containerdUnit(o.BinDir), Mode: 0o644},
		},
		Enable: []string{"containerd.service"},
		Start:  []string{"containerd.service"},
	}
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
		if present("cri-dockerd") {
			p.Files = append(p.Files, systemd.File{Path: systemd.UnitDir + "/cri-docker.service", Content: criDockerdUnit(o.BinDir, o.PauseImage), Mode: 0o644})
			p.Enable = append(p.Enable, "cri-docker.service")
			p.Start = append(p.Start, "cri-docker.service")
		} else {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s is not installed: kubelet has no CRI endpoint (%s) for Docker until it is; add cri-dockerd to spec.assets",
				path.Join(o.BinDir, "cri-dockerd"), CRIEndpoint(config.RuntimeDocker)))
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
	return systemd.NewRenderedPhase(PhaseName, systemd.UnitSet{Root: o.Root, Systemd: o.Systemd, Log: o.Log},
		func() (systemd.Rendered, error) {
			pl, err := Render(o)
			return systemd.Rendered{Files: pl.Files, Enable: pl.Enable, Start: pl.Start, Warnings: pl.Warnings}, err
		})
}

func dockerDaemonJSON() ([]byte, error) {
	// A struct keeps the key order stable for golden files and diffs on disk.
	v := struct {
		ExecOpts      []string          `json:"exec-opts"`
		LogDriver     string            `json:"log-driver"`
		LogOpts       map[string]string `json:"log-opts"`
		StorageDriver string            `json:"storage-driver"`
	}{
		ExecOpts:      []string{"native.cgroupdriver=systemd"},
		LogDriver:     "json-file",
		LogOpts:       map[string]string{"max-size": "100m"},
		StorageDriver: "overlay2",
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode daemon.json: %w", err)
	}
	return append(b, '\n'), nil
}
