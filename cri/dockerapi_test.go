package cri

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// engine serves h on a unix socket as dockerd does on /run/docker.sock.
func engine(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// infoBody is the part of a Docker Engine 20.10 /info answer the phase reads,
// among fields it ignores, as Debian's dockerd answered in TestDockerNode.
const infoBody = `{"ID":"X","Containers":0,"Driver":"overlay2","DriverStatus":[["Backing Filesystem","extfs"]],
"LoggingDriver":"json-file","CgroupDriver":"systemd","CgroupVersion":"1","KernelVersion":"6.1.0",
"OperatingSystem":"Debian GNU/Linux 12 (bookworm)","DockerRootDir":"/var/lib/docker","ServerVersion":"20.10.24+dfsg1"}`

func TestDockerInfoIsReadFromTheEngineSocket(t *testing.T) {
	var path string
	sock := engine(t, func(w http.ResponseWriter, r *http.Request) {
		path = r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(infoBody))
	})
	info, err := ReadDockerInfo(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if path != "/info" {
		t.Errorf("asked for %s, want the unversioned /info every engine version serves", path)
	}
	want := DockerInfo{ServerVersion: "20.10.24+dfsg1", CgroupDriver: "systemd", CgroupVersion: "1", DockerRootDir: "/var/lib/docker", Driver: "overlay2", LoggingDriver: "json-file"}
	if info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	if err := CheckDockerInfo(info); err != nil {
		t.Errorf("a converged engine is refused: %v", err)
	}
}

func TestDockerInfoMismatchesAreNamed(t *testing.T) {
	good := DockerInfo{ServerVersion: "20.10.24", CgroupDriver: "systemd", DockerRootDir: DockerDataRoot, Driver: "overlay2", LoggingDriver: "json-file"}
	for _, tc := range []struct {
		name   string
		mutate func(*DockerInfo)
		want   string
	}{
		{"cgroupfs driver", func(i *DockerInfo) { i.CgroupDriver = "cgroupfs" }, `cgroup driver "cgroupfs", want "systemd"`},
		{"other data root", func(i *DockerInfo) { i.DockerRootDir = "/data/docker" }, `data root "/data/docker", want "/var/lib/docker"`},
		{"vfs storage", func(i *DockerInfo) { i.Driver = "vfs" }, `storage driver "vfs", want "overlay2"`},
		{"journald logs", func(i *DockerInfo) { i.LoggingDriver = "journald" }, `log driver "journald", want "json-file"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := good
			tc.mutate(&info)
			err := CheckDockerInfo(info)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), DockerDaemonJSONPath) {
				t.Errorf("got %v, want an error with %q naming %s", err, tc.want, DockerDaemonJSONPath)
			}
		})
	}
}

func TestDockerInfoFailuresSayWhere(t *testing.T) {
	t.Run("no engine", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "docker.sock")
		_, err := ReadDockerInfo(context.Background(), sock)
		if err == nil || !strings.Contains(err.Error(), sock) {
			t.Errorf("got %v, want an error naming %s", err, sock)
		}
	})
	t.Run("engine error", func(t *testing.T) {
		sock := engine(t, func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"message":"daemon is shutting down"}`, http.StatusInternalServerError)
		})
		_, err := ReadDockerInfo(context.Background(), sock)
		if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "shutting down") {
			t.Errorf("got %v, want the status and the engine's message", err)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		sock := engine(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) })
		if _, err := ReadDockerInfo(context.Background(), sock); err == nil {
			t.Error("an answer that is not JSON was taken")
		}
	})
}
