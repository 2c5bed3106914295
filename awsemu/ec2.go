package awsemu

import (
	"encoding/base64"
	"encoding/xml"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	ec2XMLNS      = "http://ec2.amazonaws.com/doc/2016-11-15/"
	ec2Version    = "2016-11-15"
	ec2TimeFormat = "2006-01-02T15:04:05.000Z"
)

// itemSet renders EC2's <xSet><item>...</item></xSet> lists, empty ones included.
type itemSet[T any] struct {
	Items []T `xml:"item"`
}

type ec2Tag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func tagSet(tags map[string]string) itemSet[ec2Tag] {
	var s itemSet[ec2Tag]
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		s.Items = append(s.Items, ec2Tag{k, tags[k]})
	}
	return s
}

func (e *Emulator) serveEC2(w http.ResponseWriter, req *request) *apiError {
	if v := req.form.Get("Version"); v != ec2Version {
		return errorf(400, "InvalidParameterValue", "Version %q is not supported; this endpoint speaks %s", v, ec2Version)
	}
	var (
		resp any
		aerr *apiError
	)
	if req.form.Get("DryRun") == "true" {
		// Permissions were checked (denied) before: a dry run stops here.
		return errorf(412, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
	}
	switch req.action {
	case "DescribeInstances":
		resp, aerr = e.describeInstances(req)
	case "DescribeVolumes":
		resp, aerr = e.describeVolumes(req)
	case "AttachVolume":
		resp, aerr = e.attachVolume(req)
	case "DetachVolume":
		resp, aerr = e.detachVolume(req)
	case "CreateTags":
		resp, aerr = e.changeTags(req, true)
	case "DeleteTags":
		resp, aerr = e.changeTags(req, false)
	case "DescribeTags":
		resp, aerr = e.describeTags(req)
	case "":
		return errorf(400, "MissingAction", "The request must contain the parameter Action")
	default:
		return errorf(400, "InvalidAction", "The action %s is not valid for this web service.", req.action)
	}
	if aerr != nil {
		return aerr
	}
	writeXML(w, req, http.StatusOK, resp)
	return nil
}

// ---- parameters ----

// listParam returns prefix.1, prefix.2, ... in index order (indices need not be dense).
func listParam(form url.Values, prefix string) []string {
	type iv struct {
		i int
		v string
	}
	var items []iv
	for k, vs := range form {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok || len(vs) == 0 {
			continue
		}
		if i, err := strconv.Atoi(rest); err == nil {
			items = append(items, iv{i, vs[0]})
		}
	}
	sort.Slice(items, func(a, b int) bool { return items[a].i < items[b].i })
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.v
	}
	return out
}

