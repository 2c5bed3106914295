package assets

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
)

// s3:// through the agent's own S3 client (cloud.NewS3, configured only through
// the SDK's standard environment) against the wire-level AWS emulator: SigV4 is
// verified there, errors are real S3 XML, throttling is the emulator's own.
func TestS3ThroughEmulator(t *testing.T) {
	small := randomBytes(t, 300<<10)
	big := randomBytes(t, 8<<20)
	bigFile := filepath.Join(t.TempDir(), "containerd")
	if err := os.WriteFile(bigFile, big, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		asset      config.Asset
		faults     *awsemu.Faults
		want       []byte
		wantSource string
		wantGets   int // -1: see minGets
		minGets    int
		seed       int64
		wantErr    string
	}{
		{
			name:       "inline object",
			asset:      config.Asset{Name: "kubelet", URLs: []string{"s3://assets/v1.31.2/kubelet"}, SHA256: sumOf(small)},
			want:       small,
			wantSource: "s3://assets/v1.31.2/kubelet",
			wantGets:   1,
		},
		{
			name:       "big object served from a file",
			asset:      config.Asset{Name: "containerd", URLs: []string{"s3://assets/containerd"}, SHA256: sumOf(big)},
			want:       big,
			wantSource: "s3://assets/containerd",
			wantGets:   1,
		},
		{
			name:       "NoSuchKey falls through to the next mirror without retry",
			asset:      config.Asset{Name: "kubelet", URLs: []string{"s3://assets/nope", "s3://assets/v1.31.2/kubelet"}, SHA256: sumOf(small)},
			want:       small,
			wantSource: "s3://assets/v1.31.2/kubelet",
			wantGets:   2,
		},
		{
			name:       "NoSuchBucket likewise",
			asset:      config.Asset{Name: "kubelet", URLs: []string{"s3://other-bucket/kubelet", "s3://assets/v1.31.2/kubelet"}, SHA256: sumOf(small)},
			want:       small,
			wantSource: "s3://assets/v1.31.2/kubelet",
			wantGets:   2,
		},
		{
			name:   "heavy throttling is ridden out",
			asset:  config.Asset{Name: "kubelet", URLs: []string{"s3://assets/v1.31.2/kubelet"}, SHA256: sumOf(small)},
			faults: &awsemu.Faults{ThrottleRate: 0.7},
			// This seed throttles enough requests in a row to exhaust the SDK's own
			// 3 attempts, so the installer's retry is what rides it out.
			seed:       16,
			want:       small,
			wantSource: "s3://assets/v1.31.2/kubelet",
			wantGets:   -1,
			minGets:    4,
		},
		{
			name:     "object with other content",
			asset:    config.Asset{Name: "kubelet", URLs: []string{"s3://assets/containerd"}, SHA256: sumOf(small)},
			wantGets: 1,
			wantErr:  "sha256 mismatch for kubelet from s3://assets/containerd: expected " + sumOf(small) + ", got " + sumOf(big),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			emu := awsemu.Start(t, &awsemu.World{
				Buckets:     map[string]map[string]string{"assets": {"v1.31.2/kubelet": string(small)}},
				ObjectFiles: map[string]map[string]string{"assets": {"containerd": bigFile}},
			}, awsemu.Options{Seed: tc.seed})
			emu.Setenv(t, "")
			if tc.faults != nil {
				emu.E.SetFaults(awsemu.ServiceS3, *tc.faults)
			}
			cfg, err := cloud.LoadConfig(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			inst, _ := newInstaller(t)
			inst.S3 = cloud.NewS3(cfg)
			ph := inst.Phase([]config.Asset{tc.asset})
			_, err = runPhase(context.Background(), ph)
			gets := emu.E.Calls(awsemu.ServiceS3, "GetObject")
			if tc.wantGets >= 0 && gets != tc.wantGets {
				t.Errorf("%d GetObject calls, want %d", gets, tc.wantGets)
			}
			if gets < tc.minGets {
				t.Errorf("%d GetObject calls, want at least %d", gets, tc.minGets)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(inst.Root.Path(InstallPath(tc.asset))); !bytes.Equal(b, tc.want) {
				t.Error("installed file is not the object")
			}
			var st bootstrap.State
			ph.Report(&st)
			if len(st.Assets) != 1 || st.Assets[0].Source != tc.wantSource {
				t.Errorf("report %+v, want source %s", st.Assets, tc.wantSource)
			}
		})
	}
}
