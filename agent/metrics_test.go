package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/nodeagent/nodeagent/bootstrap"
)

type slowPhase struct{ name string }

func (p slowPhase) Name() string                                      { return p.name }
func (p slowPhase) Check(context.Context) ([]bootstrap.Change, error) { return nil, nil }
func (p slowPhase) Act(context.Context) error                         { return nil }
func (p slowPhase) Verify(context.Context) error                      { return nil }

// The last boot's timeline is exported per phase, from the state file, as the
// boot's runner recorded it.
func TestBootTimelineMetrics(t *testing.T) {
	store := bootstrap.StateStore{Dir: t.TempDir()}
	c := newBootCollector(store)
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("%d boot series before any boot, want none", n)
	}
	r := &bootstrap.Runner{Store: store, Log: quietLog(), RecordBoot: true}
	if err := r.Run(context.Background(), []bootstrap.Phase{slowPhase{"host-prep"}, slowPhase{"kubelet"}}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "nodeagent_boot_phase_duration_seconds"); n != 2 {
		t.Errorf("%d phase duration series, want 2", n)
	}
	names := []string{"nodeagent_boot_duration_seconds", "nodeagent_boot_start_timestamp_seconds", "nodeagent_boot_phase_start_seconds", "nodeagent_boot_phase_duration_seconds"}
	expo, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, names...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`nodeagent_boot_phase_duration_seconds{phase="kubelet",state="done"}`, `nodeagent_boot_duration_seconds{result="done"}`, `nodeagent_boot_phase_start_seconds{phase="host-prep"}`} {
		if !strings.Contains(string(expo), want) {
			t.Errorf("metrics lack %s:\n%s", want, expo)
		}
	}
}