// indices returns the sorted N of every prefix.N.<suffix> key.
func indices(form url.Values, prefix, suffix string) []int {
	var out []int
	for k := range form {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok {
			continue
		}
		n, after, ok := strings.Cut(rest, ".")
		if !ok || after != suffix {
			continue
		}
		if i, err := strconv.Atoi(n); err == nil {
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}

type filter struct {
	name   string
	values []string
}

func parseFilters(form url.Values) ([]filter, *apiError) {
	var fs []filter
	for _, i := range indices(form, "Filter", "Name") {
		p := "Filter." + strconv.Itoa(i)
		f := filter{name: form.Get(p + ".Name"), values: listParam(form, p+".Value")}
		if len(f.values) == 0 {
			return nil, errorf(400, "InvalidParameterValue", "The filter '%s' has no values", f.name)
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// matchAny reports whether s matches one of the filter values, which may use
// EC2's wildcards: * for any run of characters, ? for exactly one.
func matchAny(values []string, s string) bool {
	for _, v := range values {
		if wildcard(v, s) {
			return true
		}
	}
	return false
}

func wildcard(pattern, s string) bool {
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[n]):
			p++
			n++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// matchTags handles the tag filters every resource shares; handled is false for
// any other filter name.
func matchTags(f filter, tags map[string]string) (match, handled bool) {
	switch {
	case strings.HasPrefix(f.name, "tag:"):
		v, ok := tags[strings.TrimPrefix(f.name, "tag:")]
		return ok && matchAny(f.values, v), true
	case f.name == "tag-key":
		for k := range tags {
			if matchAny(f.values, k) {
				return true, true
			}
		}
		return false, true
	case f.name == "tag-value":
		for _, v := range tags {
			if matchAny(f.values, v) {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}

// page cuts [0,total) by MaxResults/NextToken; tokens are opaque offsets.
func page(form url.Values, total, minResults, maxResults int) (start, end int, next string, aerr *apiError) {
	end = total
	if tok := form.Get("NextToken"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		off, err2 := strconv.Atoi(strings.TrimPrefix(string(b), "offset:"))
		if err != nil || err2 != nil || !strings.HasPrefix(string(b), "offset:") || off < 0 || off > total {
			return 0, 0, "", errorf(400, "InvalidParameterValue", "The NextToken %q is invalid", tok)
		}
		start = off
	}
	if m := form.Get("MaxResults"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < minResults || n > maxResults {
			return 0, 0, "", errorf(400, "InvalidParameterValue", "Value (%s) for parameter maxResults is invalid. Expecting a value between %d and %d.", m, minResults, maxResults)
		}
		if start+n < total {
			end = start + n
			next = base64.RawURLEncoding.EncodeToString([]byte("offset:" + strconv.Itoa(end)))
		}
	}
	return start, end, next, nil
}

// ---- DescribeInstances ----

type describeInstancesResponse struct {
	XMLName      xml.Name                `xml:"DescribeInstancesResponse"`
	Xmlns        string                  `xml:"xmlns,attr"`
	RequestID    string                  `xml:"requestId"`
	Reservations itemSet[ec2Reservation] `xml:"reservationSet"`
	NextToken    string                  `xml:"nextToken,omitempty"`
}

type ec2Reservation struct {
	ReservationID string               `xml:"reservationId"`
	OwnerID       string               `xml:"ownerId"`
	GroupSet      itemSet[struct{}]    `xml:"groupSet"`
	Instances     itemSet[ec2Instance] `xml:"instancesSet"`
}

type ec2Instance struct {
	InstanceID         string                  `xml:"instanceId"`
	ImageID            string                  `xml:"imageId"`
	State              ec2InstanceState        `xml:"instanceState"`
	PrivateDNSName     string                  `xml:"privateDnsName"`
	DNSName            string                  `xml:"dnsName"`
	AMILaunchIndex     int                     `xml:"amiLaunchIndex"`
	InstanceType       string                  `xml:"instanceType"`
	LaunchTime         string                  `xml:"launchTime"`
	Placement          ec2Placement            `xml:"placement"`
	PrivateIPAddress   string                  `xml:"privateIpAddress"`
	Architecture       string                  `xml:"architecture"`
	RootDeviceType     string                  `xml:"rootDeviceType"`
	RootDeviceName     string                  `xml:"rootDeviceName"`
	BlockDeviceMapping itemSet[ec2BlockDevice] `xml:"blockDeviceMapping"`
	VirtualizationType string                  `xml:"virtualizationType"`
	Hypervisor         string                  `xml:"hypervisor"`
	TagSet             itemSet[ec2Tag]         `xml:"tagSet"`
}

type ec2InstanceState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type ec2Placement struct {
	AvailabilityZone string `xml:"availabilityZone"`
	Tenancy          string `xml:"tenancy"`
}

type ec2BlockDevice struct {
	DeviceName string      `xml:"deviceName"`
	EBS        ec2EBSState `xml:"ebs"`
}

type ec2EBSState struct {
	VolumeID            string `xml:"volumeId"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

var instanceFilters = map[string]func(in *instance, values []string) bool{
	"instance-id":         func(in *instance, v []string) bool { return matchAny(v, in.ID) },
	"instance-state-name": func(in *instance, v []string) bool { return matchAny(v, in.State) },
	"instance-state-code": func(in *instance, v []string) bool { return matchAny(v, strconv.Itoa(stateCodes[in.State])) },
	"instance-type":       func(in *instance, v []string) bool { return matchAny(v, in.Type) },
	"availability-zone":   func(in *instance, v []string) bool { return matchAny(v, in.AvailabilityZone) },
	"private-ip-address":  func(in *instance, v []string) bool { return matchAny(v, in.PrivateIP) },
	"private-dns-name":    func(in *instance, v []string) bool { return matchAny(v, firstName(in.Hostname)) },
	"image-id":            func(in *instance, v []string) bool { return matchAny(v, in.ImageID) },
	"reservation-id":      func(in *instance, v []string) bool { return matchAny(v, in.reservation) },
}

func (e *Emulator) describeInstances(req *request) (any, *apiError) {
	filters, aerr := parseFilters(req.form)
	if aerr != nil {
		return nil, aerr
	}
	for _, f := range filters {
		if _, ok := instanceFilters[f.name]; !ok && !isTagFilter(f.name) {
			return nil, errorf(400, "InvalidParameterValue", "The filter '%s' is invalid", f.name)
		}
	}
	ids := listParam(req.form, "InstanceId")
	if len(ids) > 0 && req.form.Get("MaxResults") != "" {
		return nil, errorf(400, "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	candidates, aerr := e.selectInstances(ids)
	if aerr != nil {
		return nil, aerr
	}
	var matched []*instance
	for _, in := range candidates {
		if instanceMatches(in, filters) {
			matched = append(matched, in)
		}
	}
	start, end, next, aerr := page(req.form, len(matched), 5, 1000)
	if aerr != nil {
		return nil, aerr
	}
	resp := describeInstancesResponse{Xmlns: ec2XMLNS, RequestID: req.id, NextToken: next}
	for _, in := range matched[start:end] {
		resp.Reservations.Items = append(resp.Reservations.Items, ec2Reservation{
			ReservationID: in.reservation,
			OwnerID:       DefaultAccountID,
			Instances:     itemSet[ec2Instance]{Items: []ec2Instance{e.renderInstance(in)}},
		})
	}
	return resp, nil
}

func isTagFilter(name string) bool {
	return strings.HasPrefix(name, "tag:") || name == "tag-key" || name == "tag-value"
}

func (e *Emulator) selectInstances(ids []string) ([]*instance, *apiError) {
	if len(ids) == 0 {
		out := make([]*instance, 0, len(e.instOrder))
		for _, id := range e.instOrder {
			out = append(out, e.instances[id])
		}
		return out, nil
	}
	var out []*instance
	var missing []string
	for _, id := range ids {
		if !strings.HasPrefix(id, "i-") {
			return nil, errorf(400, "InvalidInstanceID.Malformed", "Invalid id: %q", id)
		}
		in, ok := e.instances[id]
		if !ok {
			missing = append(missing, id)
			continue
		}
		out = append(out, in)
	}
	if len(missing) == 1 {
		return nil, errorf(400, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", missing[0])
	}
	if len(missing) > 1 {
		return nil, errorf(400, "InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(missing, ", "))
	}
	return out, nil
}

func instanceMatches(in *instance, filters []filter) bool {
	for _, f := range filters {
		if m, handled := matchTags(f, in.Tags); handled {
			if !m {
				return false
			}
			continue
		}
		if !instanceFilters[f.name](in, f.values) {
			return false
		}
	}
	return true
}

func (e *Emulator) renderInstance(in *instance) ec2Instance {
	out := ec2Instance{
		InstanceID:         in.ID,
		ImageID:            in.ImageID,
		State:              ec2InstanceState{stateCodes[in.State], in.State},
		PrivateDNSName:     firstName(in.Hostname),
		InstanceType:       in.Type,
		LaunchTime:         in.launched.Format(ec2TimeFormat),
		Placement:          ec2Placement{in.AvailabilityZone, "default"},
		PrivateIPAddress:   in.PrivateIP,
		Architecture:       "x86_64",
		RootDeviceType:     "ebs",
		RootDeviceName:     "/dev/xvda",
		VirtualizationType: "hvm",
		Hypervisor:         "xen",
		TagSet:             tagSet(in.Tags),
	}
	if in.State == "terminated" {
		out.PrivateDNSName, out.PrivateIPAddress = "", ""
	}
	for _, vid := range e.volOrder {
		v := e.volumes[vid]
		if v.att == nil || v.att.instanceID != in.ID {
			continue
		}
		out.BlockDeviceMapping.Items = append(out.BlockDeviceMapping.Items, ec2BlockDevice{
			DeviceName: v.att.device,
			EBS:        ec2EBSState{VolumeID: v.ID, Status: v.att.state(), AttachTime: v.att.at.Format(ec2TimeFormat)},
		})
	}
	return out
}

// ---- DescribeVolumes ----

type describeVolumesResponse struct {
	XMLName   xml.Name           `xml:"DescribeVolumesResponse"`
	Xmlns     string             `xml:"xmlns,attr"`
	RequestID string             `xml:"requestId"`
	Volumes   itemSet[ec2Volume] `xml:"volumeSet"`
	NextToken string             `xml:"nextToken,omitempty"`
}

type ec2Volume struct {
	VolumeID         string                 `xml:"volumeId"`
	Size             int                    `xml:"size"`
	SnapshotID       string                 `xml:"snapshotId"`
	AvailabilityZone string                 `xml:"availabilityZone"`
	Status           string                 `xml:"status"`
	CreateTime       string                 `xml:"createTime"`
	Attachments      itemSet[ec2Attachment] `xml:"attachmentSet"`
	VolumeType       string                 `xml:"volumeType"`
	Encrypted        bool                   `xml:"encrypted"`
	MultiAttach      bool                   `xml:"multiAttachEnabled"`
	TagSet           itemSet[ec2Tag]        `xml:"tagSet"`
}

type ec2Attachment struct {
	VolumeID            string `xml:"volumeId"`
	InstanceID          string `xml:"instanceId"`
	Device              string `xml:"device"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

var volumeFilters = map[string]func(v *volume, values []string) bool{
	"volume-id":         func(v *volume, x []string) bool { return matchAny(x, v.ID) },
	"availability-zone": func(v *volume, x []string) bool { return matchAny(x, v.AvailabilityZone) },
	"status":            func(v *volume, x []string) bool { return matchAny(x, v.State) },
	"volume-type":       func(v *volume, x []string) bool { return matchAny(x, v.VolumeType) },
	"size":              func(v *volume, x []string) bool { return matchAny(x, strconv.Itoa(v.reportedGiB())) },
	"attachment.instance-id": func(v *volume, x []string) bool {
		return v.att != nil && matchAny(x, v.att.instanceID)
	},
	"attachment.device": func(v *volume, x []string) bool { return v.att != nil && matchAny(x, v.att.device) },
	"attachment.status": func(v *volume, x []string) bool { return v.att != nil && matchAny(x, v.att.state()) },
	"attachment.delete-on-termination": func(v *volume, x []string) bool {
		return v.att != nil && matchAny(x, "false")
	},
}

func (e *Emulator) describeVolumes(req *request) (any, *apiError) {
	filters, aerr := parseFilters(req.form)
	if aerr != nil {
		return nil, aerr
	}
	for _, f := range filters {
		if _, ok := volumeFilters[f.name]; !ok && !isTagFilter(f.name) {
			return nil, errorf(400, "InvalidParameterValue", "The filter '%s' is invalid", f.name)
		}
	}
	ids := listParam(req.form, "VolumeId")
	if len(ids) > 0 && req.form.Get("MaxResults") != "" {
		return nil, errorf(400, "InvalidParameterCombination", "The parameter volumeSet cannot be used with the parameter maxResults")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var candidates []*volume
	if len(ids) == 0 {
		for _, id := range e.volOrder {
			candidates = append(candidates, e.volumes[id])
		}
	} else {
		for _, id := range ids {
			if !strings.HasPrefix(id, "vol-") {
				return nil, errorf(400, "InvalidVolumeID.Malformed", "Invalid id: %q (expecting \"vol-...\")", id)
			}
			v, ok := e.volumes[id]
			if !ok {
				return nil, errorf(400, "InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
			}
			candidates = append(candidates, v)
		}
	}
	var matched []*volume
outer:
	for _, v := range candidates {
		for _, f := range filters {
			m, handled := matchTags(f, v.Tags)
			if !handled {
				m = volumeFilters[f.name](v, f.values)
			}
			if !m {
				continue outer
			}
		}
		matched = append(matched, v)
	}
	start, end, next, aerr := page(req.form, len(matched), 5, 500)
	if aerr != nil {
		return nil, aerr
	}
	resp := describeVolumesResponse{Xmlns: ec2XMLNS, RequestID: req.id, NextToken: next}
	for _, v := range matched[start:end] {
		resp.Volumes.Items = append(resp.Volumes.Items, renderVolume(v))
	}
	return resp, nil
}

func renderVolume(v *volume) ec2Volume {
	out := ec2Volume{
		VolumeID:         v.ID,
		Size:             v.reportedGiB(),
		AvailabilityZone: v.AvailabilityZone,
		Status:           v.State,
		CreateTime:       v.created.Format(ec2TimeFormat),
		VolumeType:       v.VolumeType,
		MultiAttach:      v.MultiAttachEnabled,
		TagSet:           tagSet(v.Tags),
	}
	if a := v.att; a != nil {
		out.Attachments.Items = []ec2Attachment{{
			VolumeID: v.ID, InstanceID: a.instanceID, Device: a.device, Status: a.state(), AttachTime: a.at.Format(ec2TimeFormat),
		}}
	}
	return out
}

func (v *volume) reportedGiB() int {
	if v.SizeGiB > 0 {
		return v.SizeGiB
	}
	return max(1, (v.SizeMiB+1023)/1024)
}

func (v *volume) sizeBytes() int64 {
	if v.SizeMiB > 0 {
		return int64(v.SizeMiB) << 20
	}
	return int64(v.SizeGiB) << 30
}

func (a *attachment) state() string {
	if a.attached {
		return "attached"
	}
	return "attaching"
}

// ---- AttachVolume / DetachVolume ----

type volumeAttachmentResponse struct {
	XMLName    xml.Name
	Xmlns      string `xml:"xmlns,attr"`
	RequestID  string `xml:"requestId"`
	VolumeID   string `xml:"volumeId"`
	InstanceID string `xml:"instanceId"`
	Device     string `xml:"device"`
	Status     string `xml:"status"`
	AttachTime string `xml:"attachTime"`
}

var deviceNameRE = regexp.MustCompile(`^/dev/(sd[a-z][1-9]?|sd[a-z]1[0-5]|xvd[a-z]{1,2})$`)

func validDeviceName(d string) bool { return deviceNameRE.MatchString(d) }

// attachVolume is the claim the control plane races on: the check and the
// attachment happen under one lock, so of two concurrent attaches exactly one wins.
func (e *Emulator) attachVolume(req *request) (any, *apiError) {
	vid, iid, dev := req.form.Get("VolumeId"), req.form.Get("InstanceId"), req.form.Get("Device")
	for _, p := range [][2]string{{"VolumeId", vid}, {"InstanceId", iid}, {"Device", dev}} {
		if p[1] == "" {
			return nil, errorf(400, "MissingParameter", "The request must contain the parameter %s", p[0])
		}
	}
	if !validDeviceName(dev) {
		return nil, errorf(400, "InvalidParameterValue", "Value (%s) for parameter device is invalid. %s is not a valid EBS device name.", dev, dev)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[vid]
	if !ok {
		return nil, errorf(400, "InvalidVolume.NotFound", "The volume '%s' does not exist.", vid)
	}
	in, ok := e.instances[iid]
	if !ok {
		return nil, errorf(400, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", iid)
	}
	if v.att != nil {
		return nil, errorf(400, "VolumeInUse", "%s is already attached to an instance", vid)
	}
	if v.State != "available" {
		return nil, errorf(400, "IncorrectState", "%s is not 'available'.", vid)
	}
	if in.State != "running" && in.State != "stopped" {
		return nil, errorf(400, "IncorrectState", "Instance '%s' is not 'running'.", iid)
	}
	if in.AvailabilityZone != v.AvailabilityZone {
		return nil, errorf(400, "InvalidVolume.ZoneMismatch", "The volume '%s' is not in the same availability zone as instance '%s'", vid, iid)
	}
	for _, other := range e.volumes {
		if other.att != nil && other.att.instanceID == iid && sameDeviceSlot(other.att.device, dev) {
			return nil, errorf(400, "InvalidParameterValue", "Invalid value '%s' for unixDevice. Attachment point %s is already in use", dev, dev)
		}
	}
	a := &attachment{instanceID: iid, device: dev, at: e.now().UTC()}
	v.att = a
	v.State = "in-use"
	e.log.Info("volume attaching", "volume", vid, "instance", iid, "device", dev)
	switch {
	case e.stuck[vid]:
		e.log.Warn("volume stuck attaching by world configuration", "volume", vid)
	case e.attachLatency == 0:
		if err := e.materialize(v); err != nil {
			e.log.Error("volume stays attaching: no device", "volume", vid, "err", err)
		}
	default:
		a.timer = time.AfterFunc(e.attachLatency, func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.closed || v.att != a {
				return
			}
			if err := e.materialize(v); err != nil {
				e.log.Error("volume stays attaching: no device", "volume", vid, "err", err)
			}
		})
	}
	return volumeAttachmentResponse{
		XMLName: xml.Name{Local: "AttachVolumeResponse"}, Xmlns: ec2XMLNS, RequestID: req.id,
		VolumeID: vid, InstanceID: iid, Device: dev, Status: "attaching", AttachTime: a.at.Format(ec2TimeFormat),
	}, nil
}

// sameDeviceSlot treats /dev/sdf and /dev/xvdf as one attachment point, as EC2 does.
func sameDeviceSlot(a, b string) bool {
	return xenName(a) == xenName(b)
}

func (e *Emulator) detachVolume(req *request) (any, *apiError) {
	vid := req.form.Get("VolumeId")
	if vid == "" {
		return nil, errorf(400, "MissingParameter", "The request must contain the parameter VolumeId")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[vid]
	if !ok {
		return nil, errorf(400, "InvalidVolume.NotFound", "The volume '%s' does not exist.", vid)
	}
	a := v.att
	if a == nil {
		return nil, errorf(400, "IncorrectState", "Volume '%s' is in the '%s' state.", vid, v.State)
	}
	if iid := req.form.Get("InstanceId"); iid != "" && iid != a.instanceID {
		if _, ok := e.instances[iid]; !ok {
			return nil, errorf(400, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", iid)
		}
		return nil, errorf(400, "InvalidAttachment.NotFound", "Volume '%s' is not attached to instance '%s'.", vid, iid)
	}
	if d := req.form.Get("Device"); d != "" && !sameDeviceSlot(d, a.device) {
		return nil, errorf(400, "InvalidAttachment.NotFound", "Volume '%s' is not attached at %s.", vid, d)
	}
	e.detachLocked(v)
	return volumeAttachmentResponse{
		XMLName: xml.Name{Local: "DetachVolumeResponse"}, Xmlns: ec2XMLNS, RequestID: req.id,
		VolumeID: vid, InstanceID: a.instanceID, Device: a.device, Status: "detaching", AttachTime: a.at.Format(ec2TimeFormat),
	}, nil
}

// ---- tags ----

type boolResponse struct {
	XMLName   xml.Name
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
	Return    bool   `xml:"return"`
}

func (e *Emulator) changeTags(req *request, create bool) (any, *apiError) {
	ids := listParam(req.form, "ResourceId")
	if len(ids) == 0 {
		return nil, errorf(400, "MissingParameter", "The request must contain the parameter resourceIdSet")
	}
	type kv struct {
		key, value string
		hasValue   bool
	}
	var tags []kv
	for _, i := range indices(req.form, "Tag", "Key") {
		p := "Tag." + strconv.Itoa(i)
		_, has := req.form[p+".Value"]
		t := kv{req.form.Get(p + ".Key"), req.form.Get(p + ".Value"), has}
		if t.key == "" {
			return nil, errorf(400, "InvalidParameterValue", "Tag key must not be empty")
		}
		if strings.HasPrefix(strings.ToLower(t.key), "aws:") {
			return nil, errorf(400, "InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
		}
		tags = append(tags, t)
	}
	if create && len(tags) == 0 {
		return nil, errorf(400, "MissingParameter", "The request must contain the parameter tagSet")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	targets := make([]map[string]string, 0, len(ids))
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "i-"):
			in, ok := e.instances[id]
			if !ok {
				return nil, errorf(400, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
			}
			targets = append(targets, in.Tags)
		case strings.HasPrefix(id, "vol-"):
			v, ok := e.volumes[id]
			if !ok {
				return nil, errorf(400, "InvalidVolume.NotFound", "The volume '%s' does not exist.", id)
			}
			targets = append(targets, v.Tags)
		default:
			return nil, errorf(400, "InvalidID", "The ID '%s' is not valid", id)
		}
	}
	for _, m := range targets {
		for _, t := range tags {
			switch {
			case create:
				m[t.key] = t.value
			case !t.hasValue || m[t.key] == t.value:
				delete(m, t.key)
			}
		}
		if !create && len(tags) == 0 {
			clear(m)
		}
	}
	name := "CreateTagsResponse"
	if !create {
		name = "DeleteTagsResponse"
	}
	return boolResponse{XMLName: xml.Name{Local: name}, Xmlns: ec2XMLNS, RequestID: req.id, Return: true}, nil
}

type describeTagsResponse struct {
	XMLName   xml.Name                   `xml:"DescribeTagsResponse"`
	Xmlns     string                     `xml:"xmlns,attr"`
	RequestID string                     `xml:"requestId"`
	Tags      itemSet[ec2TagDescription] `xml:"tagSet"`
	NextToken string                     `xml:"nextToken,omitempty"`
}

type ec2TagDescription struct {
	ResourceID   string `xml:"resourceId"`
	ResourceType string `xml:"resourceType"`
	Key          string `xml:"key"`
	Value        string `xml:"value"`
}

func (e *Emulator) describeTags(req *request) (any, *apiError) {
	filters, aerr := parseFilters(req.form)
	if aerr != nil {
		return nil, aerr
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var all []ec2TagDescription
	for _, id := range e.instOrder {
		for _, k := range slices.Sorted(maps.Keys(e.instances[id].Tags)) {
			all = append(all, ec2TagDescription{id, "instance", k, e.instances[id].Tags[k]})
		}
	}
	for _, id := range e.volOrder {
		for _, k := range slices.Sorted(maps.Keys(e.volumes[id].Tags)) {
			all = append(all, ec2TagDescription{id, "volume", k, e.volumes[id].Tags[k]})
		}
	}
	var matched []ec2TagDescription
outer:
	for _, t := range all {
		for _, f := range filters {
			var m bool
			switch {
			case f.name == "key":
				m = matchAny(f.values, t.Key)
			case f.name == "value":
				m = matchAny(f.values, t.Value)
			case f.name == "resource-id":
				m = matchAny(f.values, t.ResourceID)
			case f.name == "resource-type":
				m = matchAny(f.values, t.ResourceType)
			case strings.HasPrefix(f.name, "tag:"):
				m = t.Key == strings.TrimPrefix(f.name, "tag:") && matchAny(f.values, t.Value)
			default:
				return nil, errorf(400, "InvalidParameterValue", "The filter '%s' is invalid", f.name)
			}
			if !m {
				continue outer
			}
		}
		matched = append(matched, t)
	}
	start, end, next, aerr := page(req.form, len(matched), 5, 1000)
	if aerr != nil {
		return nil, aerr
	}
	return describeTagsResponse{Xmlns: ec2XMLNS, RequestID: req.id, Tags: itemSet[ec2TagDescription]{Items: matched[start:end]}, NextToken: next}, nil
}

// firstName: an instance's local-hostname may list several names (DHCP option
// sets), but its private DNS name is the first alone.
func firstName(hostname string) string {
	if f := strings.Fields(hostname); len(f) > 0 {
		return f[0]
	}
	return ""
}
