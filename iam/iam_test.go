package iam

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPolicyRenders: both policies render to JSON with every placeholder
// filled; an unknown role or a missing location is an error.
func TestPolicyRenders(t *testing.T) {
	for _, role := range []string{Masters, Nodes} {
		doc, err := Policy(role, "s3://state/c.k8s.local/", "s3://assets/assets")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(doc, "${") {
			t.Errorf("%s: placeholder left: %s", role, doc)
		}
		var v struct {
			Statement []struct{ Effect string }
		}
		if err := json.Unmarshal([]byte(doc), &v); err != nil || len(v.Statement) == 0 {
			t.Errorf("%s: not a policy: %v", role, err)
		}
		if !strings.Contains(doc, "arn:aws:s3:::state/c.k8s.local/") {
			t.Errorf("%s: state store not substituted: %s", role, doc)
		}
	}
	if _, err := Policy("admins", "s3://state/c", "s3://assets"); err == nil {
		t.Error("a policy for an unknown role")
	}
	if _, err := Policy(Nodes, "", "s3://assets"); err == nil {
		t.Error("a policy without a state store")
	}
}
