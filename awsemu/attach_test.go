package awsemu

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/nodeagent/nodeagent/cloud"
)

// loopBacking is what the kernel says backs a loop device ("" when free).
func loopBacking(t *testing.T, dev string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func TestAttachMakesRealDevices(t *testing.T) {
	w := testWorld(t)
	r := Start(t, w, Options{VolumeDir: t.TempDir()})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	cases := []struct {
		name, instance, volume, device string
		devRoot                        string
		wantLink                       string // relative to the instance's DevRoot
	}{
		{"nitro: NVMe by-id link", nitroID, volA, "/dev/xvdu", w.Instances[0].DevRoot, "dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol00000000000000a01"},
		{"xen: sdX becomes xvdX", xenID, volXen, "/dev/sdf", w.Instances[2].DevRoot, "dev/xvdf"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.AttachVolume(ctx(t), &ec2.AttachVolumeInput{VolumeId: aws.String(tc.volume), InstanceId: aws.String(tc.instance), Device: aws.String(tc.device)})
			if err != nil {
				t.Fatal(err)
			}
			if out.State != types.VolumeAttachmentStateAttaching || aws.ToString(out.Device) != tc.device {
				t.Errorf("AttachVolume answered state %s device %s", out.State, aws.ToString(out.Device))
			}
			link := filepath.Join(tc.devRoot, tc.wantLink)
			loop, err := os.Readlink(link)
			if err != nil {
				t.Fatalf("no device link: %v", err)
			}
			if !strings.HasPrefix(loop, "/dev/loop") {
				t.Fatalf("link points at %s, want /dev/loopN", loop)
			}
			st, _ := r.E.VolumeStatus(tc.volume)
			if st.AttachState != "attached" || st.LoopDevice != loop || st.DevicePath != link {
				t.Errorf("status = %+v", st)
			}
			if got := loopBacking(t, loop); got != st.BackingFile {
				t.Fatalf("kernel says %s is backed by %q, want %q", loop, got, st.BackingFile)
			}
			if fi, err := os.Stat(st.BackingFile); err != nil || fi.Size() != 8<<20 {
				t.Fatalf("backing file: %v, size %d", err, fi.Size())
			}
			// Data written through the device lands in the volume's file.
			marker := []byte("etcd-data-" + tc.volume)
			f, err := os.OpenFile(link, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(marker, 4096); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			back, err := os.ReadFile(st.BackingFile)
			if err != nil || !bytes.Equal(back[4096:4096+len(marker)], marker) {
				t.Fatalf("marker not in backing file (err %v)", err)
			}

			vols, err := c.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{VolumeIds: []string{tc.volume}})
			if err != nil {
				t.Fatal(err)
			}
			if a := vols.Volumes[0].Attachments; len(a) != 1 || a[0].State != types.VolumeAttachmentStateAttached || vols.Volumes[0].State != types.VolumeStateInUse {
				t.Errorf("DescribeVolumes after attach: %+v", vols.Volumes[0])
			}

			det, err := c.DetachVolume(ctx(t), &ec2.DetachVolumeInput{VolumeId: aws.String(tc.volume)})
			if err != nil {
				t.Fatal(err)
			}
			if det.State != types.VolumeAttachmentStateDetaching {
				t.Errorf("DetachVolume answered %s", det.State)
			}
			if _, err := os.Lstat(link); !os.IsNotExist(err) {
				t.Errorf("link still there after detach: %v", err)
			}
			if got := loopBacking(t, loop); got == st.BackingFile {
				t.Errorf("%s still backed by the volume after detach", loop)
			}
			if st, _ := r.E.VolumeStatus(tc.volume); st.State != "available" || st.InstanceID != "" {
				t.Errorf("after detach: %+v", st)
			}
		})
	}
}

func TestAttachRace(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	// Two control-plane nodes of one zone claim the same etcd volume at once.
	contenders := []string{nitroID, nitroB}
	errs := make([]error, len(contenders))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, id := range contenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = c.AttachVolume(ctx(t), &ec2.AttachVolumeInput{VolumeId: aws.String(volA), InstanceId: aws.String(id), Device: aws.String("/dev/xvdu")})
		}()
	}
	close(start)
	wg.Wait()
	var winner string
	losers := 0
	for i, err := range errs {
		switch {
		case err == nil:
			if winner != "" {
				t.Fatalf("both %s and %s attached %s", winner, contenders[i], volA)
			}
			winner = contenders[i]
		case apiCode(err) == "VolumeInUse":
			losers++
		default:
			t.Fatalf("%s: unexpected error %v", contenders[i], err)
		}
	}
	if winner == "" || losers != 1 {
		t.Fatalf("winner %q, %d losers; want exactly one of each", winner, losers)
	}
	if st, _ := r.E.VolumeStatus(volA); st.InstanceID != winner {
		t.Fatalf("volume attached to %q, winner was %q", st.InstanceID, winner)
	}
	if n := r.E.Calls("ec2", "AttachVolume"); n != 2 {
		t.Errorf("AttachVolume calls = %d, want 2 (no retries of a lost claim)", n)
	}
}

