package volumes

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
)

func TestParseMountInfo(t *testing.T) {
	in := `22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
98 22 259:5 / /mnt/master-vol-0abc rw,noatime shared:50 - ext4 /dev/nvme1n1 rw
99 22 0:44 / /mnt/with\040space rw - tmpfs tmp\134fs rw,size=10k
100 22 0:45 / /btr rw master:3 propagate_from:2 - btrfs /dev/sdc rw,space_cache
`
	got, err := parseMountInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountInfo{
		{259, 1, "/", "ext4", "/dev/nvme0n1p1"},
		{259, 5, "/mnt/master-vol-0abc", "ext4", "/dev/nvme1n1"},
		{0, 44, "/mnt/with space", "tmpfs", `tmp\fs`},
		{0, 45, "/btr", "btrfs", "/dev/sdc"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries: %+v", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"1 2 3\n", "1 2 x:y / / rw - ext4 /dev/a rw\n", "1 2 8:1 / / rw shared:1 ext4 /dev/a rw\n"} {
		if _, err := parseMountInfo([]byte(bad)); err == nil {
			t.Errorf("parseMountInfo(%q) accepted a malformed line", bad)
		}
	}
}

func TestFstabEdit(t *testing.T) {
	const mp = "/mnt/master-vol-0abc"
	line := fstabLine("0b5c7e2a-1111-2222-3333-444455556666", mp, "ext4")
	if line != "UUID=0b5c7e2a-1111-2222-3333-444455556666 /mnt/master-vol-0abc ext4 defaults,noatime,nofail 0 2" {
		t.Fatalf("fstabLine = %q", line)
	}
	const comment = "etcd main volume vol-0abc, managed by nodeagent"
	tests := []struct {
		name, in, want string
	}{
		{"empty file", "", "# " + comment + "\n" + line + "\n"},
		{"others kept byte for byte, no final newline",
			"# <fs> <mp>\nUUID=r / ext4 defaults 0 1\n\n/dev/sdb\t/srv   xfs  defaults 0 0",
			"# <fs> <mp>\nUUID=r / ext4 defaults 0 1\n\n/dev/sdb\t/srv   xfs  defaults 0 0\n# " + comment + "\n" + line + "\n"},
		{"stale line for our mount point replaced in place",
			"UUID=r / ext4 defaults 0 1\n# " + comment + "\n/dev/xvdu " + mp + " ext4 defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\n",
			"UUID=r / ext4 defaults 0 1\n# " + comment + "\n" + line + "\ntmpfs /tmp tmpfs defaults 0 0\n"},
		{"duplicates of our mount point collapse to one",
			"/dev/a " + mp + " ext4 defaults 0 0\n/dev/b " + mp + " ext4 defaults 0 0\n",
			line + "\n"},
		{"a commented-out line is not ours", "#/dev/a " + mp + " ext4 defaults 0 0\n",
			"#/dev/a " + mp + " ext4 defaults 0 0\n# " + comment + "\n" + line + "\n"},
		{"a longer mount point is not ours", "/dev/a " + mp + "x ext4 defaults 0 0\n",
			"/dev/a " + mp + "x ext4 defaults 0 0\n# " + comment + "\n" + line + "\n"},
		{"already current: unchanged", "UUID=r / ext4 defaults 0 1\n" + line + "\n", "UUID=r / ext4 defaults 0 1\n" + line + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(fstabEdit([]byte(tt.in), mp, line, comment))
			if got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
			if again := string(fstabEdit([]byte(got), mp, line, comment)); again != got {
				t.Errorf("not idempotent:\n%s", again)
			}
		})
	}
}

