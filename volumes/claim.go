package volumes

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// Tags kops puts on etcd volumes.
const (
	tagCluster    = "KubernetesCluster"
	tagEtcdPrefix = "k8s.io/etcd/"
	tagMaster     = "k8s.io/role/master"
)

// candidate is one tagged etcd volume as EC2 describes it.
type candidate struct {
	ID      string
	Member  string
	Members []string
	State   types.VolumeState
	// Ours is the attachment to this instance (attaching or attached), if any.
	Ours *types.VolumeAttachment
	// Holder is the instance the volume is attached to when it is not us.
	Holder string
}

// parseEtcdTag reads kops' "<member>/<member>,<member>,..." value.
func parseEtcdTag(v string) (member string, members []string, err error) {
	member, list, ok := strings.Cut(v, "/")
	if !ok {
		return "", nil, fmt.Errorf("value %q has no '/': want <member>/<all members>, e.g. a/a,b,c", v)
	}
	if !validName(member) {
		return "", nil, fmt.Errorf("value %q: member name %q is empty or has characters other than [a-z0-9-.]", v, member)
	}
	seen := map[string]bool{}
	for _, m := range strings.Split(list, ",") {
		if !validName(m) {
			return "", nil, fmt.Errorf("value %q: member list has an empty or invalid name %q", v, m)
		}
		if seen[m] {
			return "", nil, fmt.Errorf("value %q: member %q is listed twice", v, m)
		}
		seen[m] = true
		members = append(members, m)
	}
	if !seen[member] {
		return "", nil, fmt.Errorf("value %q: member %q is not in its own member list", v, member)
	}
	return member, members, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func tagMap(tags []types.Tag) map[string]string {
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

// toCandidate checks a described volume against everything the filters asked
// for (EC2 filters are trusted but verified: a wrong volume here is data loss) and
// parses its member tag.
func (p *ClaimPhase) toCandidate(v types.Volume, etcdCluster string) (candidate, error) {
	id := aws.ToString(v.VolumeId)
	c := candidate{ID: id, State: v.State}
	for i, a := range v.Attachments {
		inst := aws.ToString(a.InstanceId)
		switch {
		case inst == p.o.InstanceID && (a.State == types.VolumeAttachmentStateAttaching || a.State == types.VolumeAttachmentStateAttached):
			c.Ours = &v.Attachments[i]
		case inst == p.o.InstanceID:
			c.Ours = &v.Attachments[i]
			return c, fmt.Errorf("volume %s is %s from this instance; not using it, nor claiming another, while that goes on", id, a.State)
		case a.State != types.VolumeAttachmentStateDetached:
			c.Holder = inst
		}
	}
	if aws.ToBool(v.MultiAttachEnabled) {
		// Multi-Attach lets a second instance attach the volume while we hold
		// it: the attach would no longer be the lock that keeps two etcd
		// members off one data directory.
		return c, fmt.Errorf("volume %s has Multi-Attach enabled; an etcd volume must attach to one instance only, so it is refused", id)
	}
	tags := tagMap(v.Tags)
	if tags[tagCluster] != p.o.ClusterName {
		return c, fmt.Errorf("volume %s: tag %s=%q, not %q", id, tagCluster, tags[tagCluster], p.o.ClusterName)
	}
	if tags[tagMaster] != "1" {
		return c, fmt.Errorf("volume %s: tag %s=%q, not \"1\"", id, tagMaster, tags[tagMaster])
	}
	if az := aws.ToString(v.AvailabilityZone); az != p.o.AvailabilityZone {
		return c, fmt.Errorf("volume %s is in %s, not in this node's zone %s", id, az, p.o.AvailabilityZone)
	}
	var others []string
	for k := range tags {
		if name, ok := strings.CutPrefix(k, tagEtcdPrefix); ok && name != etcdCluster {
			others = append(others, name)
		}
	}
	if len(others) > 0 {
		slices.Sort(others)
		return c, fmt.Errorf("volume %s is tagged for etcd cluster %s and also for %s; a volume holds one etcd cluster",
			id, etcdCluster, strings.Join(others, ", "))
	}
	val, ok := tags[tagEtcdPrefix+etcdCluster]
	if !ok {
		return c, fmt.Errorf("volume %s has no %s%s tag", id, tagEtcdPrefix, etcdCluster)
	}
	member, members, err := parseEtcdTag(val)
	if err != nil {
		return c, fmt.Errorf("volume %s: malformed tag %s%s: %w", id, tagEtcdPrefix, etcdCluster, err)
	}
	c.Member, c.Members = member, members
	return c, nil
}

// errOursUnusable marks a volume on this instance that cannot be used as it is.
var errOursUnusable = errors.New("a human has to look")

// describe lists this etcd cluster's volumes in our zone. Volumes that fail the
// checks are left out and reported once as warnings.
func (p *ClaimPhase) describe(ctx context.Context, etcdCluster string) ([]candidate, error) {
	vols, err := p.describeAll(ctx, describeInput(p.o, etcdCluster))
	if err != nil {
		return nil, fmt.Errorf("describe etcd %s volumes: %w", etcdCluster, err)
	}
	var out []candidate
	for _, v := range vols {
		c, err := p.toCandidate(v, etcdCluster)
		if err != nil && c.Ours != nil {
			// Skipping a volume that is on this instance would have us attach a
			// second one: this node's etcd data may be on it.
			return nil, fmt.Errorf("etcd %s: %w; it is attached to this instance, so no other volume is claimed until it is fixed: %w", etcdCluster, err, errOursUnusable)
		}
		if err != nil {
			p.warn(fmt.Sprintf("skipping %v", err))
			continue
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b candidate) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// describeInput asks EC2 for one etcd cluster's volumes in this node's zone.
func describeInput(o Options, etcdCluster string) *ec2.DescribeVolumesInput {
	return &ec2.DescribeVolumesInput{Filters: []types.Filter{
		{Name: aws.String("tag:" + tagCluster), Values: []string{o.ClusterName}},
		{Name: aws.String("tag-key"), Values: []string{tagEtcdPrefix + etcdCluster}},
		{Name: aws.String("tag:" + tagMaster), Values: []string{"1"}},
		{Name: aws.String("availability-zone"), Values: []string{o.AvailabilityZone}},
	}}
}

func (p *ClaimPhase) describeAll(ctx context.Context, in *ec2.DescribeVolumesInput) ([]types.Volume, error) {
	var vols []types.Volume
	for page := 0; ; page++ {
		if page > 1000 {
			return nil, errors.New("DescribeVolumes kept returning a NextToken")
		}
		var out *ec2.DescribeVolumesOutput
		err := p.retry(ctx, func() (err error) {
			out, err = p.o.EC2.DescribeVolumes(ctx, in)
			return err
		})
		if err != nil {
			return nil, err
		}
		vols = append(vols, out.Volumes...)
		if aws.ToString(out.NextToken) == "" {
			return vols, nil
		}
		next := *in
		next.NextToken = out.NextToken
		in = &next
	}
}

// describeOne returns one volume's candidate view (for re-checks during a claim).
func (p *ClaimPhase) describeOne(ctx context.Context, etcdCluster, id string) (candidate, error) {
	var out *ec2.DescribeVolumesOutput
	err := p.retry(ctx, func() (err error) {
		out, err = p.o.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		return err
	})
	if err != nil {
		return candidate{}, fmt.Errorf("describe %s: %w", id, err)
	}
	if len(out.Volumes) != 1 {
		return candidate{}, fmt.Errorf("describe %s: EC2 returned %d volumes", id, len(out.Volumes))
	}
	return p.toCandidate(out.Volumes[0], etcdCluster)
}

// ours picks the volume already attached (or attaching) to this instance. Two of
// them for one etcd cluster is a state we never create, and choosing between them
// would be choosing which member's data to serve: refuse.
func ours(etcdCluster string, cs []candidate) (*candidate, error) {
	var mine []candidate
	for _, c := range cs {
		if c.Ours != nil {
			mine = append(mine, c)
		}
	}
	switch len(mine) {
	case 0:
		return nil, nil
	case 1:
		return &mine[0], nil
	default:
		ids := make([]string, len(mine))
		for i, c := range mine {
			ids[i] = c.ID
		}
		return nil, fmt.Errorf("etcd %s: %d of its volumes are attached to this instance (%s); refusing to pick one",
			etcdCluster, len(mine), strings.Join(ids, ", "))
	}
}

func available(cs []candidate) []candidate {
	var out []candidate
	for _, c := range cs {
		if c.State == types.VolumeStateAvailable && c.Ours == nil && c.Holder == "" {
			out = append(out, c)
		}
	}
	return out
}

// apiCode is the AWS error code of err, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// transient reports errors worth asking again: throttling, EC2's own 5xx, and
// no answer at all. The SDK retries these too, but a few times only, and its
// retry quota runs dry under sustained throttling.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch apiCode(err) {
	case "RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable":
		return true
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode() >= 500
	}
	// No HTTP answer (connection refused, reset, quota exhausted before sending).
	return apiCode(err) == ""
}

// retry runs a read-only call until it succeeds, fails for good, or a few
// back-offs have passed. Never used for AttachVolume, whose retries are decided by
// looking at the volume again.
func (p *ClaimPhase) retry(ctx context.Context, call func() error) error {
	bo := p.poll.attach.start()
	var err error
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			if serr := sleep(ctx, bo.next()); serr != nil {
				return err
			}
		}
		if err = call(); !transient(err) {
			return err
		}
	}
	return err
}

