package cri

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/systemd"
)

// searchPath puts BinDir first so containerd finds containerd-shim-runc-v2 and
// runc there, and dockerd finds its helpers, before any distribution copy.
func searchPath(binDir string) string {
	dirs := []string{binDir}
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return strings.Join(dirs, ":")
}

// containerdConfig is config.toml. cniTemplate is the conf_template path, or
// empty when something else provides the CNI configuration.
func containerdConfig(pauseImage, runc, cniTemplate string, restrictOOM bool) []byte {
	// Version 2 is read by containerd 1.5 to 1.7 and migrated in memory by 2.x, so
	// one file fits every runtime a node may be given.
	tmpl := ""
	if cniTemplate != "" {
		tmpl = "      conf_template = " + strconv.Quote(cniTemplate) + "\n"
	}
	restrict := ""
	if restrictOOM {
		restrict = "    restrict_oom_score_adj = true\n"
	}
	s := fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = %s

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %s
%s
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %s
      conf_dir = %s
%s
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = %s

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
`, strconv.Quote(ContainerdSocket), strconv.Quote(pauseImage), restrict, strconv.Quote(CNIBinDir), strconv.Quote(CNIConfDir),
		tmpl, strconv.Quote(RegistryHostsDir))
	if runc != "" {
		s += fmt.Sprintf("          BinaryName = %s\n", strconv.Quote(runc))
	}
	return []byte(s)
}

func containerdUnit(binDir string) []byte {
	return []byte(fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
Environment=PATH=%s
ExecStartPre=-/sbin/modprobe overlay
ExecStart=%s --config %s
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`, searchPath(binDir), systemd.ExecQuote(binDir+"/containerd"), ContainerdConfigPath))
}

func dockerSocket() []byte {
	return []byte(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=Docker Engine API socket

[Socket]
ListenStream=` + DockerSocket + `
SocketMode=0660
SocketUser=root
SocketGroup=root

[Install]
WantedBy=sockets.target
`)
}

func dockerUnit(binDir string) []byte {
	return []byte(fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=Docker Engine
Documentation=https://docs.docker.com
After=network-online.target docker.socket containerd.service
Wants=network-online.target containerd.service
Requires=docker.socket

[Service]
Type=notify
Environment=PATH=%s
ExecStart=%s -H fd:// --containerd=%s --config-file=%s
ExecReload=/bin/kill -s HUP $MAINPID
Restart=always
RestartSec=2
TimeoutStartSec=0
Delegate=yes
KillMode=process
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
`, searchPath(binDir), systemd.ExecQuote(binDir+"/dockerd"), ContainerdSocket, DockerDaemonJSONPath))
}

// criDockerdUnit runs cri-dockerd, the CRI shim kubelet needs to use Docker
// Engine since dockershim left kubelet (1.24). cri-dockerd kept dockershim's
// network plugins: kubenet (its own bridge over the pod CIDR kubelet reports,
// from the bridge, host-local and loopback plugins in CNIBinDir) or cni.
func criDockerdUnit(binDir, pauseImage string, mode config.NetworkMode) []byte {
	network := "--network-plugin=kubenet --cni-bin-dir=" + CNIBinDir
	if mode == config.NetworkCNI {
		network = "--network-plugin=cni --cni-bin-dir=" + CNIBinDir + " --cni-conf-dir=" + CNIConfDir
	}
	return []byte(fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=cri-dockerd: CRI endpoint for Docker Engine
Documentation=https://mirantis.github.io/cri-dockerd/
After=network-online.target docker.service
Wants=network-online.target
Requires=docker.service

[Service]
Type=simple
Environment=PATH=%s
ExecStart=%s --container-runtime-endpoint=%s --pod-infra-container-image=%s --cri-dockerd-root-directory=/var/lib/cri-dockerd %s
Restart=always
RestartSec=2
Delegate=yes
KillMode=process
LimitNOFILE=infinity

[Install]
WantedBy=multi-user.target
`, searchPath(binDir), systemd.ExecQuote(binDir+"/cri-dockerd"), CRIEndpoint("docker"), pauseImage, network))
}
