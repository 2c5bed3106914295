package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Identity is what the node learns about itself from instance metadata.
type Identity struct {
	InstanceID       string
	InstanceType     string
	Region           string
	AvailabilityZone string
	PrivateIP        string
	// Hostname is the instance's private DNS name (e.g. ip-10-0-1-5.ec2.internal); it
	// becomes the Kubernetes node name, as on kops and EKS nodes.
	Hostname string
}

// IMDSAPI is the part of the IMDS client the agent uses.
type IMDSAPI interface {
	GetInstanceIdentityDocument(context.Context, *imds.GetInstanceIdentityDocumentInput, ...func(*imds.Options)) (*imds.GetInstanceIdentityDocumentOutput, error)
	GetMetadata(context.Context, *imds.GetMetadataInput, ...func(*imds.Options)) (*imds.GetMetadataOutput, error)
	GetUserData(context.Context, *imds.GetUserDataInput, ...func(*imds.Options)) (*imds.GetUserDataOutput, error)
}

// ErrNoUserData means the instance was launched without user-data.
var ErrNoUserData = errors.New("instance has no user-data")

// FetchIdentity reads the instance identity document and the metadata it lacks.
func FetchIdentity(ctx context.Context, c IMDSAPI) (Identity, error) {
	doc, err := c.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		return Identity{}, fmt.Errorf("instance metadata: identity document: %w", err)
	}
	id := Identity{
		InstanceID:       doc.InstanceID,
		InstanceType:     doc.InstanceType,
		Region:           doc.Region,
		AvailabilityZone: doc.AvailabilityZone,
		PrivateIP:        doc.PrivateIP,
	}
	if id.Hostname, err = metadataString(ctx, c, "local-hostname"); err != nil {
		return Identity{}, err
	}
	// The local-hostname may list several names (DHCP option sets); the first is the node's.
	id.Hostname = strings.Fields(id.Hostname + " ")[0]
	if id.InstanceID == "" || id.AvailabilityZone == "" || id.PrivateIP == "" || id.Hostname == "" {
		return Identity{}, fmt.Errorf("instance metadata is incomplete: %+v", id)
	}
	return id, nil
}

// FetchUserData returns the raw user-data, or ErrNoUserData.
func FetchUserData(ctx context.Context, c IMDSAPI) ([]byte, error) {
	out, err := c.GetUserData(ctx, &imds.GetUserDataInput{})
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
			return nil, ErrNoUserData
		}
		return nil, fmt.Errorf("instance metadata: user-data: %w", err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 16<<10+1))
	if err != nil {
		return nil, fmt.Errorf("instance metadata: user-data: %w", err)
	}
	if len(b) > 16<<10 {
		return nil, errors.New("instance metadata: user-data is larger than EC2's 16 KiB limit")
	}
	return b, nil
}

func metadataString(ctx context.Context, c IMDSAPI, path string) (string, error) {
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("instance metadata: %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
	if err != nil {
		return "", fmt.Errorf("instance metadata: %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}
