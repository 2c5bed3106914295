package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DockerSocket is where docker.socket listens: the Engine API.
const DockerSocket = "/run/docker.sock"

// DockerDataRoot is the engine's data root (daemon.json's data-root): images,
// containers and volumes.
const DockerDataRoot = "/var/lib/docker"

// DockerInfo is the part of the Engine API's GET /info the phase verifies.
type DockerInfo struct {
	ServerVersion string `json:"ServerVersion"`
	CgroupDriver  string `json:"CgroupDriver"`
	CgroupVersion string `json:"CgroupVersion"`
	DockerRootDir string `json:"DockerRootDir"`
	Driver        string `json:"Driver"` // the storage driver
	LoggingDriver string `json:"LoggingDriver"`
}

// dockerInfoTimeout bounds one /info request; the engine answers from memory.
const dockerInfoTimeout = 10 * time.Second

// ReadDockerInfo asks the engine listening on the unix socket at socketPath (a
// host path) for GET /info. The path is unversioned: every engine serves it at
// its own API version, and the fields read here exist in all of them since 1.24.
func ReadDockerInfo(ctx context.Context, socketPath string) (DockerInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, dockerInfoTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/info", nil)
	if err != nil {
		return DockerInfo{}, fmt.Errorf("docker engine at %s: %w", socketPath, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return DockerInfo{}, fmt.Errorf("docker engine at %s: GET /info: %w", socketPath, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return DockerInfo{}, fmt.Errorf("docker engine at %s: GET /info: read: %w", socketPath, err)
	}
	if resp.StatusCode != http.StatusOK {
		return DockerInfo{}, fmt.Errorf("docker engine at %s: GET /info: %s: %s", socketPath, resp.Status, firstLine(body))
	}
	var info DockerInfo
	if err := json.Unmarshal(body, &info); err != nil {
		return DockerInfo{}, fmt.Errorf("docker engine at %s: GET /info: %w", socketPath, err)
	}
	return info, nil
}

// CheckDockerInfo compares what the engine runs with against what daemon.json
// asks for; kubelet's cgroup driver (systemd) must match the engine's.
func CheckDockerInfo(info DockerInfo) error {
	for _, c := range []struct{ what, got, want string }{
		{"cgroup driver", info.CgroupDriver, "systemd"},
		{"data root", info.DockerRootDir, DockerDataRoot},
		{"storage driver", info.Driver, dockerStorageDriver},
		{"log driver", info.LoggingDriver, dockerLogDriver},
	} {
		if c.got != c.want {
			return fmt.Errorf("docker engine %s runs with %s %q, want %q (as %s says)", info.ServerVersion, c.what, c.got, c.want, DockerDaemonJSONPath)
		}
	}
	return nil
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' {
			return string(b[:i])
		}
	}
	if len(b) > 200 {
		return string(b[:200])
	}
	return string(b)
}