// lostRace reports the errors EC2 gives the loser of two concurrent attaches.
func lostRace(err error) bool {
	switch apiCode(err) {
	case "VolumeInUse", "IncorrectState":
		return true
	}
	return false
}

// deviceNameInUse reports EC2's answer to an attach under a name the instance
// already uses.
func deviceNameInUse(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "InvalidParameterValue" &&
		strings.Contains(strings.ToLower(ae.ErrorMessage()), "in use")
}

// claimVolume makes sure exactly one of the etcd cluster's volumes is attached to
// this instance and returns it with its attachment's device name. It adopts a
// volume already attached or attaching to us (a reboot, or a crash after
// AttachVolume) and otherwise attaches the first available one, moving on when
// another node wins it. After any failed or ambiguous attach the volume is
// described again before anything else is tried: an attach whose answer was lost
// may still have succeeded, and attaching a second volume would give this node two
// etcd members.
func (p *ClaimPhase) claimVolume(ctx context.Context, etcdCluster string) (candidate, error) {
	deadline := time.Now().Add(p.o.AttachTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	log := p.o.Log.With("etcdCluster", etcdCluster)
	bo := p.poll.attach.start()
	var last error
	// suspect is a volume whose attach failed without a clear answer (a timeout, a
	// 5xx): it may yet show up as ours. While it is still available it is tried
	// again first, so a late-showing attachment is answered by EC2 as "in use" and
	// found by the describe that follows, never joined by a second volume.
	var suspect string
	waiting := false // the last look found no volume available
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, bo.next()); err != nil {
				if errors.Is(err, context.Canceled) {
					return candidate{}, fmt.Errorf("etcd %s: claim cancelled: %w", etcdCluster, err)
				}
				if last == nil {
					last = errors.New("no volume became available")
				}
				if waiting {
					// Not this node's fault: the volume is still held by the
					// instance this one replaces, or was never made. The daemon
					// keeps trying; the launch is not abandoned.
					return candidate{}, bootstrap.Waiting("etcd %s: no volume available in %s after %s: %v",
						etcdCluster, p.o.AvailabilityZone, p.o.AttachTimeout, last)
				}
				return candidate{}, fmt.Errorf("etcd %s: no volume claimed in %s within %s: %w",
					etcdCluster, p.o.AvailabilityZone, p.o.AttachTimeout, last)
			}
		}
		cs, err := p.describe(ctx, etcdCluster)
		if errors.Is(err, errOursUnusable) {
			return candidate{}, err
		}
		if err != nil {
			last = err
			log.Debug("describe failed; retrying", "err", err)
			continue
		}
		mine, err := ours(etcdCluster, cs)
		if err != nil {
			return candidate{}, err
		}
		if mine != nil {
			log.Info("volume already attached to this instance", "volume", mine.ID, "state", mine.Ours.State)
			return p.waitAttached(ctx, etcdCluster, *mine, deadline)
		}
		free := available(cs)
		if own, ok := p.ownedVolume(etcdCluster); ok {
			free = slices.DeleteFunc(free, func(c candidate) bool { return c.ID != own.VolumeID })
			if len(free) == 0 {
				waiting = true
				last = p.ownedElsewhere(own, cs)
				log.Warn("waiting for this node's own etcd volume", "reason", last)
				bootstrap.Progress(ctx, fmt.Sprintf("waiting for this node's etcd %s volume: %v", etcdCluster, last))
				continue
			}
		}
		waiting = len(free) == 0
		if waiting {
			last = fmt.Errorf("none of its %d volumes is available: %s", len(cs), summarize(cs))
			if len(cs) == 0 {
				last = fmt.Errorf("no volume is tagged %s=%s, %s%s, %s=1 in %s",
					tagCluster, p.o.ClusterName, tagEtcdPrefix, etcdCluster, tagMaster, p.o.AvailabilityZone)
			}
			log.Info("waiting for an etcd volume", "reason", last)
			bootstrap.Progress(ctx, fmt.Sprintf("waiting for an etcd %s volume: %v", etcdCluster, last))
			continue
		}
		if i := slices.IndexFunc(free, func(c candidate) bool { return c.ID == suspect }); i > 0 {
			free[0], free[i] = free[i], free[0]
		}
		for _, c := range free {
			got, done, err := p.tryAttach(ctx, etcdCluster, c, deadline)
			if done {
				return got, err
			}
			last = err
			if !lostRace(err) {
				if transient(err) {
					suspect = c.ID
				}
				break // not a lost race: back off and look at the whole picture again
			}
		}
	}
}

