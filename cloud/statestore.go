package cloud

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nodeagent/nodeagent/config"
)

// Well-known objects under a cluster's state store.
const (
	ClusterConfigKey = "nodeagent/cluster.yaml"
	// AddonsDir holds the users' own add-ons: one manifest per add-on, named <add-on>.yaml.
	AddonsDir    = "addons"
	GossipKeyKey = "nodeagent/gossip.key"
	// GossipSeedsKey is the masters' gossip seed list (gossip.SeedList): masters
	// write it, workers read it instead of asking EC2 for seeds.
	GossipSeedsKey = "nodeagent/gossip-seeds.json"
	// GossipKeyringKey is the ring's keyring document (gossip.KeyringDoc): when
	// present it replaces GossipKeyKey; masters advance key rotations in it.
	GossipKeyringKey = "nodeagent/gossip-keyring.json"
	// CACertKey is readable by every node; everything under pki/private/ by
	// masters only (DESIGN.md, "Node identity and the state store").
	CACertKey = "pki/ca.crt"
	CAKeyKey  = "pki/private/ca.key"
	// ServiceAccountKeyKey is the service-account signing key every API server
	// and controller manager of the cluster shares (masters only).
	ServiceAccountKeyKey = "pki/private/service-account.key"
)

// ErrNotFound means the state store has no such object.
var ErrNotFound = errors.New("not found in state store")

// ErrChanged means a conditional write lost: the object is no longer the
// version the writer read (S3's 412 PreconditionFailed or 409
// ConditionalRequestConflict, or it was deleted meanwhile). Read it again and
// decide again.
var ErrChanged = errors.New("state store object changed since it was read")

// S3GetAPI is the S3 call the state store makes.
type S3GetAPI interface {
	GetObject(context.Context, *s3.GetObjectInput, ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

// StateStore reads the cluster's shared objects from s3://bucket/prefix.
type StateStore struct {
	S3     S3GetAPI
	Bucket string
	Prefix string
}

// NewStateStore parses an s3:// URL into a StateStore.
func NewStateStore(c S3GetAPI, url string) (*StateStore, error) {
	bucket, prefix, err := config.ParseS3URL(url)
	if err != nil {
		return nil, err
	}
	return &StateStore{S3: c, Bucket: bucket, Prefix: prefix}, nil
}

// Get reads one object; a missing one is ErrNotFound.
func (s *StateStore) Get(ctx context.Context, key string) ([]byte, error) {
	full := path.Join(s.Prefix, key)
	out, err := s.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(full)})
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return nil, fmt.Errorf("s3://%s/%s: %w", s.Bucket, full, ErrNotFound)
		}
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, full, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, full, err)
	}
	return b, nil
}

// ServiceAccountKey loads the cluster's shared service-account key; (nil, nil)
// when the state store holds none.
func (s *StateStore) ServiceAccountKey(ctx context.Context) ([]byte, error) {
	b, err := s.Get(ctx, ServiceAccountKeyKey)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return b, err
}

// CACert loads the cluster CA certificate alone, what a worker may read.
func (s *StateStore) CACert(ctx context.Context) ([]byte, error) { return s.Get(ctx, CACertKey) }

// CA loads the cluster CA, certificate and key, from the state store (masters).
func (s *StateStore) CA(ctx context.Context) (certPEM, keyPEM []byte, err error) {
	if certPEM, err = s.Get(ctx, CACertKey); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = s.Get(ctx, CAKeyKey); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// GetIfChanged reads one object unless its ETag is still etag (a conditional
// GET: If-None-Match, answered 304 without a body). changed is false when the
// object is unchanged; a missing object is ErrNotFound.
func (s *StateStore) GetIfChanged(ctx context.Context, key, etag string) (data []byte, newETag string, changed bool, err error) {
	full := path.Join(s.Prefix, key)
	in := &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(full)}
	if etag != "" {
		in.IfNoneMatch = aws.String(etag)
	}
	out, err := s.S3.GetObject(ctx, in)
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotModified {
			return nil, etag, false, nil
		}
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return nil, "", true, fmt.Errorf("s3://%s/%s: %w", s.Bucket, full, ErrNotFound)
		}
		return nil, "", false, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, full, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, 8<<20))
	if err != nil {
		return nil, "", false, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, full, err)
	}
	return b, aws.ToString(out.ETag), true, nil
}

// GetVersioned reads one object and its version (ETag), for a later
// PutIfMatch; a missing object is ErrNotFound.
func (s *StateStore) GetVersioned(ctx context.Context, key string) (data []byte, etag string, err error) {
	data, etag, _, err = s.GetIfChanged(ctx, key, "")
	return data, etag, err
}

// S3PutAPI is the S3 call writing a state store object.
type S3PutAPI interface {
	PutObject(context.Context, *s3.PutObjectInput, ...func(*s3.Options)) (*s3.PutObjectOutput, error)
}

// Put writes one object whole (S3 replaces objects atomically). The state
// store's S3 client must be able to write, and the caller's role allowed to:
// masters only, and only the keys their policy names.
func (s *StateStore) Put(ctx context.Context, key string, data []byte) error {
	full := path.Join(s.Prefix, key)
	w, ok := s.S3.(S3PutAPI)
	if !ok {
		return fmt.Errorf("write s3://%s/%s: this S3 client cannot write", s.Bucket, full)
	}
	if _, err := w.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(full), Body: bytes.NewReader(data)}); err != nil {
		return fmt.Errorf("write s3://%s/%s: %w", s.Bucket, full, err)
	}
	return nil
}

// PutIfMatch writes one object only if it is still the version etag from
// GetVersioned, or, with etag "", only if there is none yet (S3 conditional
// writes: If-Match, If-None-Match: *). A lost race is ErrChanged and writes
// nothing.
func (s *StateStore) PutIfMatch(ctx context.Context, key string, data []byte, etag string) error {
	full := path.Join(s.Prefix, key)
	w, ok := s.S3.(S3PutAPI)
	if !ok {
		return fmt.Errorf("write s3://%s/%s: this S3 client cannot write", s.Bucket, full)
	}
	in := &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(full), Body: bytes.NewReader(data)}
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	if _, err := w.PutObject(ctx, in); err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			switch ae.ErrorCode() {
			case "PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey":
				return fmt.Errorf("write s3://%s/%s: %w (%s)", s.Bucket, full, ErrChanged, ae.ErrorCode())
			}
		}
		return fmt.Errorf("write s3://%s/%s: %w", s.Bucket, full, err)
	}
	return nil
}

// URL is the state store's s3:// URL of key.
func (s *StateStore) URL(key string) string {
	return "s3://" + s.Bucket + "/" + path.Join(s.Prefix, key)
}

// S3ListAPI is the S3 call listing a state store directory.
type S3ListAPI interface {
	ListObjectsV2(context.Context, *s3.ListObjectsV2Input, ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
}

// List returns the keys (relative to the state store, e.g. addons/dns.yaml) of
// the objects under dir, sorted; none is an empty list. The state store's S3
// client must be able to list.
func (s *StateStore) List(ctx context.Context, dir string) ([]string, error) {
	lister, ok := s.S3.(S3ListAPI)
	if !ok {
		return nil, fmt.Errorf("list s3://%s/%s: this S3 client cannot list", s.Bucket, path.Join(s.Prefix, dir))
	}
	prefix := strings.TrimSuffix(path.Join(s.Prefix, dir), "/") + "/"
	var keys []string
	p := s3.NewListObjectsV2Paginator(lister, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", s.Bucket, prefix, err)
		}
		for _, o := range page.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), strings.TrimSuffix(s.Prefix, "/")+"/")
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}