func TestAttachErrors(t *testing.T) {
	w := testWorld(t)
	w.Instances = append(w.Instances, Instance{ID: "i-00000000000000ded", AvailabilityZone: "us-east-1a", State: "terminated"})
	w.Volumes = append(w.Volumes, Volume{ID: "vol-00000000000000e01", AvailabilityZone: "us-east-1a", SizeMiB: 8, AttachedTo: nitroB, Device: "/dev/xvdv"})
	r := Start(t, w, Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	cases := []struct {
		name, volume, instance, device, wantCode string
	}{
		{"volume in another zone", volXen, nitroID, "/dev/xvdu", "InvalidVolume.ZoneMismatch"},
		{"unknown volume", "vol-0000000000000dead", nitroID, "/dev/xvdu", "InvalidVolume.NotFound"},
		{"unknown instance", volA, "i-0000000000000dead", "/dev/xvdu", "InvalidInstanceID.NotFound"},
		{"attached elsewhere", "vol-00000000000000e01", nitroID, "/dev/xvdu", "VolumeInUse"},
		{"terminated instance", volA, "i-00000000000000ded", "/dev/xvdu", "IncorrectState"},
		{"bad device name", volA, nitroID, "/dev/nvme1n1", "InvalidParameterValue"},
		{"device slot taken", volB, nitroB, "/dev/sdv", "InvalidParameterValue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.AttachVolume(ctx(t), &ec2.AttachVolumeInput{VolumeId: aws.String(tc.volume), InstanceId: aws.String(tc.instance), Device: aws.String(tc.device)})
			if apiCode(err) != tc.wantCode {
				t.Fatalf("err = %v, want %s", err, tc.wantCode)
			}
		})
	}
	t.Run("detach an available volume", func(t *testing.T) {
		_, err := c.DetachVolume(ctx(t), &ec2.DetachVolumeInput{VolumeId: aws.String(volA)})
		if apiCode(err) != "IncorrectState" {
			t.Fatalf("err = %v, want IncorrectState", err)
		}
	})
	t.Run("detach from the wrong instance", func(t *testing.T) {
		_, err := c.DetachVolume(ctx(t), &ec2.DetachVolumeInput{VolumeId: aws.String("vol-00000000000000e01"), InstanceId: aws.String(nitroID)})
		if apiCode(err) != "InvalidAttachment.NotFound" {
			t.Fatalf("err = %v, want InvalidAttachment.NotFound", err)
		}
	})
}

