package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/gossip"
)

// GossipRotateKey asks the ring to rotate its key (`nodeagent gossip
// rotate-key`): a new key (random, or keyFile's) is written into the state
// store's keyring document as installed; the masters' daemons make it primary
// and remove the old one once every alive member has taken each step. With
// wait > 0 it follows the document until the rotation is done.
func GossipRotateKey(ctx context.Context, o Options, w io.Writer, keyFile string, wait time.Duration) error {
	if o.ConfigFile == "" {
		saved := filepath.Join(o.stateDir(), effectiveConfigName)
		if _, err := os.Stat(saved); err == nil {
			o.ConfigFile = saved
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	n, err := LoadNode(ctx, o, identityIfAvailable)
	if err != nil {
		return err
	}
	if !gossipEnabled(n.Config.Spec.Cluster.Name) {
		return fmt.Errorf("cluster %s does not use gossip (only .k8s.local clusters do)", n.Config.Spec.Cluster.Name)
	}
	if n.Store == nil {
		return errors.New("no state store (spec.cluster.stateStore) or no AWS configuration: the keyring document lives in the state store")
	}
	var newKey []byte
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("new gossip key: %w", err)
		}
		newKey = trimKey(b)
		if err := gossip.ValidateKey(newKey); err != nil {
			return fmt.Errorf("new gossip key %s: %w", keyFile, err)
		}
	}
	legacy := func(ctx context.Context) ([]byte, error) { return gossipSingleKey(ctx, o, n) }
	d, err := gossip.RequestRotation(ctx, n.Store, cloud.GossipKeyringKey, legacy, newKey, time.Now())
	if err != nil {
		return err
	}
	target := d.Generation + 1
	fmt.Fprintf(w, "gossip key rotation requested: generation %d installed beside %d in %s\n", target, d.Generation, n.Store.URL(cloud.GossipKeyringKey))
	fmt.Fprintln(w, "the masters make it primary and remove the old key once every alive member has taken each step")
	if wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	step := d.Step()
	for {
		cur, err := gossip.LoadKeyring(ctx, n.Store, cloud.GossipKeyringKey)
		if err != nil {
			return fmt.Errorf("follow the rotation: %w", err)
		}
		if s := cur.Step(); s != step {
			step = s
			switch {
			case s == "use":
				fmt.Fprintf(w, "every member holds generation %d; it is primary now\n", cur.Generation)
			case s == "" && cur.Generation == target:
				fmt.Fprintf(w, "every member sends with generation %d; the old key is removed: done\n", cur.Generation)
				return nil
			}
		}
		if cur.Generation > target || (cur.Step() == "" && cur.Generation != target) {
			return fmt.Errorf("the keyring document changed under the rotation (now generation %d)", cur.Generation)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rotation to generation %d not finished within %v (step %q): a member that does not take the step holds it; `nodeagent status --cluster` shows each member's key generation", target, wait, step)
		}
		t := time.NewTimer(2 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
