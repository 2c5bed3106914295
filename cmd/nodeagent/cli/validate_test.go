package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/agent"
)

// `nodeagent validate -o json` is a contract for CI pipelines like the other
// data commands: a judgement with every field filled in has exactly the key
// paths of testdata/validate.schema.
func TestValidateJSONMatchesItsSchema(t *testing.T) {
	v := &agent.Validation{
		Cluster: "c.k8s.local", Healthy: false,
		Nodes: []agent.ValidatedNode{{Name: "ip-10-0-0-10.ec2.internal", Role: "control-plane", Zone: "us-east-1a", IP: "10.0.0.10",
			Ready: false, Reason: "NotReady", InAPI: true, InGossip: true}},
		Pods:     []agent.ValidatedPod{{Name: "coredns-1", Node: "ip-10-0-0-20.ec2.internal", Phase: "Pending", Reason: "is pending"}},
		Etcd:     []agent.ValidatedMember{{Cluster: "main", Name: "a", Endpoint: "https://etcd-a.internal.c.k8s.local:2379", Healthy: true, Leader: true, Error: "x"}},
		DNS:      agent.ValidatedDNS{Server: "100.64.0.10:53", Name: "kubernetes.default.svc.cluster.local.", Answers: []string{"100.64.0.1"}, Error: "x", Answered: true},
		Failures: []agent.ValidationError{{Kind: "Node", Name: "ip-10-0-0-10.ec2.internal", Message: "control-plane node NotReady"}},
	}
	var buf bytes.Buffer
	if err := agent.WriteValidation(&buf, v, "json"); err != nil {
		t.Fatal(err)
	}
	var decoded any
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(schemaOf(decoded), "\n") + "\n"
	golden := filepath.Join("testdata", "validate.schema")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/nodeagent/cli -update)", err)
	}
	if got != string(want) {
		t.Errorf("validate -o json key paths changed (a contract for scripts; -update if intended):\n got:\n%s\nwant:\n%s", got, want)
	}
}

// Without a bootstrapped node there is nothing to judge with: exit 2, and why.
func TestValidateOnANodeNeverBootstrapped(t *testing.T) {
	code, out, stderr := nodeagent(t, "", "validate", "--root", t.TempDir(), "--state-dir", t.TempDir())
	if code != agent.ValidateUnknown || !strings.Contains(stderr, "has nodeagent bootstrapped it?") {
		t.Errorf("exit %d, stdout %q, stderr %q: want exit 2 naming the missing config", code, out, stderr)
	}
}
