package gossip

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestProbe: a probe with the ring's key is accepted; with another key the
// peer answers but refuses it (named as a key mismatch); a closed port is
// unreachable, not a key problem.
func TestProbe(t *testing.T) {
	key := []byte("0123456789abcdef")
	ip := net.ParseIP("127.0.0.1")
	peer, err := Start(context.Background(), Config{ClusterName: "probe.k8s.local", NodeName: "peer-a", BindIP: ip, Port: freePort(t, ip), SecretKey: key, Log: testLogger(t, "peer-a")})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Shutdown()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(peer.cfg.Port))
	probe := func(k []byte, cluster string) error {
		return Probe(context.Background(), ProbeConfig{ClusterName: cluster, NodeName: "doctor-probe", BindIP: ip, Peer: addr, SecretKey: k, Timeout: 2 * time.Second})
	}
	if err := probe(key, "probe.k8s.local"); err != nil {
		t.Errorf("probe with the ring's key: %v", err)
	}
	if err := probe([]byte("fedcba9876543210"), "probe.k8s.local"); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("probe with another key = %v, want a key mismatch", err)
	}
	if err := probe(key, "other.k8s.local"); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("probe with another cluster's label = %v, want a mismatch", err)
	}
	closed := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, ip)))
	err = Probe(context.Background(), ProbeConfig{ClusterName: "probe.k8s.local", NodeName: "doctor-probe", BindIP: ip, Peer: closed, SecretKey: key, Timeout: time.Second})
	if err == nil || errors.Is(err, ErrKeyMismatch) {
		t.Errorf("probe of a closed port = %v, want unreachable", err)
	}
}