func TestAttachLatencyAndStuck(t *testing.T) {
	w := testWorld(t)
	w.AttachLatency = 300 * time.Millisecond
	w.StuckAttaching = []string{volB}
	r := Start(t, w, Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	// The latency counts from the attach call, not from the first poll: on a
	// loaded machine the calls before the poll may take a good part of it.
	began := time.Now()
	for _, v := range []string{volA, volB} {
		dev := map[string]string{volA: "/dev/xvdu", volB: "/dev/xvdv"}[v]
		if _, err := c.AttachVolume(ctx(t), &ec2.AttachVolumeInput{VolumeId: aws.String(v), InstanceId: aws.String(nitroID), Device: aws.String(dev)}); err != nil {
			t.Fatal(err)
		}
	}
	state := func(v string) types.VolumeAttachmentState {
		out, err := c.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{VolumeIds: []string{v}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Volumes[0].Attachments[0].State
	}
	if s := state(volA); s != types.VolumeAttachmentStateAttaching {
		t.Fatalf("right after attach: %s, want attaching", s)
	}
	link := filepath.Join(w.Instances[0].DevRoot, "dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol00000000000000a01")
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Fatalf("device link exists while attaching: %v", err)
	}
	// The volume is in-use at once (as in EC2); its attachment becomes attached
	// only after the latency. Poll as the agent would.
	for state(volA) != types.VolumeAttachmentStateAttached {
		if time.Since(began) > 10*time.Second {
			t.Fatal("never attached")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if waited := time.Since(began); waited < 200*time.Millisecond {
		t.Errorf("attached after %v, want about the 300ms latency", waited)
	}
	if _, err := os.Readlink(link); err != nil {
		t.Fatalf("no device link once attached: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if s := state(volB); s != types.VolumeAttachmentStateAttaching {
		t.Fatalf("stuck volume: %s, want attaching forever", s)
	}
	if st, _ := r.E.VolumeStatus(volB); st.LoopDevice != "" {
		t.Fatalf("stuck volume got a loop device %s", st.LoopDevice)
	}
}

func TestTerminateDetachesAndCloseCleansUp(t *testing.T) {
	w := testWorld(t)
	e, err := New(w, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	attachDirectly(t, e, volA, nitroID, "/dev/xvdu")
	st, _ := e.VolumeStatus(volA)
	e.SetInstanceState(nitroID, "terminated")
	if after, _ := e.VolumeStatus(volA); after.State != "available" || after.LoopDevice != "" {
		t.Fatalf("after terminate: %+v", after)
	}
	if got := loopBacking(t, st.LoopDevice); got == st.BackingFile {
		t.Fatalf("%s still attached after terminate", st.LoopDevice)
	}

	// A pre-attached volume gets its device at New and loses it at Close.
	w2 := testWorld(t)
	w2.Volumes[0].AttachedTo, w2.Volumes[0].Device = nitroID, "/dev/xvdu"
	e2, err := New(w2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := e2.VolumeStatus(volA)
	if st2.AttachState != "attached" || loopBacking(t, st2.LoopDevice) != st2.BackingFile {
		e2.Close()
		t.Fatalf("pre-attached volume: %+v", st2)
	}
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(st2.DevicePath); !os.IsNotExist(err) {
		t.Errorf("link survives Close: %v", err)
	}
	if loopBacking(t, st2.LoopDevice) == st2.BackingFile {
		t.Errorf("%s survives Close", st2.LoopDevice)
	}
	if _, err := os.Stat(filepath.Dir(st2.BackingFile)); !os.IsNotExist(err) {
		t.Errorf("private volume dir survives Close: %v", err)
	}
}

// TestRestoreVolumeIsTheCopyAtTheCut: a volume restored from a copy of its
// backing file holds what the copy holds, not what was written after it, at
// the same link over a new loop device, and still attached without an EC2
// call. A volume not attached cannot be restored.
func TestRestoreVolumeIsTheCopyAtTheCut(t *testing.T) {
	w := testWorld(t)
	e, err := New(w, Options{VolumeDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := e.RestoreVolume(volA, "/nonexistent"); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Fatalf("restore of a detached volume: %v, want not attached", err)
	}
	attachDirectly(t, e, volA, nitroID, "/dev/xvdu")
	before, _ := e.VolumeStatus(volA)
	writeAt := func(off int64, b []byte) {
		t.Helper()
		f, err := os.OpenFile(before.DevicePath, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	writeAt(4096, []byte("before the cut"))
	// A write still in the block device's own page cache (not synced, the
	// device held open, as by a running mkfs) has not reached the backing
	// file: a copy of it loses that write, as a power cut does.
	dev, err := os.OpenFile(before.DevicePath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.WriteAt([]byte("unflushed at the cut"), 12288); err != nil {
		t.Fatal(err)
	}
	back, err := os.ReadFile(before.BackingFile)
	if err != nil {
		t.Fatal(err)
	}
	cut := before.BackingFile + ".cut"
	if err := os.WriteFile(cut, back, 0o600); err != nil {
		t.Fatal(err)
	}
	writeAt(8192, []byte("after the cut"))

	if err := e.RestoreVolume(volA, cut); err != nil {
		t.Fatal(err)
	}
	after, _ := e.VolumeStatus(volA)
	if after.AttachState != "attached" || after.InstanceID != nitroID || after.DevicePath != before.DevicePath {
		t.Fatalf("after restore: %+v, want attached to %s at %s", after, nitroID, before.DevicePath)
	}
	if got := loopBacking(t, after.LoopDevice); got != after.BackingFile {
		t.Fatalf("kernel says %s is backed by %q, want %q", after.LoopDevice, got, after.BackingFile)
	}
	data, err := os.ReadFile(after.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[4096:4096+len("before the cut")], []byte("before the cut")) {
		t.Error("what the copy held is not on the restored volume")
	}
	if bytes.Contains(back, []byte("unflushed at the cut")) {
		t.Error("a write in the block device's page cache was in the backing file before any flush")
	}
	for _, lost := range []string{"after the cut", "unflushed at the cut"} {
		if bytes.Contains(data, []byte(lost)) {
			t.Errorf("%q survived the restore", lost)
		}
	}
	if n := e.Calls(ServiceEC2, "AttachVolume"); n != 0 {
		t.Errorf("restore recorded %d AttachVolume calls, want none", n)
	}
}

// attachDirectly attaches a volume the way AttachVolume's completion does,
// without the API call, and gives it its loop device.
func attachDirectly(t *testing.T, e *Emulator, volumeID, instanceID, device string) {
	t.Helper()
	e.mu.Lock()
	v := e.volumes[volumeID]
	v.att = &attachment{instanceID: instanceID, device: device, at: e.now()}
	v.State = "in-use"
	err := e.materialize(v)
	e.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}
