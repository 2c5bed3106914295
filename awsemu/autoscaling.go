package awsemu

import (
	"encoding/xml"
	"net/http"
	"slices"
	"strings"
)

const (
	autoScalingXMLNS   = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
	autoScalingVersion = "2011-01-01"
)

type responseMetadata struct {
	RequestID string `xml:"RequestId"`
}

type describeAutoScalingInstancesResponse struct {
	XMLName xml.Name `xml:"DescribeAutoScalingInstancesResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		Instances []asgInstance `xml:"AutoScalingInstances>member"`
		NextToken string        `xml:"NextToken,omitempty"`
	} `xml:"DescribeAutoScalingInstancesResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

type asgInstance struct {
	InstanceID           string `xml:"InstanceId"`
	InstanceType         string `xml:"InstanceType"`
	AutoScalingGroupName string `xml:"AutoScalingGroupName"`
	AvailabilityZone     string `xml:"AvailabilityZone"`
	LifecycleState       string `xml:"LifecycleState"`
	HealthStatus         string `xml:"HealthStatus"`
	ProtectedFromScaleIn bool   `xml:"ProtectedFromScaleIn"`
}

type completeLifecycleActionResponse struct {
	XMLName  xml.Name         `xml:"CompleteLifecycleActionResponse"`
	Xmlns    string           `xml:"xmlns,attr"`
	Result   struct{}         `xml:"CompleteLifecycleActionResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

func (e *Emulator) serveAutoScaling(w http.ResponseWriter, req *request) *apiError {
	if v := req.form.Get("Version"); v != autoScalingVersion {
		return errorf(400, "InvalidParameterValue", "Version %q is not supported; this endpoint speaks %s", v, autoScalingVersion)
	}
	var (
		resp any
		aerr *apiError
	)
	switch req.action {
	case "DescribeAutoScalingInstances":
		resp, aerr = e.describeAutoScalingInstances(req)
	case "CompleteLifecycleAction":
		resp, aerr = e.completeLifecycleAction(req)
	case "RecordLifecycleActionHeartbeat":
		resp, aerr = e.recordLifecycleActionHeartbeat(req)
	case "":
		return errorf(400, "MissingAction", "The request must contain the parameter Action")
	default:
		return errorf(400, "InvalidAction", "Could not find operation %s for version %s", req.action, autoScalingVersion)
	}
	if aerr != nil {
		return aerr
	}
	writeXML(w, req, http.StatusOK, resp)
	return nil
}

func (e *Emulator) describeAutoScalingInstances(req *request) (any, *apiError) {
	ids := listParam(req.form, "InstanceIds.member")
	form := req.form
	// Auto Scaling names its page parameters MaxRecords/NextToken; reuse EC2's pager.
	if m := form.Get("MaxRecords"); m != "" {
		form = cloneValues(form)
		form.Set("MaxResults", m)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var members []*instance
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, id := range e.instOrder {
		in := e.instances[id]
		if in.AutoScalingGroup == "" || (len(ids) > 0 && !want[id]) {
			continue
		}
		members = append(members, in)
	}
	start, end, next, aerr := page(form, len(members), 1, 50)
	if aerr != nil {
		aerr.code = "ValidationError"
		return nil, aerr
	}
	resp := describeAutoScalingInstancesResponse{Xmlns: autoScalingXMLNS, Metadata: responseMetadata{req.id}}
	resp.Result.NextToken = next
	for _, in := range members[start:end] {
		resp.Result.Instances = append(resp.Result.Instances, asgInstance{
			InstanceID:           in.ID,
			InstanceType:         in.Type,
			AutoScalingGroupName: in.AutoScalingGroup,
			AvailabilityZone:     in.AvailabilityZone,
			LifecycleState:       e.lifecycleState(in),
			HealthStatus:         "HEALTHY",
		})
	}
	return resp, nil
}

// lifecycleState: an instance of a group with launch hooks waits in
// Pending:Wait until every hook is completed. Called with e.mu held.
func (e *Emulator) lifecycleState(in *instance) string {
	if in.State == "terminated" {
		return "Terminated"
	}
	if e.ends.terminating[in.ID] {
		if e.termHookPendingLocked(in) {
			return "Terminating:Wait"
		}
		return "Terminating:Proceed"
	}
	warm := strings.HasPrefix(in.TargetLifecycleState, "Warmed:")
	result := e.lifecycle[in.ID]
	if result == LifecycleAbandon {
		return "Terminating"
	}
	for _, h := range e.hooks[in.AutoScalingGroup] {
		if !e.hookDone[in.ID+"/"+h] {
			if warm {
				return "Warmed:Pending:Wait"
			}
			return "Pending:Wait"
		}
	}
	if warm {
		return in.TargetLifecycleState
	}
	return "InService"
}

// Lifecycle action results.
const (
	LifecycleContinue = "CONTINUE"
	LifecycleAbandon  = "ABANDON"
)

type recordLifecycleActionHeartbeatResponse struct {
	XMLName  xml.Name         `xml:"RecordLifecycleActionHeartbeatResponse"`
	Xmlns    string           `xml:"xmlns,attr"`
	Result   struct{}         `xml:"RecordLifecycleActionHeartbeatResult"`
	Metadata responseMetadata `xml:"ResponseMetadata"`
}

// recordLifecycleActionHeartbeat extends a pending launch action; it is counted
// per instance (HeartbeatCount) so tests can see a waiting master heartbeat.
func (e *Emulator) recordLifecycleActionHeartbeat(req *request) (any, *apiError) {
	f := req.form
	group, hook, iid := f.Get("AutoScalingGroupName"), f.Get("LifecycleHookName"), f.Get("InstanceId")
	if aerr := requireLifecycleParams(group, hook, iid, f.Get("LifecycleActionToken"), [2]string{}); aerr != nil {
		return nil, aerr
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if aerr := e.pendingActionLocked(group, hook, iid); aerr != nil {
		return nil, aerr
	}
	if slices.Contains(e.ends.termHooks[group], hook) {
		e.ends.termHeartbeats[iid]++
	} else {
		e.heartbeats[iid]++
	}
	return recordLifecycleActionHeartbeatResponse{Xmlns: autoScalingXMLNS, Metadata: responseMetadata{req.id}}, nil
}

// requireLifecycleParams checks what both lifecycle calls need, as Auto Scaling
// words it; extra is one more required parameter (name, value), if any.
func requireLifecycleParams(group, hook, iid, token string, extra [2]string) *apiError {
	params := [][2]string{{"AutoScalingGroupName", group}, {"LifecycleHookName", hook}}
	if extra[0] != "" {
		params = append(params, extra)
	}
	for _, p := range params {
		if p[1] == "" {
			return errorf(400, "ValidationError", "1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", lowerFirst(p[0]))
		}
	}
	if iid == "" && token == "" {
		return errorf(400, "ValidationError", "Either InstanceId or LifecycleActionToken must be specified")
	}
	if iid == "" {
		// Tokens are not modelled: the instance id is the only handle the agent uses.
		return errorf(400, "ValidationError", "No active Lifecycle Action found with token %s", token)
	}
	return nil
}

// pendingActionLocked finds the instance's pending action for hook; e.mu is held.
func (e *Emulator) pendingActionLocked(group, hook, iid string) *apiError {
	hooks, ok := e.hooks[group]
	if !ok && !e.groupExists(group) {
		return errorf(400, "ValidationError", "AutoScalingGroup name not found - AutoScalingGroup %s not found", group)
	}
	if slices.Contains(e.ends.termHooks[group], hook) {
		return e.pendingTerminateLocked(group, hook, iid)
	}
	if !slices.Contains(hooks, hook) {
		return errorf(400, "ValidationError", "No Lifecycle Hook found with name %s for group %s", hook, group)
	}
	in, ok := e.instances[iid]
	if !ok || in.AutoScalingGroup != group || e.hookDone[iid+"/"+hook] || e.lifecycle[iid] == LifecycleAbandon {
		return errorf(400, "ValidationError", "No active Lifecycle Action found with instance ID %s", iid)
	}
	return nil
}

func (e *Emulator) completeLifecycleAction(req *request) (any, *apiError) {
	f := req.form
	group, hook, result := f.Get("AutoScalingGroupName"), f.Get("LifecycleHookName"), f.Get("LifecycleActionResult")
	iid := f.Get("InstanceId")
	if aerr := requireLifecycleParams(group, hook, iid, f.Get("LifecycleActionToken"), [2]string{"LifecycleActionResult", result}); aerr != nil {
		return nil, aerr
	}
	if result != LifecycleContinue && result != LifecycleAbandon {
		return nil, errorf(400, "ValidationError", "Lifecycle action result must be CONTINUE or ABANDON, not %q", result)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if aerr := e.pendingActionLocked(group, hook, iid); aerr != nil {
		return nil, aerr
	}
	if slices.Contains(e.ends.termHooks[group], hook) {
		e.completeTerminateLocked(group, hook, iid, result)
		return completeLifecycleActionResponse{Xmlns: autoScalingXMLNS, Metadata: responseMetadata{req.id}}, nil
	}
	e.recordCompletionLocked(iid, hook, result)
	e.hookDone[iid+"/"+hook] = true
	e.lifecycle[iid] = result
	e.log.Info("lifecycle action completed", "group", group, "hook", hook, "instance", iid, "result", result)
	return completeLifecycleActionResponse{Xmlns: autoScalingXMLNS, Metadata: responseMetadata{req.id}}, nil
}

func (e *Emulator) groupExists(group string) bool {
	for _, in := range e.instances {
		if in.AutoScalingGroup == group {
			return true
		}
	}
	return false
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}
