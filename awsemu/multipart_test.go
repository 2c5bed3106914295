package awsemu

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nodeagent/nodeagent/cloud"
)

// TestS3Multipart: the SDK's transfer manager uploads a large object in parts;
// the object exists only once the upload is completed, and reads back whole.
// An upload that is aborted, or completed with a part missing, leaves no object.
func TestS3Multipart(t *testing.T) {
	r := Start(t, &World{Buckets: map[string]map[string]string{"state": {}}}, Options{Seed: 3})
	c := cloud.NewS3(sdkConfig(t, r, ""))
	data := make([]byte, 13<<20)
	rand.Read(data)

	tm := transfermanager.New(c, func(o *transfermanager.Options) { o.PartSizeBytes, o.MultipartUploadThreshold = 5<<20, 5<<20 })
	if _, err := tm.UploadObject(ctx(t), &transfermanager.UploadObjectInput{
		Bucket: aws.String("state"), Key: aws.String("big"), Body: bytes.NewReader(data),
	}); err != nil {
		t.Fatal(err)
	}
	if n := r.E.Calls(ServiceS3, "UploadPart"); n != 3 {
		t.Errorf("%d UploadPart calls, want 3 parts of 5, 5 and 3 MiB", n)
	}
	out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("big")})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, not the %d uploaded", len(got), len(data))
	}
	if p := r.E.PendingUploads(); len(p) != 0 {
		t.Errorf("pending uploads after completion: %v", p)
	}

	// Parts uploaded, then aborted: nothing to read, nothing pending.
	cr, err := c.CreateMultipartUpload(ctx(t), &s3.CreateMultipartUploadInput{Bucket: aws.String("state"), Key: aws.String("half")})
	if err != nil {
		t.Fatal(err)
	}
	part, err := c.UploadPart(ctx(t), &s3.UploadPartInput{Bucket: aws.String("state"), Key: aws.String("half"), UploadId: cr.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(data[:5<<20])})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.E.Object("state", "half"); ok {
		t.Fatal("an uncompleted upload is readable")
	}
	// Completing with a part that was never sent is refused.
	_, err = c.CompleteMultipartUpload(ctx(t), &s3.CompleteMultipartUploadInput{Bucket: aws.String("state"), Key: aws.String("half"),
		UploadId: cr.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{
			{PartNumber: aws.Int32(1), ETag: part.ETag}, {PartNumber: aws.Int32(2), ETag: aws.String(`"0123"`)},
		}}})
	if apiCode(err) != "InvalidPart" {
		t.Fatalf("complete with a missing part: %v, want InvalidPart", err)
	}
	if _, err := c.AbortMultipartUpload(ctx(t), &s3.AbortMultipartUploadInput{Bucket: aws.String("state"), Key: aws.String("half"), UploadId: cr.UploadId}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.E.Object("state", "half"); ok || len(r.E.PendingUploads()) != 0 {
		t.Fatalf("after abort: object %v, pending %v", ok, r.E.PendingUploads())
	}
	if _, err := c.UploadPart(ctx(t), &s3.UploadPartInput{Bucket: aws.String("state"), Key: aws.String("half"), UploadId: cr.UploadId,
		PartNumber: aws.Int32(2), Body: bytes.NewReader(data[:10])}); apiCode(err) != "NoSuchUpload" {
		t.Fatalf("part after abort: %v, want NoSuchUpload", err)
	}
}

// ObjectReads counts GetObject per bucket, whether the object exists or not: the
// reads of an assets bucket (downloads) apart from a state store's.
func TestObjectReadsPerBucket(t *testing.T) {
	r := Start(t, &World{Buckets: map[string]map[string]string{"state": {"ca.crt": "x"}, "assets": {"kubelet": "y"}}}, Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))
	for _, o := range []struct{ bucket, key string }{{"state", "ca.crt"}, {"state", "missing"}, {"assets", "kubelet"}} {
		if out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String(o.bucket), Key: aws.String(o.key)}); err == nil {
			out.Body.Close()
		}
	}
	if _, err := c.ListObjectsV2(ctx(t), &s3.ListObjectsV2Input{Bucket: aws.String("assets")}); err != nil {
		t.Fatal(err)
	}
	for bucket, want := range map[string]int{"state": 2, "assets": 1, "other": 0} {
		if got := r.E.ObjectReads(bucket); got != want {
			t.Errorf("ObjectReads(%s) = %d, want %d", bucket, got, want)
		}
	}
}
