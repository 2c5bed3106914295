//go:build e2e

package etcdbackup

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/etcd"
)

var benchSizes = flag.String("backup.sizes", "100", "keyspace sizes in MB for BenchmarkBackup, comma-separated (e.g. 100,1000)")

// BenchmarkBackup fills a real one-member etcd with each keyspace size, then
// measures a backup (snapshot, verify, multipart upload to the S3 emulator) and
// a restore (download, verify, restore into a fresh data dir, member serving).
func BenchmarkBackup(b *testing.B) {
	for _, s := range strings.Split(*benchSizes, ",") {
		mb, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			b.Fatalf("-backup.sizes: %v", err)
		}
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) { benchBackup(b, mb) })
	}
}

func benchBackup(b *testing.B, mb int) {
	l := newLab(b)
	a := l.members[0]
	l.start(a, etcd.JoinPlan{State: etcd.StateNew, InitialCluster: []string{"a=" + a.peerURL()}}, "bench")
	l.healthy(a, time.Minute)
	cli := l.client(a, a)
	fillStart := time.Now()
	fill(b, cli, "/bench/", mb*16, 64<<10) // 16 values of 64 KiB per MB
	b.Logf("filled %d MB in %s", mb, time.Since(fillStart).Round(time.Second))
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		tk := &Taker{Store: l.store, Cluster: "main", Member: "a", Endpoint: a.clientURL(), Scratch: b.TempDir(), Tool: l.tool}
		res, err := tk.Tick(ctx, cli, time.Now().Add(time.Duration(i)*2*time.Hour))
		if err != nil || res.Taken == nil {
			b.Fatalf("backup: %+v %v", res, err)
		}
		took := time.Since(start)
		fmt.Printf("FIGURE etcd backup of a %d MB keyspace (snapshot %s, verify, multipart upload to the S3 emulator): %s\n",
			mb, humanMB(res.Taken.Size), took.Round(10*time.Millisecond))

		start = time.Now()
		cmd, _, err := l.store.RequestRestore(ctx, l.tool, "main", "latest", "a", b.TempDir(), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		l.stop(a)
		if _, err := (Step{Store: l.store, Command: cmd, Member: "a", PeerURL: a.peerURL(), Volume: a.volume, Scratch: b.TempDir(), Tool: l.tool}).Apply(ctx, time.Now()); err != nil {
			b.Fatal(err)
		}
		l.start(a, etcd.JoinPlan{State: etcd.StateNew, InitialCluster: []string{"a=" + a.peerURL()}}, cmd.Token)
		l.healthy(a, 5*time.Minute)
		fmt.Printf("FIGURE etcd restore of a %d MB keyspace (download, verify, restore, member serving): %s\n",
			mb, time.Since(start).Round(10*time.Millisecond))
		olds, _ := filepath.Glob(filepath.Join(a.volume, "data.before-restore-*"))
		for _, o := range olds { // the bench keeps its disk use bounded; the test checks that they are kept
			os.RemoveAll(o)
		}
	}
}

func humanMB(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }
