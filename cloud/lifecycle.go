package cloud

import (
	"context"
	"errors"
	"fmt"

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
}

// CompleteLifecycleAction tells Auto Scaling the instance finished (CONTINUE) or
// failed (ABANDON) its launch. The group is looked up from the instance id, so the
// config only has to name the hook.
func CompleteLifecycleAction(ctx context.Context, c AutoScalingAPI, hook, instanceID, result string) error {
	out, err := c.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{instanceID}})
	if err != nil {
		return fmt.Errorf("lifecycle hook %s: find group of %s: %w", hook, instanceID, err)
	}
	if len(out.AutoScalingInstances) == 0 {
		return fmt.Errorf("lifecycle hook %s: %s is in no Auto Scaling group", hook, instanceID)
	}
	group := aws.ToString(out.AutoScalingInstances[0].AutoScalingGroupName)
	if group == "" {
		return errors.New("lifecycle hook " + hook + ": Auto Scaling returned an empty group name")
	}
	_, err = c.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  aws.String(group),
		LifecycleHookName:     aws.String(hook),
		InstanceId:            aws.String(instanceID),
		LifecycleActionResult: aws.String(result),
	})
	if err != nil {
		return fmt.Errorf("lifecycle hook %s: complete %s for %s in %s: %w", hook, result, instanceID, group, err)
	}
	return nil
}