// ownedElsewhere says why the volume this node owns cannot be attached now.
func (p *ClaimPhase) ownedElsewhere(own bootstrap.EtcdMemberFact, cs []candidate) error {
	where := "is not among the cluster's tagged volumes in " + p.o.AvailabilityZone
	if i := slices.IndexFunc(cs, func(c candidate) bool { return c.ID == own.VolumeID }); i >= 0 {
		c := cs[i]
		where = "is " + string(c.State)
		if c.Holder != "" {
			where += ", attached to " + c.Holder
		}
	}
	return fmt.Errorf("this node holds member %s on volume %s (recorded in its state), which %s; "+
		"it takes no other member's volume while it owns one", own.Member, own.VolumeID, where)
}

// tryAttach attaches one available volume. done means the claim is settled (won,
// or failed for good); otherwise err says why this volume was not taken.
func (p *ClaimPhase) tryAttach(ctx context.Context, etcdCluster string, c candidate, deadline time.Time) (candidate, bool, error) {
	log := p.o.Log.With("etcdCluster", etcdCluster, "volume", c.ID)
	for names := 0; names < len(deviceNames); names++ {
		dev, err := p.devices.reserve(ctx, p)
		if err != nil {
			return candidate{}, false, err
		}
		log.Info("attaching volume", "device", dev, "member", c.Member)
		_, err = p.o.EC2.AttachVolume(ctx, &ec2.AttachVolumeInput{
			VolumeId: aws.String(c.ID), InstanceId: aws.String(p.o.InstanceID), Device: aws.String(dev),
		})
		if err == nil {
			// gofail: var volumesAfterAttach string
			// failpointCrash("volumesAfterAttach", volumesAfterAttach, etcdCluster)

			// The name is taken now. Keeping it marked (rather than released)
			// covers the other claim's describe that ran before this attach.
			p.devices.markUsed(dev)
			now, derr := p.describeOne(ctx, etcdCluster, c.ID)
			if derr != nil || now.Ours == nil {
				// EC2 is eventually consistent: the attach was accepted, so the
				// attachment is ours even if a describe does not show it yet.
				now = c
				now.Ours = &types.VolumeAttachment{InstanceId: aws.String(p.o.InstanceID), Device: aws.String(dev), State: types.VolumeAttachmentStateAttaching}
			}
			got, err := p.waitAttached(ctx, etcdCluster, now, deadline)
			return got, true, err
		}
		if deviceNameInUse(err) {
			p.devices.markUsed(dev)
			log.Info("device name in use; trying another", "device", dev)
			continue
		}
		p.devices.release(dev)
		// Whatever the error, the volume may be ours now (a retried attach whose
		// first answer was lost is answered IncorrectState). Look before moving on.
		now, derr := p.describeOne(ctx, etcdCluster, c.ID)
		if derr == nil && now.Ours != nil {
			log.Info("attach answered with an error but the volume is attached to us", "err", err)
			got, werr := p.waitAttached(ctx, etcdCluster, now, deadline)
			return got, true, werr
		}
		if lostRace(err) {
			log.Info("another node claimed the volume; trying the next", "code", apiCode(err), "holder", now.Holder)
			return candidate{}, false, fmt.Errorf("attach %s: %w", c.ID, err)
		}
		if derr != nil {
			// We cannot tell whether the attach took effect. Going on to
			// another volume could leave two attached: let the caller re-describe
			// the whole cluster after a back-off.
			log.Warn("attach failed and the volume's state is unknown", "err", err, "describeErr", derr)
		}
		return candidate{}, false, fmt.Errorf("attach %s: %w", c.ID, err)
	}
	return candidate{}, true, fmt.Errorf("attach %s: every device name %s..%s is in use on this instance",
		c.ID, deviceNames[0], deviceNames[len(deviceNames)-1])
}

