//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeagent/nodeagent/config"
)

// TestEtcdBlankVolumeReplacement: a master is lost together with its etcd
// volumes; its replacement gets blank volumes (zeroed loop devices) in their
// place. The replacement's agent asks the live peers, removes the lost members,
// joins as new members (learners, then promoted), and catches up: every key is
// readable from it, the member count never exceeds three, and quorum is never
// lost. Before that, the masters' daemons have taken a backup into the state
// store, which `nodeagent etcd backups` lists.
func TestEtcdBlankVolumeReplacement(t *testing.T) {
	h := newHALab(t)
	ctx := context.Background()
	masters := h.bootMastersAtOnce(ctx, "i-0ed0master")

	// The leader's daemon backs etcd up into the state store soon after it forms.
	eventually(t, 3*time.Minute, "a backup of etcd main in the state store", func() (bool, string) {
		out, stderr, code := h.agent(ctx, masters[0], "etcd", "backups", "--cluster", "main", "-o", "json")
		var bs []struct {
			Revision int64  `json:"revision"`
			SHA256   string `json:"sha256"`
		}
		if code != 0 || json.Unmarshal(out, &bs) != nil || len(bs) == 0 || bs[0].Revision == 0 || len(bs[0].SHA256) != 64 {
			return false, fmt.Sprintf("exit %d: %s %s", code, out, stderr)
		}
		return true, ""
	})

	survivors, victim := masters[:2], masters[2]
	var eps []string
	for _, m := range survivors {
		eps = append(eps, net.JoinHostPort(m.IP, "2379"))
	}
	cli := h.etcdClient(survivors[0], "main", eps...)
	for i := range 200 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/etcddata/key-%03d", i), strings.Repeat("v", 512)); err != nil {
			t.Fatal(err)
		}
	}
	before, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldIDs := map[uint64]bool{}
	for _, m := range before.Members {
		oldIDs[m.ID] = true
	}

	// Master c dies with its volumes: blank ones of the same IDs take their place.
	h.kill(ctx, victim)
	killed := time.Now()
	for _, ec := range []string{"main", "events"} {
		blankVolume(t, h, "vol-0"+ec+"c")
	}
	stopQuorum := watchQuorum(t, h, survivors)
	stopCount := watchMemberCount(cli)
	repl := h.boot(ctx, "i-0ed0master0000003", config.RoleControlPlane, haZones[2].az)
	rctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	_, stderr, code := h.agent(rctx, repl, "bootstrap")
	cancel()
	t.Logf("replacement bootstrap: exit %d\n%s", code, lastLines(stderr, 15))
	eventually(t, 10*time.Minute, "replacement ready", func() (bool, string) {
		st, code := h.status(ctx, repl)
		return code == 0, st.Readiness.Reason + " " + st.Error
	})
	t.Logf("FIGURE master lost with its volumes → blank replacement's members joined, promoted and healthy: %s", time.Since(killed).Round(time.Second))
	if lost := stopQuorum(); len(lost) > 0 {
		t.Errorf("quorum lost on the survivors: %v", lost)
	}
	if maxN := stopCount(); maxN > 3 {
		t.Errorf("etcd main had %d members during the replacement, want at most 3", maxN)
	}

	st, _ := h.status(ctx, repl)
	formatted := 0
	for _, v := range st.Volumes {
		if v.Formatted {
			formatted++
		}
	}
	if formatted != 2 {
		t.Errorf("replacement formatted %d volumes, want its 2 blank ones: %+v", formatted, st.Volumes)
	}
	for _, ec := range []struct {
		name string
		port int
	}{{"main", 2379}, {"events", 4002}} {
		all := append(eps[:0:0], net.JoinHostPort(survivors[0].IP, fmt.Sprint(ec.port)), net.JoinHostPort(survivors[1].IP, fmt.Sprint(ec.port)), net.JoinHostPort(repl.IP, fmt.Sprint(ec.port)))
		ids := assertEtcdFormed(t, h.etcdClient(survivors[0], ec.name, all...), ec.name, all)
		if ec.name == "main" && oldIDs[ids["c"]] {
			t.Errorf("member c came back under its old ID %x: a blank member must join as a new member", ids["c"])
		}
	}
	// Every key, read from the replacement alone.
	rcli := h.etcdClient(survivors[0], "main", net.JoinHostPort(repl.IP, "2379"))
	r, err := rcli.Get(ctx, "/etcddata/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
	if err != nil || r.Count != 200 {
		t.Errorf("replacement serves %v of 200 keys (%v)", r, err)
	}
	out, _, code := h.agent(ctx, repl, "etcd", "members")
	if code != 0 || strings.Contains(string(out), "learner") || strings.Count(string(out), "https://etcd-") < 3 {
		t.Errorf("etcd members on the replacement: exit %d\n%s", code, out)
	}
}

// blankVolume zeroes a detached volume's backing file: a new, blank EBS volume
// under the old ID and tags.
func blankVolume(t *testing.T, h *haLab, id string) {
	t.Helper()
	eventually(t, time.Minute, id+" detached", func() (bool, string) {
		st, _ := h.env.Emu.VolumeStatus(id)
		return st.InstanceID == "" && st.State == "available", fmt.Sprintf("%+v", st)
	})
	st, _ := h.env.Emu.VolumeStatus(id)
	p := st.BackingFile
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, fi.Size()); err != nil {
		t.Fatal(err)
	}
}

// watchMemberCount samples etcd main's member list until stopped and returns the
// largest count seen.
func watchMemberCount(cli *clientv3.Client) (stop func() int) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	maxN := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if ml, err := cli.MemberList(ctx); err == nil {
				maxN = max(maxN, len(ml.Members))
			}
			cancel()
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		return maxN
	}
}
