package awsemu

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nodeagent/nodeagent/cloud"
)

func TestS3GetObject(t *testing.T) {
	w := testWorld(t)
	w.Buckets["state"]["odd/a b+c=d~e&f%.txt"] = "odd"
	r := Start(t, w, Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))
	cases := []struct {
		name, bucket, key, rng string
		want                   string
		wantErr                func(error) bool
	}{
		{name: "whole object", bucket: "state", key: "proyecto.k8s.local/nodeagent/gossip.key", want: "0123456789abcdef"},
		{name: "key needing escapes", bucket: "state", key: "odd/a b+c=d~e&f%.txt", want: "odd"},
		{name: "range", bucket: "state", key: "proyecto.k8s.local/nodeagent/gossip.key", rng: "bytes=2-5", want: "2345"},
		{name: "suffix range", bucket: "state", key: "proyecto.k8s.local/nodeagent/gossip.key", rng: "bytes=-3", want: "def"},
		{name: "missing key", bucket: "state", key: "nope", wantErr: func(err error) bool { var nsk *types.NoSuchKey; return errors.As(err, &nsk) }},
		// GetObject's model lists no NoSuchBucket, so the SDK reports it by code only.
		{name: "missing bucket", bucket: "nobucket", key: "k", wantErr: func(err error) bool { return apiCode(err) == "NoSuchBucket" }},
		{name: "range beyond end", bucket: "state", key: "assets/kubelet", rng: "bytes=100-200", wantErr: func(err error) bool { return apiCode(err) == "InvalidRange" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := &s3.GetObjectInput{Bucket: aws.String(tc.bucket), Key: aws.String(tc.key)}
			if tc.rng != "" {
				in.Range = aws.String(tc.rng)
			}
			out, err := c.GetObject(ctx(t), in)
			if tc.wantErr != nil {
				if err == nil || !tc.wantErr(err) {
					t.Fatalf("GetObject error = %v (code %q)", err, apiCode(err))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer out.Body.Close()
			b, err := io.ReadAll(out.Body)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("body = %q, want %q", b, tc.want)
			}
		})
	}
}

func TestS3HeadObject(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))
	out, err := c.HeadObject(ctx(t), &s3.HeadObjectInput{Bucket: aws.String("state"), Key: aws.String("assets/kubelet")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt64(out.ContentLength) != int64(len("kubelet-binary")) {
		t.Errorf("ContentLength = %d", aws.ToInt64(out.ContentLength))
	}
	if etag := aws.ToString(out.ETag); len(etag) != 34 {
		t.Errorf("ETag = %q, want a quoted MD5", etag)
	}
	_, err = c.HeadObject(ctx(t), &s3.HeadObjectInput{Bucket: aws.String("state"), Key: aws.String("missing")})
	var nf *types.NotFound
	if !errors.As(err, &nf) {
		t.Fatalf("HeadObject of a missing key = %v, want NotFound", err)
	}
}

func TestS3ListObjectsV2(t *testing.T) {
	w := testWorld(t)
	for _, k := range []string{"p/a", "p/b", "p/c", "p/d/1", "p/d/2", "p/e"} {
		w.Buckets["state"][k] = k
	}
	r := Start(t, w, Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))

	t.Run("prefix with pagination", func(t *testing.T) {
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String("state"), Prefix: aws.String("p/"), MaxKeys: aws.Int32(2)})
		var keys []string
		pages := 0
		for p.HasMorePages() {
			out, err := p.NextPage(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, o := range out.Contents {
				keys = append(keys, aws.ToString(o.Key))
			}
		}
		if want := "p/a p/b p/c p/d/1 p/d/2 p/e"; strings.Join(keys, " ") != want {
			t.Errorf("keys = %v, want %s", keys, want)
		}
		if pages != 3 {
			t.Errorf("pages = %d, want 3", pages)
		}
	})
	t.Run("delimiter", func(t *testing.T) {
		out, err := c.ListObjectsV2(ctx(t), &s3.ListObjectsV2Input{Bucket: aws.String("state"), Prefix: aws.String("p/"), Delimiter: aws.String("/")})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.CommonPrefixes) != 1 || aws.ToString(out.CommonPrefixes[0].Prefix) != "p/d/" {
			t.Errorf("common prefixes = %+v, want [p/d/]", out.CommonPrefixes)
		}
		if len(out.Contents) != 4 || aws.ToInt32(out.KeyCount) != 5 {
			t.Errorf("contents = %d, key count %d; want 4 and 5", len(out.Contents), aws.ToInt32(out.KeyCount))
		}
	})
	t.Run("version 1 with marker", func(t *testing.T) {
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String("state"), Prefix: aws.String("p/"), StartAfter: aws.String("p/c")})
		out, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Contents) != 3 || aws.ToString(out.Contents[0].Key) != "p/d/1" {
			t.Errorf("start-after p/c: %d keys from %q", len(out.Contents), aws.ToString(out.Contents[0].Key))
		}
		v1, err := c.ListObjects(ctx(t), &s3.ListObjectsInput{Bucket: aws.String("state"), Prefix: aws.String("p/"), Marker: aws.String("p/a"), MaxKeys: aws.Int32(2)})
		if err != nil {
			t.Fatal(err)
		}
		if len(v1.Contents) != 2 || aws.ToString(v1.Contents[0].Key) != "p/b" || !aws.ToBool(v1.IsTruncated) {
			t.Errorf("ListObjects after p/a: %d keys, truncated %v", len(v1.Contents), aws.ToBool(v1.IsTruncated))
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		_, err := c.ListObjectsV2(ctx(t), &s3.ListObjectsV2Input{Bucket: aws.String("nobucket")})
		var nsb *types.NoSuchBucket
		if !errors.As(err, &nsb) {
			t.Fatalf("err = %v, want NoSuchBucket", err)
		}
	})
}

