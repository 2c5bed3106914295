package awsemu

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/nodeagent/nodeagent/cloud"
)

func TestAdminHandler(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	admin := httptest.NewServer(r.E.AdminHandler())
	t.Cleanup(admin.Close)
	c := cloud.NewEC2(fastRetries(sdkConfig(t, r, "")))
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, admin.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		method, path, body string
		want               int
	}{
		{"PUT", "/faults/ec2", `{"throttleRate": 1, "latency": "1ms"}`, 204},
		{"PUT", "/faults/ec2", `{"throttle": 1}`, 400},
		{"PUT", "/faults/sqs", `{}`, 400},
		{"PUT", "/instances/" + nitroB + "/state", "terminated", 204},
		{"PUT", "/instances/i-0000000000000dead/state", "terminated", 404},
		{"PUT", "/instances/" + nitroB + "/state", "exploded", 400},
		{"POST", "/instances", `{"id": "i-0000000000000new1", "type": "t3.small"}`, 201},
		{"POST", "/instances", `{"id": "i-0000000000000new1"}`, 409},
		{"PUT", "/instances/" + xenID + "/target-lifecycle-state", "Warmed:Running", 204},
		{"PUT", "/instances/" + xenID + "/target-lifecycle-state", "Warmed:Melted", 400},
		{"PUT", "/instances/" + nitroB + "/target-lifecycle-state", "InService", 400}, // in no group
		{"POST", "/instances/" + xenID + "/spot-interruption", "", 204},
		{"POST", "/instances/" + xenID + "/terminate-in-group", "", 204},
		{"PUT", "/instances/" + xenID + "/target-lifecycle-state", "InService", 400}, // terminating
	}
	for _, s := range steps {
		if got := do(s.method, s.path, s.body); got != s.want {
			t.Errorf("%s %s %s: %d, want %d", s.method, s.path, s.body, got, s.want)
		}
	}
	if _, err := c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{}); apiCode(err) != "RequestLimitExceeded" {
		t.Fatalf("after PUT /faults/ec2: %v", err)
	}
	if do("PUT", "/faults/ec2", `{}`) != 204 {
		t.Fatal("clearing faults failed")
	}
	out, err := c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{nitroB, "i-0000000000000new1"}})
	if err != nil {
		t.Fatal(err)
	}
	if st := out.Reservations[0].Instances[0].State.Name; st != "terminated" {
		t.Errorf("%s state %s, want terminated", nitroB, st)
	}
	if typ := out.Reservations[1].Instances[0].InstanceType; typ != "t3.small" {
		t.Errorf("added instance type %s", typ)
	}

	resp, err := http.Get(admin.URL + "/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s State
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Calls["ec2 DescribeInstances"] != 4 || len(s.Volumes) != 4 {
		t.Errorf("state: %d DescribeInstances calls (want 3 throttled + 1), %d volumes", s.Calls["ec2 DescribeInstances"], len(s.Volumes))
	}
}