func TestParseEtcdTag(t *testing.T) {
	tests := []struct {
		in      string
		member  string
		members string
		err     string
	}{
		{in: "a/a,b,c", member: "a", members: "a,b,c"},
		{in: "c/a,b,c", member: "c", members: "a,b,c"},
		{in: "etcd-1/etcd-1", member: "etcd-1", members: "etcd-1"},
		{in: "a", err: "has no '/'"},
		{in: "/a,b", err: "member name \"\" is empty"},
		{in: "d/a,b,c", err: "not in its own member list"},
		{in: "a/a,,b", err: "empty or invalid name \"\""},
		{in: "a/a,a", err: "listed twice"},
		{in: "a/a, b", err: "invalid name \" b\""},
		{in: "A/A", err: "characters other than"},
		{in: "", err: "has no '/'"},
	}
	for _, tt := range tests {
		m, ms, err := parseEtcdTag(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseEtcdTag(%q) err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || m != tt.member || strings.Join(ms, ",") != tt.members {
			t.Errorf("parseEtcdTag(%q) = %q %q %v", tt.in, m, ms, err)
		}
	}
}

// TestCheckChangesNothing: the plan of a fresh node lists the claim and makes no
// attach, no directory, no mount and no fstab.
func TestCheckChangesNothing(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	r, c := emu(t, []*node{n}, []awsemu.Volume{
		etcdVolume("vol-0m1", n.az, "main", "a", "a"), etcdVolume("vol-0e1", n.az, "events", "a", "a"),
	}, nil)
	p := newPhase(t, c, n, bothEtcd)
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"attach volume etcd-main (first that this node wins of [vol-0m1])",
		"format volume etcd-main (ext4, only if the claimed volume is blank)",
		"mount volume etcd-main (at /mnt/master-<volume-id>)",
		"attach volume etcd-events (first that this node wins of [vol-0e1])",
		"format volume etcd-events (ext4, only if the claimed volume is blank)",
		"mount volume etcd-events (at /mnt/master-<volume-id>)",
	}
	assertChanges(t, changes, want)
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 0 {
		t.Errorf("Check made %d AttachVolume calls", got)
	}
	if entries, _ := os.ReadDir(n.root); len(entries) != 0 {
		t.Errorf("Check wrote under the root: %v", entries)
	}
	if len(p.Claims()) != 0 {
		t.Errorf("claims before any attach: %+v", p.Claims())
	}
}

