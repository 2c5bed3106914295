package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/smithy-go"

	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/volumes"
)

// DefaultIMDSEndpoint is IMDS's address on every instance.
const DefaultIMDSEndpoint = "http://169.254.169.254"

// IMDSEndpoint is where the SDK finds IMDS: AWS_EC2_METADATA_SERVICE_ENDPOINT or
// the link-local default.
func IMDSEndpoint() string {
	if e := os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"); e != "" {
		return strings.TrimRight(e, "/")
	}
	return DefaultIMDSEndpoint
}

const hopLimitFix = "raise the instance's PUT response hop limit: aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2 --http-tokens required (and in the launch template's MetadataOptions)"

// IMDS asks for an IMDSv2 token by hand rather than through the SDK, which
// hides why a token failed: a PUT that times out while GETs are answered is
// the PUT response's hop limit (its IP TTL) running out before the caller, the
// classic symptom in a container.
func IMDS(endpoint string, timeout time.Duration) Check {
	return Check{Name: "imds", Run: func(ctx context.Context) []Finding {
		client := &http.Client{Timeout: timeout}
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, endpoint+"/latest/api/token", nil)
		if err != nil {
			return fail("", "bad IMDS endpoint %q: %v", endpoint, err)
		}
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		start := time.Now()
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusOK:
				return ok("IMDSv2 token from %s in %s", endpoint, time.Since(start).Round(time.Millisecond))
			case resp.StatusCode == http.StatusForbidden:
				return fail("exclude 169.254.169.254 from HTTP proxies (NO_PROXY), or enable the metadata endpoint",
					"IMDS refused the token PUT (403): it went through a proxy, or IMDS is disabled for this instance")
			default:
				return fail("", "IMDS answered the token PUT with %s", resp.Status)
			}
		}
		if !isTimeout(err) {
			return fail("enable the instance metadata endpoint (--http-endpoint enabled); check that no firewall rule drops 169.254.169.254",
				"IMDS at %s does not answer: %v", endpoint, err)
		}
		// Did the PUT's answer get lost, or is IMDS unreachable altogether?
		get, _ := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/latest/meta-data/", nil)
		if gresp, gerr := client.Do(get); gerr == nil {
			gresp.Body.Close()
			return fail(hopLimitFix, "IMDS answers GETs (%s) but never answered the token PUT within %s: the PUT response hop limit is too low for this caller (a container or nspawn machine adds a hop)", gresp.Status, timeout)
		}
		return fail("enable the instance metadata endpoint (--http-endpoint enabled); check that no firewall rule drops 169.254.169.254",
			"IMDS at %s does not answer within %s", endpoint, timeout)
	}}
}

func isTimeout(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var ue *url.Error
	return errors.As(err, &ue) && ue.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// Identity: the identity document answers, and an IAM role is attached (or
// credentials come from the environment).
func Identity(c cloud.IMDSAPI) Check {
	return Check{Name: "identity", Run: func(ctx context.Context) []Finding {
		id, err := cloud.FetchIdentity(ctx, c)
		if err != nil {
			return fail("see the imds check", "no instance identity from IMDS: %v", err)
		}
		out := ok("instance %s (%s) in %s, %s", id.InstanceID, id.InstanceType, id.AvailabilityZone, id.PrivateIP)
		_, err = c.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/info"})
		switch {
		case err == nil:
			out = append(out, ok("an IAM instance profile is attached")...)
		case os.Getenv("AWS_ACCESS_KEY_ID") != "":
			out = append(out, ok("no IAM instance profile; credentials come from the environment (AWS_ACCESS_KEY_ID)")...)
		default:
			out = append(out, fail("attach the node's instance profile (IAM role) in the launch template",
				"no IAM instance profile is attached and no other credentials are configured: %v", err)...)
		}
		return out
	}}
}

// AWSCall is one AWS call the configuration needs, made as a dry run where
// AWS has one (a permitted EC2 dry run answers DryRunOperation).
type AWSCall struct {
	Name string // e.g. ec2:DescribeVolumes
	Call func(ctx context.Context) error
}

// Permissions: each call the configuration needs answers and is allowed.
func Permissions(calls []AWSCall) Check {
	return Check{Name: "aws-permissions", Run: func(ctx context.Context) []Finding {
		if len(calls) == 0 {
			return skip("this configuration makes no EC2 or Auto Scaling calls")
		}
		var out []Finding
		for _, c := range calls {
			out = append(out, judgeCall(c.Name, c.Call(ctx))...)
		}
		return out
	}}
}

// judgeCall names what an AWS error means for the node.
func judgeCall(name string, err error) []Finding {
	if err == nil {
		return ok("%s allowed", name)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "DryRunOperation":
			return ok("%s allowed (dry run)", name)
		case "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "Forbidden":
			return fail("allow "+name+" in the node role's IAM policy (see the policies shipped with nodeagent)",
				"credentials denied for %s: %s", name, ae.ErrorCode())
		case "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken", "RequestExpired", "RequestTimeTooSkewed":
			return fail("check the instance profile and the clock (a skewed clock breaks signatures)",
				"credentials rejected for %s: %s: %s", name, ae.ErrorCode(), ae.ErrorMessage())
		}
		return warn("", "%s answered %s: %s", name, ae.ErrorCode(), ae.ErrorMessage())
	}
	return fail("check the VPC endpoints or NAT route to the service, and the AWS_ENDPOINT_URL_* settings",
		"%s: the endpoint does not answer: %v", name, err)
}

