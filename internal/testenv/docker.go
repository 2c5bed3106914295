package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultDockerDir is where hack/docker.sh caches Debian's Docker Engine.
const DefaultDockerDir = "/var/cache/nodeagent-e2e/docker"

// DockerBinaries are the executables a Docker node installs beyond a containerd
// worker's (whose containerd and runc the engine uses): dockerd, the docker
// CLI (the images phase's docker load) and docker-proxy, from Debian's docker.io
// package as hack/docker.sh unpacks it.
func DockerBinaries(dir string) ([]Binary, error) {
	if dir == "" {
		dir = DefaultDockerDir
	}
	var bins []Binary
	var missing []string
	for _, name := range []string{"dockerd", "docker", "docker-proxy"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
		bins = append(bins, Binary{Name: name, Path: p})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("docker binaries missing: %s (hack/docker.sh; make e2e-parts does)", strings.Join(missing, ", "))
	}
	return bins, nil
}
