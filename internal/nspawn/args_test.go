package nspawn

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	tests := []struct {
		name     string
		o        Options
		stateDir string
		want     []string // must appear, in this order
		absent   []string
	}{
		{
			name:     "defaults for containerd and kubelet",
			o:        Options{Name: "m1"},
			stateDir: "/tmp/x/containerd",
			want: []string{"--directory=/tmp/x/root", "--machine=m1", "--register=no", "--keep-unit",
				"--kill-signal=SIGRTMIN+3", "--capability=all",
				"--bind=/dev/kmsg", "--system-call-filter=add_key keyctl request_key", "--bind=/tmp/x/containerd:/var/lib/containerd", initPath},
			absent: []string{"--private-network", "-b", "--boot"},
		},
		{
			name: "binds, read-only binds and env, extra args before init",
			o: Options{Name: "m2", Binds: []string{"/srv/a:/a", "/srv/b:/b:ro", "/dev/loop-control"},
				Env: []string{"AWS_REGION=eu-west-1"}, ExtraArgs: []string{"--private-network"}},
			want: []string{"--bind=/srv/a:/a", "--bind-ro=/srv/b:/b", "--bind=/dev/loop-control",
				"--setenv=AWS_REGION=eu-west-1", "--private-network", initPath},
			absent: []string{"--bind=/tmp/x/containerd:/var/lib/containerd"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Args(tt.o, "/tmp/x/root", tt.stateDir)
			if got[len(got)-1] != initPath {
				t.Errorf("last arg = %q, want the init wrapper %q", got[len(got)-1], initPath)
			}
			pos := -1
			for _, w := range tt.want {
				i := slices.Index(got, w)
				if i < 0 {
					t.Errorf("missing %q in %q", w, got)
					continue
				}
				if i < pos {
					t.Errorf("%q out of order in %q", w, got)
				}
				pos = i
			}
			for _, a := range tt.absent {
				if slices.Contains(got, a) {
					t.Errorf("unexpected %q in %q", a, got)
				}
			}
		})
	}
}

func TestParseMountsUnder(t *testing.T) {
	mi := strings.Join([]string{
		`22 1 0:21 / / rw - ext4 /dev/vda rw`,
		`43 22 0:38 / /tmp/nspawn-a-1/root rw,relatime - overlay overlay rw,lowerdir=/r`,
		`44 22 0:39 / /tmp/nspawn-a-10/root rw - overlay overlay rw`,
		`45 22 0:40 / /tmp/nspawn-a-1/with\040space rw - tmpfs tmpfs rw`,
		`46 22 0:41 / /tmp/nspawn-a-1 rw - tmpfs tmpfs rw`,
		``,
	}, "\n")
	tests := []struct {
		dir  string
		want []string
	}{
		{"/tmp/nspawn-a-1", []string{"/tmp/nspawn-a-1/root", "/tmp/nspawn-a-1/with space", "/tmp/nspawn-a-1"}},
		{"/tmp/nspawn-a-1/", []string{"/tmp/nspawn-a-1/root", "/tmp/nspawn-a-1/with space", "/tmp/nspawn-a-1"}},
		{"/tmp/nspawn-a-10", []string{"/tmp/nspawn-a-10/root"}},
		{"/srv", nil},
	}
	for _, tt := range tests {
		if got := parseMountsUnder([]byte(mi), tt.dir); !slices.Equal(got, tt.want) {
			t.Errorf("parseMountsUnder(%q) = %q, want %q", tt.dir, got, tt.want)
		}
	}
}

func TestBootRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"upper-case name", Options{Name: "Node1"}, "machine name"},
		{"name with underscore", Options{Name: "node_1"}, "machine name"},
		{"comma in rootfs", Options{Name: "n", Rootfs: "/var/a,b"}, "overlay"},
		{"env without value", Options{Name: "n", Rootfs: "/nonexistent", Env: []string{"JUSTKEY"}}, "KEY=VALUE"},
		{"sysctl as a path", Options{Name: "n", Sysctls: map[string]string{"../../etc/passwd": "x"}}, "dotted name"},
		{"rootfs not built", Options{Name: "n", Rootfs: "/nonexistent"}, "hack/rootfs.sh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Boot(context.Background(), tt.o)
			if err == nil {
				m.Close()
				t.Fatal("Boot succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}