// TestCheckAfterAttachOnly: a node that died right after attaching. The plan is
// format (the device is blank), mount and fstab; acting attaches nothing.
func TestCheckAfterAttachOnly(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "t2.large"}
	v := etcdVolume("vol-0m1", n.az, "main", "a", "a")
	v.AttachedTo, v.Device, v.State = n.id, "/dev/sdu", "in-use" // Xen: appears as /dev/xvdu
	r, c := emu(t, []*node{n}, []awsemu.Volume{v}, nil)
	p := newPhase(t, c, n, bothEtcd[:1])
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st, _ := r.E.VolumeStatus("vol-0m1")
	assertChanges(t, changes, []string{
		"format volume " + st.LoopDevice + " (ext4 on blank vol-0m1)",
		"mount volume vol-0m1 (at /mnt/master-vol-0m1)",
		"update file /etc/fstab (mount /mnt/master-vol-0m1)",
	})
	if _, err := converge(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 0 {
		t.Errorf("AttachVolume calls = %d for a volume already attached", got)
	}
	if cl := p.Claims(); len(cl) != 1 || cl[0].Device != st.LoopDevice || !cl[0].Formatted {
		t.Errorf("claims = %+v, want vol-0m1 on %s, formatted", cl, st.LoopDevice)
	}
	var vs bootstrap.State
	p.Report(&vs)
	want := bootstrap.VolumeStatus{
		ID: "vol-0m1", EtcdCluster: "main", Member: "a", Members: []string{"a"}, Device: st.LoopDevice,
		MountPoint: "/mnt/master-vol-0m1", Formatted: true, State: "mounted",
	}
	if len(vs.Volumes) != 1 || !reflect.DeepEqual(vs.Volumes[0], want) {
		t.Errorf("report = %+v, want %+v", vs.Volumes, want)
	}

	// A later run (the daemon's reconcile) finds the volume mounted and
	// formats nothing; the record still says this node formatted it.
	again := newPhase(t, c, n, bothEtcd[:1])
	if _, err := converge(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	if cl := again.Claims(); len(cl) != 1 || cl[0].Formatted {
		t.Fatalf("the later run's claims = %+v, want vol-0m1 not formatted by it", cl)
	}
	again.Report(&vs)
	if len(vs.Volumes) != 1 || !reflect.DeepEqual(vs.Volumes[0], want) {
		t.Errorf("report after a later run = %+v, want %+v (formatted at boot stays on record)", vs.Volumes, want)
	}
}

func assertChanges(t *testing.T, changes []bootstrap.Change, want []string) {
	t.Helper()
	var got []string
	for _, c := range changes {
		got = append(got, c.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMountConflicts: after a claim, someone else's mount on our mount point, or
// our device mounted elsewhere, is reported by both plan and act and left alone.
func TestMountConflicts(t *testing.T) {
	tests := []struct {
		name    string
		arrange func(t *testing.T, target, dev string) (undo func())
		wantErr string
	}{
		{"another filesystem on the mount point", func(t *testing.T, target, dev string) func() {
			if err := unix.Mount("tmpfs", target, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatal(err)
			}
			return func() { unix.Unmount(target, 0) }
		}, "tmpfs"},
		{"the device mounted elsewhere", func(t *testing.T, target, dev string) func() {
			other := t.TempDir()
			if err := unix.Mount(dev, other, "ext4", 0, ""); err != nil {
				t.Fatal(err)
			}
			return func() { unix.Unmount(other, 0) }
		}, "is already mounted at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
			_, c := emu(t, []*node{n}, []awsemu.Volume{etcdVolume("vol-0m1", n.az, "main", "a", "a")}, nil)
			ctx := context.Background()
			p := newPhase(t, c, n, bothEtcd[:1])
			if _, err := converge(ctx, p); err != nil {
				t.Fatal(err)
			}
			cl := p.Claims()[0]
			target := filepath.Join(n.root, cl.MountPoint)
			if err := unix.Unmount(target, 0); err != nil {
				t.Fatal(err)
			}
			undo := tt.arrange(t, target, cl.Device)
			t.Cleanup(undo)
			before, _ := readMountInfo()

			p2 := newPhase(t, c, n, bothEtcd[:1])
			if _, err := p2.Check(ctx); err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "not touching") {
				t.Errorf("check: %v, want %q", err, tt.wantErr)
			}
			if err := p2.Act(ctx); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("act: %v, want %q", err, tt.wantErr)
			}
			if err := p2.Verify(ctx); err == nil {
				t.Error("verify passed with a conflicting mount")
			}
			after, _ := readMountInfo()
			if len(after) != len(before) {
				t.Errorf("mounts changed: %d -> %d", len(before), len(after))
			}
		})
	}
}

// TestClaimRefusesUnusableAttachedVolume: a volume on this instance whose tag
// became malformed is not skipped in favour of another (that would give the node
// a second etcd member): the claim stops with the reason.
func TestClaimRefusesUnusableAttachedVolume(t *testing.T) {
	n := &node{id: "i-0aaa", az: "us-east-1a", typ: "m5.large"}
	mine := etcdVolume("vol-01", n.az, "main", "a", "a,b")
	mine.Tags["k8s.io/etcd/main"] = "a/b" // a is not among its members
	mine.AttachedTo, mine.Device, mine.State = n.id, "/dev/xvdu", "in-use"
	r, c := emu(t, []*node{n}, []awsemu.Volume{mine, etcdVolume("vol-02", n.az, "main", "b", "a,b")}, nil)
	p := newPhase(t, c, n, bothEtcd[:1])
	start := time.Now()
	err := p.Act(context.Background())
	if err == nil || !strings.Contains(err.Error(), "vol-01: malformed tag k8s.io/etcd/main") || !strings.Contains(err.Error(), "no other volume is claimed") {
		t.Fatalf("act: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("a permanent problem was retried until the attach timeout")
	}
	if got := r.E.Calls(awsemu.ServiceEC2, "AttachVolume"); got != 0 {
		t.Errorf("AttachVolume calls = %d, want none", got)
	}
}
