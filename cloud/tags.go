package cloud

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// NeedsReplacementTag marks an instance whose config changed in a way it cannot
// take in place (DESIGN.md, "Rolling changes"); its value says why.
const NeedsReplacementTag = "nodeagent.io/needs-replacement"

// maxTagValue is EC2's limit on a tag value's length.
const maxTagValue = 256

// InstanceTagsAPI is what tagging this instance needs.
type InstanceTagsAPI interface {
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DeleteTags(context.Context, *ec2.DeleteTagsInput, ...func(*ec2.Options)) (*ec2.DeleteTagsOutput, error)
}

// SetInstanceTag sets key=value on an instance; an empty value removes the tag.
// Values longer than EC2 allows are cut.
func SetInstanceTag(ctx context.Context, c InstanceTagsAPI, instanceID, key, value string) error {
	if value == "" {
		_, err := c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{instanceID}, Tags: []types.Tag{{Key: aws.String(key)}}})
		if err != nil {
			return fmt.Errorf("remove tag %s from %s: %w", key, instanceID, err)
		}
		return nil
	}
	if r := []rune(value); len(r) > maxTagValue {
		value = string(r[:maxTagValue-1]) + "…"
	}
	_, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{instanceID}, Tags: []types.Tag{{Key: aws.String(key), Value: aws.String(value)}}})
	if err != nil {
		return fmt.Errorf("tag %s with %s: %w", instanceID, key, err)
	}
	return nil
}