// waitAttached waits for our attachment of c to reach "attached". It never
// attaches again: a volume stuck attaching is an error after the deadline.
func (p *ClaimPhase) waitAttached(ctx context.Context, etcdCluster string, c candidate, deadline time.Time) (candidate, error) {
	p.setProgress(etcdCluster, c, stateAttaching)
	bo := p.poll.attach.start()
	for {
		if c.Ours != nil && c.Ours.State == types.VolumeAttachmentStateAttached {
			p.setProgress(etcdCluster, c, stateAttached)
			return c, nil
		}
		if c.Holder != "" && c.Ours == nil {
			return candidate{}, fmt.Errorf("etcd %s: volume %s is attached to %s, not to this instance", etcdCluster, c.ID, c.Holder)
		}
		if err := sleep(ctx, bo.next()); err != nil {
			state := "not attached"
			if c.Ours != nil {
				state = string(c.Ours.State)
			}
			return candidate{}, fmt.Errorf("etcd %s: volume %s still %s to %s after %s (not attaching it again; check it in EC2): %w",
				etcdCluster, c.ID, state, p.o.InstanceID, p.o.AttachTimeout, context.DeadlineExceeded)
		}
		now, err := p.describeOne(ctx, etcdCluster, c.ID)
		if err != nil {
			p.o.Log.Debug("describe while waiting for attachment", "volume", c.ID, "err", err)
			continue
		}
		if now.Ours == nil && now.Holder == "" && c.Ours != nil {
			// Just after AttachVolume a describe may not show the attachment yet.
			now.Ours = c.Ours
		}
		c = now
	}
}

