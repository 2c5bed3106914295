package gossip

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

const (
	begin = HostsBegin + "\n"
	end   = HostsEnd + "\n"
)

func TestRenderHostsBlock(t *testing.T) {
	entries := map[string][]string{
		"api.internal.c.k8s.local":    {"10.0.0.10", "10.0.0.9"},
		"etcd-a.internal.c.k8s.local": {"10.0.0.9"},
		"node-b":                      {"10.0.0.10"},
		"node-a":                      {"10.0.0.9"},
	}
	block := begin +
		"10.0.0.9 api.internal.c.k8s.local etcd-a.internal.c.k8s.local node-a\n" + // numeric IP order: .9 before .10
		"10.0.0.10 api.internal.c.k8s.local node-b\n" +
		end
	tests := []struct {
		name     string
		existing string
		entries  map[string][]string
		want     string
	}{
		{"empty file", "", entries, block},
		{"no block yet: appended after the distro's lines",
			"127.0.0.1 localhost\n::1 localhost\n", entries,
			"127.0.0.1 localhost\n::1 localhost\n" + block},
		{"no trailing newline: one is added before the block",
			"127.0.0.1 localhost", entries,
			"127.0.0.1 localhost\n" + block},
		{"existing block replaced, lines around it kept byte for byte",
			"127.0.0.1 localhost\r\n# keep   me\t\n" + begin + "10.1.1.1 stale\n" + end + "192.168.0.1  mine # comment\n\n",
			entries,
			"127.0.0.1 localhost\r\n# keep   me\t\n" + block + "192.168.0.1  mine # comment\n\n"},
		{"no entries: empty block", "127.0.0.1 localhost\n" + begin + "10.1.1.1 stale\n" + end, nil,
			"127.0.0.1 localhost\n" + begin + end},
		{"begin without end (interrupted in-place write): block runs to the end",
			"127.0.0.1 localhost\n" + begin + "10.1.1.1 sta", entries,
			"127.0.0.1 localhost\n" + block},
		{"end marker without newline at EOF",
			"127.0.0.1 localhost\n" + begin + "10.1.1.1 stale\n" + HostsEnd, entries,
			"127.0.0.1 localhost\n" + block},
		{"duplicate IPs for one name collapse",
			"", map[string][]string{"x": {"10.0.0.1", "10.0.0.1"}},
			begin + "10.0.0.1 x\n" + end},
		{"IPv6 after IPv4",
			"", map[string][]string{"v6": {"fd00::1"}, "v4": {"10.0.0.1"}},
			begin + "10.0.0.1 v4\nfd00::1 v6\n" + end},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(RenderHostsBlock([]byte(tt.existing), tt.entries))
			if got != tt.want {
				t.Fatalf("got:\n%s\nwant:\n%s", got, tt.want)
			}
			// Idempotent: rendering the result again changes nothing.
			if again := string(RenderHostsBlock([]byte(got), tt.entries)); again != got {
				t.Fatalf("second render differs:\n%s\nfirst:\n%s", again, got)
			}
		})
	}
}

// TestRenderHostsGolden renders a realistic three-control-plane cluster onto a
// stock hosts file.
func TestRenderHostsGolden(t *testing.T) {
	existing, err := os.ReadFile(filepath.Join("testdata", "hosts.in"))
	if err != nil {
		t.Fatal(err)
	}
	c := "prod.k8s.local"
	entries := map[string][]string{}
	add := func(ip string, names ...string) {
		for _, n := range names {
			entries[n] = append(entries[n], ip)
		}
	}
	for i, m := range []string{"a", "b", "c"} {
		ip := "172.20.32." + string(rune('1'+i))
		add(ip, "api.internal."+c, "etcd-"+m+".internal."+c, "etcd-events-"+m+".internal."+c,
			"ip-172-20-32-"+string(rune('1'+i))+".eu-west-1.compute.internal")
	}
	add("172.20.64.200", "ip-172-20-64-200.eu-west-1.compute.internal")
	for n := range entries {
		entries[n] = sortIPs(entries[n])
	}
	got := RenderHostsBlock(existing, entries)
	golden := filepath.Join("testdata", "hosts.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("render differs from %s (run with -update after checking):\n%s", golden, got)
	}
}

func TestWriteHosts(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hosts")
	orig := "127.0.0.1 localhost\n"
	if err := os.WriteFile(p, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	e := map[string][]string{"node-a": {"10.0.0.1"}}
	if wrote, err := writeHosts(p, e); err != nil || !wrote {
		t.Fatalf("first write: wrote=%v err=%v", wrote, err)
	}
	fi1, _ := os.Stat(p)
	if fi1.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's own 0640 kept", fi1.Mode().Perm())
	}
	got, _ := os.ReadFile(p)
	if want := orig + begin + "10.0.0.1 node-a\n" + end; string(got) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	// Unchanged content: no write at all, so the inode (replaced by every
	// atomic write) stays the same.
	if wrote, err := writeHosts(p, e); err != nil || wrote {
		t.Fatalf("second write: wrote=%v err=%v, want no write", wrote, err)
	}
	fi2, _ := os.Stat(p)
	if !os.SameFile(fi1, fi2) {
		t.Error("unchanged content was rewritten")
	}
	if _, err := writeHosts(p, nil); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(p)
	if want := orig + begin + end; string(got) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	if strings.Count(string(got), HostsBegin) != 1 {
		t.Fatal("more than one managed block")
	}
}
