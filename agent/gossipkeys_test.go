package agent

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// `nodeagent status` names the gossip key generation the node sends with,
// a rotation under way, and a keyring document it could not apply.
func TestStatusTableShowsGossipKeyGeneration(t *testing.T) {
	for _, tc := range []struct {
		gs   bootstrap.GossipStatus
		want string
	}{
		{bootstrap.GossipStatus{}, "Gossip:    single key (no keyring document)\n"},
		{bootstrap.GossipStatus{KeyGeneration: 2, KeyGenerations: []uint64{2}}, "Gossip:    key generation 2\n"},
		{bootstrap.GossipStatus{KeyGeneration: 2, KeyGenerations: []uint64{1, 2}}, "Gossip:    key generation 2 (accepts [1 2]: a rotation is under way)\n"},
		{bootstrap.GossipStatus{KeyGeneration: 2, KeyGenerations: []uint64{2}, KeyringError: "gossip keyring document: 0 keys"},
			"Gossip:    key generation 2; keyring document not applied: gossip keyring document: 0 keys\n"},
	} {
		var out bytes.Buffer
		if err := WriteStatusTable(&out, &bootstrap.State{Gossip: &tc.gs}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("status table for %+v lacks %q:\n%s", tc.gs, tc.want, out.String())
		}
	}
}