func summarize(cs []candidate) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		s := c.ID + " " + string(c.State)
		if c.Holder != "" {
			s += " on " + c.Holder
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// deviceNames are the attach names tried, as kops does for etcd volumes.
var deviceNames = []string{"/dev/xvdu", "/dev/xvdv", "/dev/xvdw", "/dev/xvdx", "/dev/xvdy", "/dev/xvdz"}

// deviceAllocator hands out attach names not used by this instance, so the
// concurrent claims of main and events never ask for the same one.
type deviceAllocator struct {
	mu       sync.Mutex
	reserved map[string]bool
	used     map[string]bool
}

func (d *deviceAllocator) reserve(ctx context.Context, p *ClaimPhase) (string, error) {
	inUse, err := p.attachedDeviceNames(ctx)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reserved == nil {
		d.reserved, d.used = map[string]bool{}, map[string]bool{}
	}
	for _, n := range deviceNames {
		if inUse[n] || inUse[sdName(n)] || d.reserved[n] || d.used[n] || p.localDeviceExists(n) {
			continue
		}
		d.reserved[n] = true
		return n, nil
	}
	return "", fmt.Errorf("every device name %s..%s is in use on this instance", deviceNames[0], deviceNames[len(deviceNames)-1])
}

func (d *deviceAllocator) release(n string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.reserved, n)
}