// StateStoreGetter reads one object of the state store.
type StateStoreGetter interface {
	Get(ctx context.Context, key string) ([]byte, error)
}

// StateStore: the state store answers and the node may read it.
func StateStore(url string, s StateStoreGetter) Check {
	return Check{Name: "state-store", Run: func(ctx context.Context) []Finding {
		if url == "" || s == nil {
			return skip("no state store configured")
		}
		key := cloud.ClusterConfigKey
		_, err := s.Get(ctx, key)
		if err == nil || errors.Is(err, cloud.ErrNotFound) {
			return ok("%s readable", url)
		}
		f := judgeCall("s3:GetObject "+strings.TrimRight(url, "/")+"/"+key, err)
		for i := range f {
			if f[i].Result == Fail && strings.Contains(f[i].Message, "denied") {
				f[i].Fix = "allow s3:GetObject on the state store's bucket and prefix in the node role's IAM policy"
			}
		}
		return f
	}}
}

// VolumeSurveyor tells what the etcd volume claim would find (volumes.ClaimPhase).
type VolumeSurveyor interface {
	Survey(ctx context.Context) ([]volumes.Survey, error)
}

// EtcdVolumes (control plane): for each etcd cluster, one volume in this zone
// is attached here or free to claim.
func EtcdVolumes(az string, s VolumeSurveyor) Check {
	return Check{Name: "etcd-volumes", Run: func(ctx context.Context) []Finding {
		if s == nil {
			return skip("not a control plane")
		}
		surveys, err := s.Survey(ctx)
		if err != nil {
			return judgeCall("ec2:DescribeVolumes", err)
		}
		var out []Finding
		for _, sv := range surveys {
			var held []string
			for _, v := range sv.Volumes {
				if !v.Here && !v.Free {
					held = append(held, fmt.Sprintf("%s (member %s) attached to %s", v.ID, v.Member, orNone(v.Holder)))
				}
			}
			here := sv.Here()
			switch {
			case len(here) > 1:
				out = append(out, fail("detach all but the one holding this member's data", "etcd %s: %d volumes are attached here (%s); a node holds one per etcd cluster", sv.EtcdCluster, len(here), strings.Join(here, ", "))...)
			case len(here) == 1:
				out = append(out, ok("etcd %s: volume %s is attached here", sv.EtcdCluster, here[0])...)
			case sv.Usable():
				out = append(out, ok("etcd %s: a free volume waits in %s", sv.EtcdCluster, az)...)
			default:
				why := "no volume is tagged for it"
				if len(held) > 0 {
					why = "every one is attached elsewhere: " + strings.Join(held, "; ")
				}
				if len(sv.Rejected) > 0 {
					why += "; skipped: " + strings.Join(sv.Rejected, "; ")
				}
				out = append(out, fail("wait for the instance being replaced to release its volume (or detach it: aws ec2 detach-volume), or create the zone's volume with the tags KubernetesCluster, k8s.io/role/master=1 and k8s.io/etcd/"+sv.EtcdCluster+"=<member>/<members>",
					"etcd %s: no free etcd volume in %s: %s", sv.EtcdCluster, az, why)...)
			}
		}
		return out
	}}
}

func orNone(s string) string {
	if s == "" {
		return "nothing (but not available)"
	}
	return s
}
