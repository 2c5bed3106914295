package volumes

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// TestErrorClasses: how each EC2 answer steers the claim. A lost race moves on to
// the next volume; a transient error is asked again; anything else is final.
func TestErrorClasses(t *testing.T) {
	api := func(code, msg string) error {
		return fmt.Errorf("operation error EC2: AttachVolume: %w", &smithy.GenericAPIError{Code: code, Message: msg})
	}
	status := func(code int) error {
		return &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: code}}, Err: errors.New("x")}
	}
	tests := []struct {
		name                         string
		err                          error
		lost, transientErr, devInUse bool
	}{
		{"volume taken by another node", api("VolumeInUse", "vol-1 is already attached to an instance"), true, false, false},
		{"volume not available", api("IncorrectState", "vol-1 is not 'available'."), true, false, false},
		{"throttled", api("RequestLimitExceeded", "Request limit exceeded."), false, true, false},
		{"internal error", api("InternalError", "An internal error has occurred."), false, true, false},
		{"5xx without a code", status(503), false, true, false},
		{"connection refused", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false, true, false},
		{"device name taken", api("InvalidParameterValue", "Invalid value '/dev/xvdu' for unixDevice. Attachment point /dev/xvdu is already in use"), false, false, true},
		{"bad parameter", api("InvalidParameterValue", "Value (/dev/foo) for parameter device is invalid."), false, false, false},
		{"access denied", api("UnauthorizedOperation", "You are not authorized"), false, false, false},
		{"wrong zone", api("InvalidVolume.ZoneMismatch", "not in the same availability zone"), false, false, false},
		{"cancelled", context.Canceled, false, false, false},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), false, false, false},
	}
	for _, tt := range tests {
		if got := lostRace(tt.err); got != tt.lost {
			t.Errorf("%s: lostRace = %v", tt.name, got)
		}
		if got := transient(tt.err); got != tt.transientErr {
			t.Errorf("%s: transient = %v", tt.name, got)
		}
		if got := deviceNameInUse(tt.err); got != tt.devInUse {
			t.Errorf("%s: deviceNameInUse = %v", tt.name, got)
		}
	}
}
