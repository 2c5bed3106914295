package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Target lifecycle states an Auto Scaling group gives an instance
// (IMDS autoscaling/target-lifecycle-state).
const (
	TargetInService  = "InService"
	TargetTerminated = "Terminated"
)

// IsWarmed says whether a target lifecycle state puts the instance in a warm
// pool (Warmed:Stopped, Warmed:Running, Warmed:Hibernated).
func IsWarmed(target string) bool { return strings.HasPrefix(target, "Warmed:") }

// TargetLifecycleState reads where the instance's Auto Scaling group is taking
// it: InService, Warmed:*, or Terminated. An instance in no group has no such
// entry: "" without an error.
func TargetLifecycleState(ctx context.Context, c IMDSAPI) (string, error) {
	s, err := metadataString(ctx, c, "autoscaling/target-lifecycle-state")
	if isNotFound(err) {
		return "", nil
	}
	return s, err
}

// SpotAction is a spot interruption notice (IMDS spot/instance-action).
type SpotAction struct {
	Action string    `json:"action"` // terminate, stop or hibernate
	Time   time.Time `json:"time"`
}

// SpotInstanceAction reads the spot interruption notice; nil when there is none.
func SpotInstanceAction(ctx context.Context, c IMDSAPI) (*SpotAction, error) {
	s, err := metadataString(ctx, c, "spot/instance-action")
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var a SpotAction
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		return nil, fmt.Errorf("instance metadata: spot/instance-action %q: %w", s, err)
	}
	if a.Action == "" {
		return nil, fmt.Errorf("instance metadata: spot/instance-action %q names no action", s)
	}
	return &a, nil
}

func isNotFound(err error) bool {
	var re *smithyhttp.ResponseError
	return err != nil && errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}