func TestS3PutObjectAndObjectFiles(t *testing.T) {
	w := testWorld(t)
	big := bytes.Repeat([]byte("0123456789"), 300_000)
	path := filepath.Join(t.TempDir(), "kubelet")
	if err := os.WriteFile(path, big, 0o600); err != nil {
		t.Fatal(err)
	}
	w.ObjectFiles = map[string]map[string]string{"assets": {"v1.31.2/kubelet": path}}
	r := Start(t, w, Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))

	out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("assets"), Key: aws.String("v1.31.2/kubelet")})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil {
		t.Fatal(err) // the SDK validates the CRC64NVME the emulator sends while reading
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("file object: got %d bytes, want %d", len(got), len(big))
	}

	for _, alg := range []types.ChecksumAlgorithm{"", types.ChecksumAlgorithmCrc32, types.ChecksumAlgorithmCrc32c, types.ChecksumAlgorithmSha256, types.ChecksumAlgorithmCrc64nvme} {
		t.Run("put checksum "+string(alg), func(t *testing.T) {
			key := "uploads/" + string(alg)
			data := "status of " + string(alg)
			_, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String("state"), Key: aws.String(key), Body: strings.NewReader(data), ChecksumAlgorithm: alg})
			if err != nil {
				t.Fatal(err)
			}
			if b, ok := r.E.Object("state", key); !ok || string(b) != data {
				t.Fatalf("stored %q (%v), want %q", b, ok, data)
			}
			out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String(key), ChecksumMode: types.ChecksumModeEnabled})
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(out.Body)
			out.Body.Close()
			if err != nil || string(b) != data {
				t.Fatalf("read back %q, %v", b, err)
			}
		})
	}
	t.Run("put 3 MiB (Expect: 100-continue)", func(t *testing.T) {
		data := bytes.Repeat([]byte("nodeagent"), 3<<20/9+1)
		if _, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String("state"), Key: aws.String("big"), Body: bytes.NewReader(data)}); err != nil {
			t.Fatal(err)
		}
		if b, ok := r.E.Object("state", "big"); !ok || !bytes.Equal(b, data) {
			t.Fatalf("stored %d bytes, want %d", len(b), len(data))
		}
	})
	_, err = c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String("nobucket"), Key: aws.String("k"), Body: strings.NewReader("x")})
	if apiCode(err) != "NoSuchBucket" {
		t.Fatalf("PutObject into a missing bucket = %v, want NoSuchBucket", err)
	}
}

func TestS3PutVerifiesChecksums(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	cases := []struct {
		name, header, value string
		wantStatus          int
	}{
		{"right crc32", "X-Amz-Checksum-Crc32", "NhCmhg==", 200}, // CRC32("hello")
		{"wrong crc32", "X-Amz-Checksum-Crc32", "AAAAAA==", 400},
		{"wrong sha256", "X-Amz-Checksum-Sha256", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 400},
		{"wrong Content-MD5", "Content-MD5", "AAAAAAAAAAAAAAAAAAAAAA==", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := signed(t, r, "s3", "PUT", r.URL+"/state/checked", "hello", time.Now(), func(req *http.Request) { req.Header.Set(tc.header, tc.value) })
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus == 400 {
				if code := errorCode(t, resp); code != "BadDigest" {
					t.Fatalf("code %s, want BadDigest", code)
				}
			}
		})
	}
}