func (d *deviceAllocator) markUsed(n string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.reserved, n)
	d.used[n] = true
}

// attachedDeviceNames are the attach names of every volume on this instance.
func (p *ClaimPhase) attachedDeviceNames(ctx context.Context) (map[string]bool, error) {
	vols, err := p.describeAll(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{
		{Name: aws.String("attachment.instance-id"), Values: []string{p.o.InstanceID}},
	}})
	if err != nil {
		return nil, fmt.Errorf("list volumes attached to %s: %w", p.o.InstanceID, err)
	}
	out := map[string]bool{}
	for _, v := range vols {
		for _, a := range v.Attachments {
			if aws.ToString(a.InstanceId) == p.o.InstanceID {
				out[aws.ToString(a.Device)] = true
			}
		}
	}
	return out, nil
}

// localDeviceExists catches a name a stale or non-EBS device already has here.
func (p *ClaimPhase) localDeviceExists(name string) bool {
	for _, n := range []string{name, sdName(name)} {
		if _, err := os.Lstat(p.o.Root.Path(n)); err == nil {
			return true
		}
	}
	return false
}

// sdName maps /dev/xvdX to /dev/sdX.
func sdName(n string) string {
	if s, ok := strings.CutPrefix(n, "/dev/xvd"); ok {
		return "/dev/sd" + s
	}
	return n
}

// xvdName maps /dev/sdX to /dev/xvdX, as the Xen block front-end names disks.
func xvdName(n string) string {
	if s, ok := strings.CutPrefix(n, "/dev/sd"); ok {
		return "/dev/xvd" + s
	}
	return n
}

// backoff is exponential with a cap and ±20% jitter, so racing nodes spread out.
type backoff struct {
	Initial, Max time.Duration
}

type backoffState struct {
	b   backoff
	cur time.Duration
}

func (b backoff) start() *backoffState { return &backoffState{b: b} }

func (s *backoffState) next() time.Duration {
	if s.cur == 0 {
		s.cur = s.b.Initial
	} else {
		s.cur = min(s.cur*3/2, s.b.Max)
	}
	j := time.Duration(float64(s.cur) * (0.8 + 0.4*rand.Float64()))
	return j
}

type pollConfig struct {
	attach backoff
	device backoff
}

var defaultPoll = pollConfig{
	attach: backoff{Initial: 250 * time.Millisecond, Max: 5 * time.Second},
	device: backoff{Initial: 20 * time.Millisecond, Max: time.Second},
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
