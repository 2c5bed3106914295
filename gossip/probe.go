package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrKeyMismatch is what Probe returns when the peer answered but the key (or
// the cluster label) does not match the ring's.
var ErrKeyMismatch = errors.New("encryption key mismatch")

// ProbeConfig is a one-off check that this node can reach a peer's gossip port
// and be accepted with its key.
type ProbeConfig struct {
	ClusterName string
	// NodeName is the name the probe joins under briefly; it leaves at once.
	NodeName string
	BindIP   net.IP
	// Peer is "ip" or "ip:port"; the port defaults to Port.
	Peer      string
	Port      int
	SecretKey []byte
	Timeout   time.Duration
}

// Probe joins the peer's ring from an ephemeral port with the same key and
// label as the agent, then leaves. It returns nil when the peer accepted the
// key, an error wrapping ErrKeyMismatch when it answered but the key or label
// differ, and another error when the peer's port cannot be reached.
func Probe(ctx context.Context, c ProbeConfig) error {
	if err := ValidateKey(c.SecretKey); err != nil {
		return fmt.Errorf("gossip probe: %w", err)
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	peer := withPort(c.Peer, c.Port)
	d := net.Dialer{Timeout: c.Timeout}
	conn, err := d.DialContext(ctx, "tcp", peer)
	if err != nil {
		return fmt.Errorf("gossip port of %s does not answer: %w", peer, err)
	}
	conn.Close()

	tr, err := listen(c.BindIP, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("gossip probe: listen: %w", err)
	}
	keyring, err := memberlist.NewKeyring(nil, c.SecretKey)
	if err != nil {
		tr.Shutdown()
		return fmt.Errorf("gossip probe: keyring: %w", err)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.NodeName
	mc.BindAddr, mc.AdvertiseAddr = c.BindIP.String(), c.BindIP.String()
	mc.BindPort, mc.AdvertisePort = tr.port, tr.port
	mc.Transport = tr
	mc.Keyring = keyring
	mc.Label = "nodeagent/" + c.ClusterName
	mc.TCPTimeout = c.Timeout
	mc.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		return fmt.Errorf("gossip probe: %w", err)
	}
	defer ml.Shutdown()
	_, jerr := ml.Join([]string{peer})
	if jerr == nil {
		_ = ml.Leave(time.Second)
		return nil
	}
	// A peer that cannot decrypt our stream, or reads another cluster's label
	// on it, closes it: after the port answered, an EOF is that refusal.
	if isKeyMismatch(jerr.Error()) || strings.Contains(jerr.Error(), "EOF") {
		return fmt.Errorf("%s answered but refused to gossip with us: %w (%v)", peer, ErrKeyMismatch, jerr)
	}
	return fmt.Errorf("join %s: %w", peer, jerr)
}
