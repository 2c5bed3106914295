package volumes

import (
	"context"
	"errors"
	"fmt"
	"os"

	"path/filepath"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// volState is where one etcd cluster's claim stands (shown in status).
type volState string

const (
	stateAttaching volState = "attaching"
	stateAttached  volState = "attached"
	stateMounted   volState = "mounted"
	stateFailed    volState = "failed"
)

type progress struct {
	claim Claim
	state volState
}

func (p *ClaimPhase) setProgress(etcdCluster string, c candidate, st volState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.progress[etcdCluster]
	if pr == nil || pr.claim.VolumeID != c.ID {
		pr = &progress{}
		p.progress[etcdCluster] = pr
	}
	pr.claim.EtcdCluster = etcdCluster
	pr.claim.VolumeID = c.ID
	pr.claim.Member = c.Member
	pr.claim.Members = c.Members
	pr.claim.MountPoint = mountPointFor(c.ID)
	pr.state = st
}

func (p *ClaimPhase) update(etcdCluster string, fn func(*progress)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr := p.progress[etcdCluster]; pr != nil {
		fn(pr)
	}
}

// warn records a warning once (describes repeat while waiting).
func (p *ClaimPhase) warn(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Contains(p.warnings, msg) {
		return
	}
	p.warnings = append(p.warnings, msg)
	p.o.Log.Warn("etcd volume skipped", "reason", msg)
}

// warnOnly records a warning about something that does not fail the phase.
func (p *ClaimPhase) warnOnly(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(p.warnings, msg) {
		p.warnings = append(p.warnings, msg)
		p.o.Log.Warn("volumes warning", "warning", msg)
	}
}

// Check implements bootstrap.Phase. It only describes and reads: no attach, no
// format, no mount, no file written.
func (p *ClaimPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	var changes []bootstrap.Change
	var errs []error
	for _, ec := range p.o.EtcdClusters {
		ch, err := p.checkCluster(ctx, ec.Name)
		changes = append(changes, ch...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return changes, errors.Join(errs...)
}

func (p *ClaimPhase) checkCluster(ctx context.Context, etcdCluster string) ([]bootstrap.Change, error) {
	target := "etcd-" + etcdCluster
	cs, err := p.describe(ctx, etcdCluster)
	if err != nil {
		return nil, err
	}
	mine, err := ours(etcdCluster, cs)
	if err != nil {
		return nil, err
	}
	if mine == nil {
		detail := "no volume available yet in " + p.o.AvailabilityZone + "; will wait up to " + p.o.AttachTimeout.String()
		if own, ok := p.ownedVolume(etcdCluster); ok {
			detail = "wait for this node's own volume: " + p.ownedElsewhere(own, cs).Error()
			if slices.ContainsFunc(available(cs), func(c candidate) bool { return c.ID == own.VolumeID }) {
				detail = "re-attach this node's own volume " + own.VolumeID + " (member " + own.Member + ")"
			}
		} else if free := available(cs); len(free) > 0 {
			ids := make([]string, len(free))
			for i, c := range free {
				ids[i] = c.ID
			}
			detail = fmt.Sprintf("first that this node wins of %v", ids)
		}
		return []bootstrap.Change{
			{Kind: "volume", Target: target, Action: "attach", Detail: detail},
			{Kind: "volume", Target: target, Action: "format", Detail: "ext4, only if the claimed volume is blank"},
			{Kind: "volume", Target: target, Action: "mount", Detail: "at /mnt/master-<volume-id>"},
		}, nil
	}
	mp := mountPointFor(mine.ID)
	var changes []bootstrap.Change
	if mine.Ours.State != "attached" {
		changes = append(changes, bootstrap.Change{Kind: "volume", Target: mine.ID, Action: "attach", Detail: "wait: attachment to this instance is " + string(mine.Ours.State)})
	}
	dev, err := p.resolveDevice(mine.ID, aws.ToString(mine.Ours.Device))
	if errors.Is(err, errNoDevice) {
		return append(changes,
			bootstrap.Change{Kind: "volume", Target: mine.ID, Action: "format", Detail: "ext4, only if blank (device not present yet)"},
			bootstrap.Change{Kind: "volume", Target: mine.ID, Action: "mount", Detail: "at " + mp}), nil
	}
	if err != nil {
		return changes, err
	}
	st, err := checkMount(dev, p.mountTarget(mine.ID))
	if err != nil {
		return changes, fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	content, err := ProbeDevice(dev)
	if err != nil {
		return changes, err
	}
	switch {
	case content.Kind == Blank:
		changes = append(changes,
			bootstrap.Change{Kind: "volume", Target: dev, Action: "format", Detail: "ext4 on blank " + mine.ID},
			bootstrap.Change{Kind: "volume", Target: mine.ID, Action: "mount", Detail: "at " + mp},
			bootstrap.Change{Kind: "file", Target: "/etc/fstab", Action: "update", Detail: "mount " + mp})
		return changes, nil
	case !content.Mountable():
		return changes, refuseFormat(mine.ID, dev, content)
	}
	if st != mountedCorrectly {
		changes = append(changes, bootstrap.Change{Kind: "volume", Target: mine.ID, Action: "mount", Detail: dev + " (" + content.Type + ") at " + mp})
	}
	if ok, err := p.fstabCurrent(content.UUID, mp, content.Type); err != nil {
		return changes, err
	} else if !ok {
		changes = append(changes, bootstrap.Change{Kind: "file", Target: "/etc/fstab", Action: "update", Detail: "mount " + mp + " by UUID " + content.UUID})
	}
	if len(changes) == 0 {
		p.setProgress(etcdCluster, *mine, stateMounted)
		p.update(etcdCluster, func(pr *progress) { pr.claim.Device = dev })
	}
	return changes, nil
}

// Act implements bootstrap.Phase: the etcd clusters are claimed concurrently (an
// attach takes seconds), each one converging on its own.
func (p *ClaimPhase) Act(ctx context.Context) error {
	if err := p.validate(); err != nil {
		return err
	}
	errs := make([]error, len(p.o.EtcdClusters))
	var wg sync.WaitGroup
	for i, ec := range p.o.EtcdClusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.actCluster(ctx, ec.Name); err != nil {
				p.update(ec.Name, func(pr *progress) { pr.state = stateFailed })
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (p *ClaimPhase) actCluster(ctx context.Context, etcdCluster string) error {
	log := p.o.Log.With("etcdCluster", etcdCluster)
	c, err := p.claimVolume(ctx, etcdCluster)
	if err != nil {
		return err
	}
	log = log.With("volume", c.ID, "member", c.Member)
	dev, err := p.waitDevice(ctx, c.ID, aws.ToString(c.Ours.Device))
	if err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	p.update(etcdCluster, func(pr *progress) { pr.claim.Device = dev })
	target := p.mountTarget(c.ID)
	// A device mounted anywhere unexpected stops us before we even probe it.
	st, err := checkMount(dev, target)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	content, err := ProbeDevice(dev)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	formatted := false
	switch {
	case content.Kind == Blank:
		log.Info("volume is blank; formatting", "device", dev)
		content, err = formatExt4(ctx, c.ID, etcdCluster, dev)
		if err != nil {
			return fmt.Errorf("etcd %s: %w", etcdCluster, err)
		}
		formatted = true
		p.update(etcdCluster, func(pr *progress) { pr.claim.Formatted = true })
		log.Info("formatted", "device", dev, "uuid", content.UUID)
		// gofail: var volumesAfterMkfs string
		// failpointCrash("volumesAfterMkfs", volumesAfterMkfs, etcdCluster)
	case !content.Mountable():
		return fmt.Errorf("etcd %s: %w", etcdCluster, refuseFormat(c.ID, dev, content))
	default:
		log.Info("volume has a filesystem; keeping it", "device", dev, "type", content.Type, "uuid", content.UUID)
	}
	if st != mountedCorrectly {
		if err := mountDevice(dev, target, content.Type, p.warnOnly); err != nil {
			return fmt.Errorf("etcd %s: %w", etcdCluster, err)
		}
		log.Info("mounted", "device", dev, "mountPoint", target)
	}
	if formatted {
		// etcd wants its data private; mkfs leaves the new root 0755. An
		// existing filesystem's modes are its owner's business and stay.
		if err := os.Chmod(target, 0o700); err != nil {
			return fmt.Errorf("etcd %s: %w", etcdCluster, err)
		}
	}
	if err := p.ensureFstab(content.UUID, mountPointFor(c.ID), content.Type, etcdCluster, c.ID); err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	if st, err := checkMount(dev, target); err != nil || st != mountedCorrectly {
		return fmt.Errorf("etcd %s: %s is not mounted at %s after mounting it: %v", etcdCluster, dev, target, err)
	}
	p.update(etcdCluster, func(pr *progress) { pr.state = stateMounted })
	return nil
}

// Verify implements bootstrap.Phase: each etcd cluster has exactly one volume
// attached here, its device mounted at its mount point and persisted in fstab.
func (p *ClaimPhase) Verify(ctx context.Context) error {
	if err := p.validate(); err != nil {
		return err
	}
	var errs []error
	for _, ec := range p.o.EtcdClusters {
		if err := p.verifyCluster(ctx, ec.Name); err != nil {
			p.update(ec.Name, func(pr *progress) { pr.state = stateFailed })
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *ClaimPhase) verifyCluster(ctx context.Context, etcdCluster string) error {
	cs, err := p.describe(ctx, etcdCluster)
	if err != nil {
		return err
	}
	mine, err := ours(etcdCluster, cs)
	if err != nil {
		return err
	}
	if mine == nil {
		return fmt.Errorf("etcd %s: no volume is attached to this instance", etcdCluster)
	}
	if mine.Ours.State != "attached" {
		return fmt.Errorf("etcd %s: volume %s is %s, not attached", etcdCluster, mine.ID, mine.Ours.State)
	}
	dev, err := p.resolveDevice(mine.ID, aws.ToString(mine.Ours.Device))
	if err != nil {
		return fmt.Errorf("etcd %s: volume %s: %w", etcdCluster, mine.ID, err)
	}
	target := p.mountTarget(mine.ID)
	st, err := checkMount(dev, target)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	if st != mountedCorrectly {
		return fmt.Errorf("etcd %s: %s (%s) is not mounted at %s", etcdCluster, mine.ID, dev, target)
	}
	content, err := ProbeDevice(dev)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", etcdCluster, err)
	}
	if ok, err := p.fstabCurrent(content.UUID, mountPointFor(mine.ID), content.Type); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("etcd %s: /etc/fstab has no current line for %s", etcdCluster, mountPointFor(mine.ID))
	}
	formatted := false
	p.mu.Lock()
	if pr := p.progress[etcdCluster]; pr != nil && pr.claim.VolumeID == mine.ID {
		formatted = pr.claim.Formatted
	}
	p.mu.Unlock()
	p.setProgress(etcdCluster, *mine, stateMounted)
	p.update(etcdCluster, func(pr *progress) { pr.claim.Device, pr.claim.Formatted = dev, formatted })
	return nil
}

// Report implements bootstrap.Reporter.
func (p *ClaimPhase) Report(st *bootstrap.State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Formatted is history: a run that finds the volume mounted (the daemon's
	// reconcile, a re-run) did not format it, but the boot that did must stay
	// on record.
	formatted := map[string]bool{}
	for _, v := range st.Volumes {
		formatted[v.ID] = v.Formatted
	}
	var vols []bootstrap.VolumeStatus
	for _, ec := range p.o.EtcdClusters {
		pr := p.progress[ec.Name]
		if pr == nil {
			continue
		}
		c := pr.claim
		vols = append(vols, bootstrap.VolumeStatus{
			ID: c.VolumeID, EtcdCluster: c.EtcdCluster, Member: c.Member, Members: append([]string(nil), c.Members...),
			Device: c.Device, MountPoint: c.MountPoint, Formatted: c.Formatted || formatted[c.VolumeID], State: string(pr.state),
		})
	}
	st.Volumes = vols
}

// Warnings implements bootstrap.Warner: volumes skipped for bad tags.
func (p *ClaimPhase) Warnings() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.warnings...)
}

func (p *ClaimPhase) validate() error {
	var missing []string
	if p.o.EC2 == nil {
		missing = append(missing, "EC2 client")
	}
	for k, v := range map[string]string{"cluster name": p.o.ClusterName, "instance id": p.o.InstanceID, "availability zone": p.o.AvailabilityZone} {
		if v == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("volumes: missing %v", missing)
	}
	seen := map[string]bool{}
	for _, ec := range p.o.EtcdClusters {
		if ec.Name == "" || seen[ec.Name] {
			return fmt.Errorf("volumes: etcd cluster name %q is empty or repeated", ec.Name)
		}
		seen[ec.Name] = true
	}
	return nil
}

// mountTarget is where the volume is mounted in this process's view: the mount
// point under Root, with any symlink in Root itself resolved so it compares equal
// to what mountinfo shows.
func (p *ClaimPhase) mountTarget(volumeID string) string {
	t := p.o.Root.Path(mountPointFor(volumeID))
	dir := filepath.Dir(t)
	for d := dir; ; d = filepath.Dir(d) {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			rel, _ := filepath.Rel(d, t)
			return filepath.Join(r, rel)
		}
		if d == "/" || d == "." {
			return t
		}
	}
}

func (p *ClaimPhase) fstabCurrent(uuid, mountPoint, fstype string) (bool, error) {
	if uuid == "" {
		return false, fmt.Errorf("%s: filesystem has no UUID to name it by in /etc/fstab", mountPoint)
	}
	old, _, err := readFstab(p.o.Root)
	if err != nil {
		return false, err
	}
	want := fstabEdit(old, mountPoint, fstabLine(uuid, mountPoint, fstype), "")
	return string(want) == string(old), nil
}

// ensureFstab writes the fstab line for the mount, atomically, touching no other line.
func (p *ClaimPhase) ensureFstab(uuid, mountPoint, fstype, etcdCluster, volumeID string) error {
	if uuid == "" {
		return fmt.Errorf("%s: filesystem has no UUID to name it by in /etc/fstab", mountPoint)
	}
	p.fstabMu.Lock() // both clusters' claims edit the same file
	defer p.fstabMu.Unlock()
	old, perm, err := readFstab(p.o.Root)
	if err != nil {
		return err
	}
	want := fstabEdit(old, mountPoint, fstabLine(uuid, mountPoint, fstype),
		fmt.Sprintf("etcd %s volume %s, managed by nodeagent", etcdCluster, volumeID))
	if string(want) == string(old) {
		return nil
	}
	path := p.o.Root.Path("/etc/fstab")
	if err := fsutil.WriteFileAtomic(path, want, perm); err != nil {
		return err
	}
	p.o.Log.Info("persisted mount in fstab", "path", path, "mountPoint", mountPoint, "uuid", uuid)
	return nil
}

var _ bootstrap.Phase = (*ClaimPhase)(nil)
var _ bootstrap.Reporter = (*ClaimPhase)(nil)
var _ bootstrap.Warner = (*ClaimPhase)(nil)
