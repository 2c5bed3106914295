package gossip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestMetadataRoundTrip(t *testing.T) {
	const c = "prod.k8s.local"
	tests := []struct {
		name    string
		in      metadata
		maxSize int // the encoding must stay compact
	}{
		{"worker, not ready", metadata{Role: "Node"}, 8},
		{"control plane, ready, internal names shortened",
			metadata{Ready: true, Role: "ControlPlane", Names: []string{
				"api.internal." + c, "etcd-a.internal." + c, "etcd-events-a.internal." + c}}, 44},
		{"name under the cluster but not .internal", metadata{Names: []string{"bastion." + c}}, 14},
		{"literal names from elsewhere", metadata{Names: []string{"ip-10-0-0-1.ec2.internal", "k8s.local"}}, 40},
		{"the cluster name itself stays literal", metadata{Names: []string{c}}, 20},
		{"a worker with its pod CIDR", metadata{Ready: true, Role: "Node", PodCIDR: netip.MustParsePrefix("100.96.17.0/24")}, 15},
		{"an IPv6 pod CIDR", metadata{Role: "Node", PodCIDR: netip.MustParsePrefix("fd00:10:96:11::/64")}, 27},
		{"a record's version (its incarnation)", metadata{Role: "Node", Incarnation: 300}, 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := encodeMeta(tt.in, c)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > tt.maxSize {
				t.Errorf("encoded to %d bytes, want at most %d", len(b), tt.maxSize)
			}
			got, err := decodeMeta(b, c)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.in) {
				t.Errorf("round trip: got %+v, want %+v", got, tt.in)
			}
		})
	}
}

func TestMetadataSizeLimit(t *testing.T) {
	var names []string
	for i := 0; ; i++ {
		names = append(names, fmt.Sprintf("a-rather-long-published-name-%03d.example.org", i))
		_, err := encodeMeta(metadata{Role: "Node", Names: names}, "c.k8s.local")
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrMetaTooLarge) {
			t.Fatalf("error %v, want ErrMetaTooLarge", err)
		}
		if i < 5 {
			t.Fatalf("only %d names fit", i)
		}
		return
	}
}

func TestMetadataRejectsBadNames(t *testing.T) {
	for _, n := range []string{"", "has space", "new\nline", "hash#tag", "-lead", "trail-", "a..b", strings.Repeat("x", 64)} {
		if _, err := encodeMeta(metadata{Names: []string{n}}, "c"); err == nil {
			t.Errorf("encodeMeta accepted %q", n)
		}
	}
}

func TestDecodeMetaRejectsCorruptInput(t *testing.T) {
	good, err := encodeMeta(metadata{Role: "Node", Names: []string{"api.internal.c"}}, "c")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"other version", append([]byte{9}, good[1:]...)},
		{"truncated", good[:len(good)-2]},
		{"a trailing byte that is no whole field", append(append([]byte(nil), good...), 0)},
		{"a field longer than the input", append(append([]byte(nil), good...), fieldPodCIDR, 9, 100, 96)},
		{"a pod CIDR that is no prefix", append(append([]byte(nil), good...), fieldPodCIDR, 2, 100, 96)},
		{"a pod CIDR with host bits", append(append([]byte(nil), good...), fieldPodCIDR, 5, 100, 96, 1, 7, 24)},
		{"a pod CIDR with too many bits", append(append([]byte(nil), good...), fieldPodCIDR, 5, 100, 96, 1, 0, 33)},
		{"a record version that is no uvarint", append(append([]byte(nil), good...), fieldVersion, 1, 0x80)},
		{"a record version with trailing bytes", append(append([]byte(nil), good...), fieldVersion, 2, 7, 7)},
		{"role longer than input", []byte{1, 0, 200}},
		{"huge name count", []byte{1, 0, 0, 0xff, 0xff, 0x03}},
		{"unknown kind", []byte{1, 0, 0, 1, 1<<2 | 3, 'x'}},
		{"newline smuggled into a name", []byte{1, 0, 0, 1, 3 << 2, 'a', '\n', 'b'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if m, err := decodeMeta(tt.in, "c"); err == nil {
				t.Fatalf("decoded %+v, want an error", m)
			}
		})
	}
}