func TestDecodeAWSChunked(t *testing.T) {
	cases := []struct {
		name, in, want string
		trailers       map[string]string
		wantErr        bool
	}{
		{name: "unsigned with trailer", in: "5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n", want: "hello world",
			trailers: map[string]string{"x-amz-checksum-crc32": "DUoRhQ=="}},
		{name: "chunk signatures", in: "5;chunk-signature=abc\r\nhello\r\n0;chunk-signature=def\r\n\r\n", want: "hello", trailers: map[string]string{}},
		{name: "short chunk", in: "9\r\nhello\r\n0\r\n\r\n", wantErr: true},
		{name: "bad size", in: "zz\r\nhello\r\n", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, tr, err := decodeAWSChunked([]byte(tc.in))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decoded %q, want an error", got)
				}
				return
			}
			if err != nil || string(got) != tc.want || len(tr) != len(tc.trailers) {
				t.Fatalf("got %q, %v, %v", got, tr, err)
			}
			for k, v := range tc.trailers {
				if tr[k] != v {
					t.Errorf("trailer %s = %q, want %q", k, tr[k], v)
				}
			}
		})
	}
}

// PutObject's conditional writes, as S3 has them: If-None-Match: * creates
// only, If-Match: <ETag> replaces only the version read; a failed condition is
// 412 PreconditionFailed and leaves the object as it was.
func TestS3ConditionalPut(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewS3(sdkConfig(t, r, ""))
	put := func(data string, ifMatch, ifNoneMatch *string) (string, error) {
		out, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String("state"), Key: aws.String("doc"),
			Body: strings.NewReader(data), IfMatch: ifMatch, IfNoneMatch: ifNoneMatch})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.ETag), nil
	}
	stored := func() string { b, _ := r.E.Object("state", "doc"); return string(b) }

	if _, err := put("v0", aws.String(`"0123456789abcdef0123456789abcdef"`), nil); apiCode(err) != "NoSuchKey" {
		t.Fatalf("If-Match on a missing object = %v, want NoSuchKey", err)
	}
	v1, err := put("v1", nil, aws.String("*"))
	if err != nil {
		t.Fatalf("create with If-None-Match: * = %v", err)
	}
	if _, err := put("v1 again", nil, aws.String("*")); apiCode(err) != "PreconditionFailed" {
		t.Fatalf("create over an existing object = %v, want PreconditionFailed", err)
	}
	v2, err := put("v2", aws.String(v1), nil)
	if err != nil {
		t.Fatalf("replace the version read = %v", err)
	}
	if _, err := put("v2 from a stale read", aws.String(v1), nil); apiCode(err) != "PreconditionFailed" {
		t.Fatalf("replace with a stale ETag = %v, want PreconditionFailed", err)
	}
	if got := stored(); got != "v2" {
		t.Fatalf("after the failed writes the object holds %q, want v2", got)
	}
	if _, err := put("v3", aws.String(v2), nil); err != nil {
		t.Fatalf("replace the version read = %v", err)
	}
	if _, err := put("x", nil, aws.String(v2)); apiCode(err) != "NotImplemented" {
		t.Fatalf("If-None-Match with an ETag = %v, want NotImplemented (S3 takes only *)", err)
	}

	// Writers racing from one read: exactly one wins.
	const writers = 8
	errs := make(chan error, writers)
	for i := range writers {
		go func() {
			_, err := put(fmt.Sprintf("racer %d", i), aws.String(etagOf("v3")), nil)
			errs <- err
		}()
	}
	wins := 0
	for range writers {
		err := <-errs
		switch code := apiCode(err); {
		case err == nil:
			wins++
		case code != "PreconditionFailed":
			t.Errorf("a losing writer got %v, want PreconditionFailed", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d racing writers won, want exactly 1", wins, writers)
	}
}

// etagOf is S3's ETag of a single-part object: its quoted MD5.
func etagOf(data string) string {
	sum := md5.Sum([]byte(data))
	return `"` + hex.EncodeToString(sum[:]) + `"`
}
