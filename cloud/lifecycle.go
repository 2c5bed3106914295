package cloud

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
)

// Lifecycle results an instance can report for its launch hook.
const (
	LifecycleContinue = "CONTINUE"
	LifecycleAbandon  = "ABANDON"
)

// AutoScalingAPI is what completing a lifecycle action needs.
type AutoScalingAPI interface {
	DescribeAutoScalingInstances(context.Context, *autoscaling.DescribeAutoScalingInstancesInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingInstancesOutput, error)
	CompleteLifecycleAction(context.Context, *autoscaling.CompleteLifecycleActionInput, ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error)
	RecordLifecycleActionHeartbeat(context.Context, *autoscaling.RecordLifecycleActionHeartbeatInput, ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error)
}

// CompleteLifecycleAction tells Auto Scaling the instance finished (CONTINUE) or
// failed (ABANDON) its launch. The group is looked up from the instance id, so the
// config only has to name the hook.
//
// A CONTINUE answered "No active Lifecycle Action found" for an instance Auto
// Scaling has already moved on (Pending:Proceed or InService) is our own earlier
// CONTINUE whose record a crash lost: done, not an error.
func CompleteLifecycleAction(ctx context.Context, c AutoScalingAPI, hook, instanceID, result string) error {
	group, err := groupOf(ctx, c, hook, instanceID)
	if err != nil {
		return err
	}
	_, err = c.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  aws.String(group),
		LifecycleHookName:     aws.String(hook),
		InstanceId:            aws.String(instanceID),
		LifecycleActionResult: aws.String(result),
	})
	if err != nil && result == LifecycleContinue && strings.Contains(err.Error(), "No active Lifecycle Action") {
		if _, state, serr := instanceOf(ctx, c, hook, instanceID); serr == nil && (state == "Pending:Proceed" || state == "InService") {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("lifecycle hook %s: complete %s for %s in %s: %w", hook, result, instanceID, group, err)
	}
	return nil
}

// RecordLifecycleActionHeartbeat extends the instance's pending launch action, so
// a node that is waiting for something outside itself (a master for its peers)
// is not timed out by the hook while it waits.
func RecordLifecycleActionHeartbeat(ctx context.Context, c AutoScalingAPI, hook, instanceID string) error {
	group, err := groupOf(ctx, c, hook, instanceID)
	if err != nil {
		return err
	}
	_, err = c.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String(group),
		LifecycleHookName:    aws.String(hook),
		InstanceId:           aws.String(instanceID),
	})
	if err != nil {
		return fmt.Errorf("lifecycle hook %s: heartbeat for %s in %s: %w", hook, instanceID, group, err)
	}
	return nil
}

// groupOf looks up the instance's Auto Scaling group, so the config only has to
// name the hook.
func groupOf(ctx context.Context, c AutoScalingAPI, hook, instanceID string) (string, error) {
	group, _, err := instanceOf(ctx, c, hook, instanceID)
	return group, err
}

// instanceOf returns the instance's Auto Scaling group and lifecycle state.
func instanceOf(ctx context.Context, c AutoScalingAPI, hook, instanceID string) (group, state string, err error) {
	out, err := c.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{instanceID}})
	if err != nil {
		return "", "", fmt.Errorf("lifecycle hook %s: find group of %s: %w", hook, instanceID, err)
	}
	if len(out.AutoScalingInstances) == 0 {
		return "", "", fmt.Errorf("lifecycle hook %s: %s is in no Auto Scaling group", hook, instanceID)
	}
	in := out.AutoScalingInstances[0]
	group = aws.ToString(in.AutoScalingGroupName)
	if group == "" {
		return "", "", errors.New("lifecycle hook " + hook + ": Auto Scaling returned an empty group name")
	}
	return group, aws.ToString(in.LifecycleState), nil
}
