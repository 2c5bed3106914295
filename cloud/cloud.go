// Package cloud is the agent's view of AWS: instance metadata over IMDSv2, the S3
// state store, and the Auto Scaling lifecycle hook. Endpoints, region and credentials
// come only from the SDK's own standard settings (AWS_ENDPOINT_URL_*, AWS_REGION,
// AWS_EC2_METADATA_SERVICE_ENDPOINT, the default credential chain), so the same code
// path runs against AWS and against the project's emulator.
package cloud

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// RetryMaxAttempts is how many times one AWS call is tried before its error is
// returned.
const RetryMaxAttempts = 8

// LoadConfig loads the SDK configuration. When no region is configured it is taken
// from instance metadata, as on any EC2 instance.
func LoadConfig(ctx context.Context) (aws.Config, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithEC2IMDSRegion(),
		// A node boots once and must not give up on a busy account: a whole
		// Auto Scaling group booting together throttles EC2 and S3. The SDK's 3
		// attempts are too few; its standard backoff with jitter stays.
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = RetryMaxAttempts
				o.MaxBackoff = 20 * time.Second
			})
		}))
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS config: %w", err)
	}
	return cfg, nil
}

// NewIMDS returns an IMDSv2-only client: a token is always fetched first and the
// client never falls back to IMDSv1.
func NewIMDS(cfg aws.Config) *imds.Client {
	return imds.NewFromConfig(cfg, func(o *imds.Options) {
		o.EnableFallback = aws.FalseTernary
	})
}

// NewEC2 returns an EC2 client.
func NewEC2(cfg aws.Config) *ec2.Client { return ec2.NewFromConfig(cfg) }

// NewAutoScaling returns an Auto Scaling client.
func NewAutoScaling(cfg aws.Config) *autoscaling.Client { return autoscaling.NewFromConfig(cfg) }

// NewS3 returns an S3 client. With a custom endpoint (an S3-compatible store, or the
// emulator) requests are path-style, since such endpoints rarely serve
// bucket.host names.
func NewS3(cfg aws.Config) *s3.Client {
	custom := os.Getenv("AWS_ENDPOINT_URL_S3") != "" || os.Getenv("AWS_ENDPOINT_URL") != ""
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if custom {
			o.UsePathStyle = true
		}
	})
}