// The optional fields keep records readable across versions: what agents
// before the pod CIDR published still decodes, and a field this version does not
// know is skipped rather than costing the member its names.
func TestMetadataCompatibility(t *testing.T) {
	const c = "prod.k8s.local"
	t.Run("a record of an agent before optional fields", func(t *testing.T) {
		// ready, role "Node", one name "api.internal.<c>" in the original layout.
		old := []byte{1, flagReady, 4, 'N', 'o', 'd', 'e', 1, 3<<2 | kindInternal, 'a', 'p', 'i'}
		got, err := decodeMeta(old, c)
		if err != nil {
			t.Fatal(err)
		}
		want := metadata{Ready: true, Role: "Node", Names: []string{"api.internal." + c}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if got.Incarnation != 0 {
			t.Errorf("a record without a version decodes at incarnation %d, want 0", got.Incarnation)
		}
	})
	t.Run("no pod CIDR encodes to the original layout", func(t *testing.T) {
		b, err := encodeMeta(metadata{Role: "Node", Names: []string{"x." + c}}, c)
		if err != nil {
			t.Fatal(err)
		}
		if want := []byte{1, 0, 4, 'N', 'o', 'd', 'e', 1, 1<<2 | kindCluster, 'x'}; !reflect.DeepEqual(b, want) {
			t.Errorf("encoded %v, want %v", b, want)
		}
	})
	t.Run("a field of a newer agent is skipped", func(t *testing.T) {
		in := metadata{Role: "Node", Names: []string{"api.internal." + c}, PodCIDR: netip.MustParsePrefix("100.96.3.0/24")}
		b, err := encodeMeta(in, c)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, 42, 3, 'n', 'e', 'w')
		got, err := decodeMeta(b, c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, in) {
			t.Errorf("got %+v, want %+v", got, in)
		}
	})
	t.Run("a pod CIDR with host bits is not published", func(t *testing.T) {
		if _, err := encodeMeta(metadata{PodCIDR: netip.MustParsePrefix("100.96.3.7/24")}, c); err == nil {
			t.Error("encoded 100.96.3.7/24")
		}
	})
}

func TestValidateKey(t *testing.T) {
	for n := 0; n <= 40; n++ {
		err := ValidateKey(make([]byte, n))
		want := n == 16 || n == 24 || n == 32
		if (err == nil) != want {
			t.Errorf("key of %d bytes: err=%v, want accepted=%v", n, err, want)
		}
	}
}

func TestStartValidatesConfig(t *testing.T) {
	ok := Config{ClusterName: "c.k8s.local", NodeName: "n1", BindIP: net.IPv4(127, 0, 0, 1), SecretKey: make([]byte, 32)}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"short key", func(c *Config) { c.SecretKey = []byte("0123456789") }, "10 bytes, want 16, 24 or 32"},
		{"missing key", func(c *Config) { c.SecretKey = nil }, "0 bytes"},
		{"no cluster", func(c *Config) { c.ClusterName = "" }, "cluster name"},
		{"bad node name", func(c *Config) { c.NodeName = "a b" }, "not a valid host name"},
		{"no bind IP", func(c *Config) { c.BindIP = nil }, "bind IP"},
		{"bad published name", func(c *Config) { c.Names = []string{"x y"} }, "not a valid host name"},
		{"port out of range", func(c *Config) { c.Port = 70000 }, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			_, err := Start(t.Context(), c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestLogWriter(t *testing.T) {
	var rejects []string
	w := newLogWriter(discardLogger(), func(addr, reason string) { rejects = append(rejects, addr+" "+reason) })
	lines := []string{
		"2026/01/01 00:00:00 [ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.7:3999",
		"[ERR] memberlist: failed to receive: No installed keys could decrypt the message from=10.0.0.7:41234",
		"[ERR] memberlist: failed to receive: encryption is configured but remote state is not encrypted from=10.0.0.8:5555",
		"[ERR] memberlist: discarding packet with unacceptable label \"nodeagent/other\": from=10.0.0.9:3999",
		"[DEBUG] memberlist: Stream connection from=10.0.0.2:1111",
		`[ERR] memberlist: discarding stream with unacceptable label "": from=10.0.0.3:2222`, // an aborted dial, not a foreign node
	}
	for _, l := range lines {
		w.Write([]byte(l + "\n"))
	}
	want := []string{
		"10.0.0.7:3999 encryption key mismatch",
		"10.0.0.7:41234 encryption key mismatch",
		"10.0.0.8:5555 encryption key mismatch",
		"10.0.0.9:3999 cluster label mismatch (a node of another cluster)",
	}
	if !reflect.DeepEqual(rejects, want) {
		t.Fatalf("rejects:\n%q\nwant:\n%q", rejects, want)
	}
}

func TestNormalizeNames(t *testing.T) {
	got := normalizeNames([]string{"b", "a", "b", "c", "a"})
	if want := []string{"a", "b", "c"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
