package volumes

import (
	"context"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
)

// benchAttachLatency is how long the emulator keeps a volume "attaching".
const benchAttachLatency = 200 * time.Millisecond

// BenchmarkClaim measures claim → mounted for a fresh control-plane node (main and
// events: describe, attach, wait for attached and for the device, probe, mkfs.ext4,
// mount, fstab) with the production polling back-off, against the wire-level
// emulator. overhead-ms is the time beyond the emulator's attach latency: what
// the agent itself adds, polling included.
func BenchmarkClaim(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
		_, c := emu(b, []*node{n}, []awsemu.Volume{
			etcdVolume("vol-0m1", n.az, "main", "a", "a"), etcdVolume("vol-0e1", n.az, "events", "a", "a"),
		}, func(w *awsemu.World) { w.AttachLatency = benchAttachLatency })
		p := newPhase(b, c, n, bothEtcd)
		p.poll = defaultPoll
		b.StartTimer()
		start := time.Now()
		if _, err := converge(context.Background(), p); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		if len(p.Claims()) != 2 {
			b.Fatalf("claims = %+v", p.Claims())
		}
	}
	mean := total / time.Duration(b.N)
	b.ReportMetric(float64(mean.Microseconds())/1000, "claim-ms")
	b.ReportMetric(float64((mean-benchAttachLatency).Microseconds())/1000, "overhead-ms")
}
