package awsemu

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	s3XMLNS      = "http://s3.amazonaws.com/doc/2006-03-01/"
	s3TimeFormat = "2006-01-02T15:04:05.000Z"
)

// object is one S3 object, held in memory or served from a local file.
type object struct {
	data        []byte
	path        string
	size        int64
	modified    time.Time
	contentType string
	// checksums are the x-amz-checksum-* values given at upload, answered again
	// when a client asks for checksum validation.
	checksums map[string]string

	digestOnce sync.Once
	etag       string
	crc64      string
	digestErr  error
}

func newMemObject(data []byte, modified time.Time) *object {
	return &object{data: data, size: int64(len(data)), modified: modified.UTC().Truncate(time.Second)}
}

// digest computes, in one pass and once, the ETag (the MD5 S3 reports for
// single-part uploads) and the CRC64NVME that S3 keeps for every object.
func (o *object) digest() (etag, crc string, err error) {
	o.digestOnce.Do(func() {
		rc, err := o.open(0)
		if err != nil {
			o.digestErr = err
			return
		}
		defer rc.Close()
		m, c := md5.New(), crc64.New(crc64NVME)
		if _, err := io.Copy(io.MultiWriter(m, c), rc); err != nil {
			o.digestErr = err
			return
		}
		o.etag = `"` + hex.EncodeToString(m.Sum(nil)) + `"`
		o.crc64 = base64.StdEncoding.EncodeToString(c.Sum(nil))
	})
	return o.etag, o.crc64, o.digestErr
}

func (o *object) getETag() (string, error) {
	etag, _, err := o.digest()
	return etag, err
}

func (o *object) bytes() ([]byte, error) {
	if o.path == "" {
		return o.data, nil
	}
	return os.ReadFile(o.path)
}

// open returns the object's content positioned at off.
func (o *object) open(off int64) (io.ReadCloser, error) {
	if o.path == "" {
		return io.NopCloser(bytes.NewReader(o.data[off:])), nil
	}
	f, err := os.Open(o.path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func splitS3Path(p string) (bucket, key string) {
	p = strings.TrimPrefix(p, "/")
	bucket, key, _ = strings.Cut(p, "/")
	return bucket, key
}

// s3Action names a REST request after the SDK operation that sends it.
func s3Action(r *http.Request) string {
	bucket, key := splitS3Path(r.URL.Path)
	q := r.URL.Query()
	switch {
	case bucket == "":
		if r.Method == http.MethodGet {
			return "ListBuckets"
		}
	case key == "":
		switch r.Method {
		case http.MethodGet:
			if q.Get("list-type") == "2" {
				return "ListObjectsV2"
			}
			if q.Has("location") {
				return "GetBucketLocation"
			}
			return "ListObjects"
		case http.MethodHead:
			return "HeadBucket"
		case http.MethodPut:
			return "CreateBucket"
		case http.MethodDelete:
			return "DeleteBucket"
		case http.MethodPost:
			if q.Has("delete") {
				return "DeleteObjects"
			}
		}
	default:
		switch r.Method {
		case http.MethodGet:
			return "GetObject"
		case http.MethodHead:
			return "HeadObject"
		case http.MethodPut:
			if q.Has("uploadId") && q.Has("partNumber") {
				return "UploadPart"
			}
			if r.Header.Get("X-Amz-Copy-Source") != "" {
				return "CopyObject"
			}
			return "PutObject"
		case http.MethodPost:
			if q.Has("uploads") {
				return "CreateMultipartUpload"
			}
			if q.Has("uploadId") {
				return "CompleteMultipartUpload"
			}
		case http.MethodDelete:
			if q.Has("uploadId") {
				return "AbortMultipartUpload"
			}
			return "DeleteObject"
		}
	}
	return r.Method + " " + r.URL.Path
}

func (e *Emulator) serveS3(w http.ResponseWriter, req *request) *apiError {
	bucket, key := splitS3Path(req.r.URL.Path)
	switch req.action {
	case "ListBuckets":
		return e.s3ListBuckets(w, req)
	case "HeadBucket":
		e.mu.Lock()
		_, ok := e.buckets[bucket]
		e.mu.Unlock()
		if !ok {
			return noSuchBucket(bucket)
		}
		w.Header().Set("x-amz-request-id", req.id)
		w.Header().Set("x-amz-bucket-region", e.region)
		w.WriteHeader(http.StatusOK)
		return nil
	case "GetBucketLocation":
		e.mu.Lock()
		_, ok := e.buckets[bucket]
		e.mu.Unlock()
		if !ok {
			return noSuchBucket(bucket)
		}
		loc := e.region
		if loc == "us-east-1" {
			loc = ""
		}
		writeXML(w, req, http.StatusOK, struct {
			XMLName xml.Name `xml:"LocationConstraint"`
			Xmlns   string   `xml:"xmlns,attr"`
			Value   string   `xml:",chardata"`
		}{Xmlns: s3XMLNS, Value: loc})
		return nil
	case "CreateBucket":
		e.mu.Lock()
		defer e.mu.Unlock()
		if _, ok := e.buckets[bucket]; ok {
			return errorf(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")
		}
		e.ensureBucket(bucket)
		w.Header().Set("Location", "/"+bucket)
		w.Header().Set("x-amz-request-id", req.id)
		w.WriteHeader(http.StatusOK)
		return nil
	case "ListObjectsV2", "ListObjects":
		return e.s3List(w, req, bucket, req.action == "ListObjectsV2")
	case "GetObject", "HeadObject":
		return e.s3Get(w, req, bucket, key)
	case "PutObject":
		return e.s3Put(w, req, bucket, key)
	case "CreateMultipartUpload":
		return e.s3CreateMultipart(w, req, bucket, key)
	case "UploadPart":
		return e.s3UploadPart(w, req, bucket, key)
	case "CompleteMultipartUpload":
		return e.s3CompleteMultipart(w, req, bucket, key)
	case "AbortMultipartUpload":
		e.mu.Lock()
		delete(e.uploads, req.r.URL.Query().Get("uploadId"))
		e.mu.Unlock()
		w.Header().Set("x-amz-request-id", req.id)
		w.WriteHeader(http.StatusNoContent)
		return nil
	case "DeleteObject":
		e.mu.Lock()
		defer e.mu.Unlock()
		objs, ok := e.buckets[bucket]
		if !ok {
			return noSuchBucket(bucket)
		}
		delete(objs, key)
		w.Header().Set("x-amz-request-id", req.id)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return errorf(501, "NotImplemented", "awsemu does not implement %s", req.action)
}

func noSuchBucket(b string) *apiError {
	return errorf(404, "NoSuchBucket", "The specified bucket does not exist")
}

func (e *Emulator) s3ListBuckets(w http.ResponseWriter, req *request) *apiError {
	type bucketXML struct {
		Name         string `xml:"Name"`
		CreationDate string `xml:"CreationDate"`
	}
	resp := struct {
		XMLName xml.Name    `xml:"ListAllMyBucketsResult"`
		Xmlns   string      `xml:"xmlns,attr"`
		OwnerID string      `xml:"Owner>ID"`
		Buckets []bucketXML `xml:"Buckets>Bucket"`
	}{Xmlns: s3XMLNS, OwnerID: DefaultAccountID}
	e.mu.Lock()
	names := make([]string, 0, len(e.buckets))
	for b := range e.buckets {
		names = append(names, b)
	}
	e.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		resp.Buckets = append(resp.Buckets, bucketXML{n, "2020-01-01T00:00:00.000Z"})
	}
	writeXML(w, req, http.StatusOK, resp)
	return nil
}

type s3Contents struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
}

type s3Prefix struct {
	Prefix string `xml:"Prefix"`
}

type listBucketResult struct {
	XMLName               xml.Name     `xml:"ListBucketResult"`
	Xmlns                 string       `xml:"xmlns,attr"`
	Name                  string       `xml:"Name"`
	Prefix                string       `xml:"Prefix"`
	Delimiter             string       `xml:"Delimiter,omitempty"`
	EncodingType          string       `xml:"EncodingType,omitempty"`
	MaxKeys               int          `xml:"MaxKeys"`
	IsTruncated           bool         `xml:"IsTruncated"`
	KeyCount              *int         `xml:"KeyCount,omitempty"`
	Marker                *string      `xml:"Marker,omitempty"`
	NextMarker            string       `xml:"NextMarker,omitempty"`
	ContinuationToken     string       `xml:"ContinuationToken,omitempty"`
	NextContinuationToken string       `xml:"NextContinuationToken,omitempty"`
	StartAfter            string       `xml:"StartAfter,omitempty"`
	Contents              []s3Contents `xml:"Contents"`
	CommonPrefixes        []s3Prefix   `xml:"CommonPrefixes"`
}

func (e *Emulator) s3List(w http.ResponseWriter, req *request, bucket string, v2 bool) *apiError {
	q := req.r.URL.Query()
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	maxKeys := 1000
	if m := q.Get("max-keys"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 0 {
			return errorf(400, "InvalidArgument", "max-keys must be a non-negative integer")
		}
		maxKeys = min(n, 1000)
	}
	encURL := q.Get("encoding-type") == "url"
	if et := q.Get("encoding-type"); et != "" && !encURL {
		return errorf(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
	}
	// after is the last key already returned: listing resumes past it.
	var after string
	resp := listBucketResult{Xmlns: s3XMLNS, Name: bucket, Prefix: prefix, Delimiter: delim, MaxKeys: maxKeys}
	if v2 {
		after = q.Get("start-after")
		resp.StartAfter = after
		if tok := q.Get("continuation-token"); tok != "" {
			b, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				return errorf(400, "InvalidArgument", "The continuation token provided is incorrect")
			}
			after = string(b)
			resp.ContinuationToken = tok
		}
	} else {
		after = q.Get("marker")
		resp.Marker = &after
	}
	if encURL {
		resp.EncodingType = "url"
	}

	type entry struct {
		key string
		o   *object
	}
	e.mu.Lock()
	objs, ok := e.buckets[bucket]
	var entries []entry
	for k, o := range objs {
		if strings.HasPrefix(k, prefix) && k > after {
			entries = append(entries, entry{k, o})
		}
	}
	e.mu.Unlock()
	if !ok {
		return noSuchBucket(bucket)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].key < entries[j].key })

	enc := func(s string) string {
		if encURL {
			return escapeURI(s, false)
		}
		return s
	}
	count := 0
	var last string
	seenPrefix := map[string]bool{}
	for _, en := range entries {
		if delim != "" {
			if i := strings.Index(en.key[len(prefix):], delim); i >= 0 {
				cp := en.key[:len(prefix)+i+len(delim)]
				if seenPrefix[cp] {
					last = en.key
					continue
				}
				if count == maxKeys {
					resp.IsTruncated = true
					break
				}
				seenPrefix[cp] = true
				resp.CommonPrefixes = append(resp.CommonPrefixes, s3Prefix{enc(cp)})
				count++
				last = en.key
				continue
			}
		}
		if count == maxKeys {
			resp.IsTruncated = true
			break
		}
		etag, err := en.o.getETag()
		if err != nil {
			return errorf(500, "InternalError", "object %s: %v", en.key, err)
		}
		resp.Contents = append(resp.Contents, s3Contents{
			Key: enc(en.key), LastModified: en.o.modified.Format(s3TimeFormat), ETag: etag, Size: en.o.size, StorageClass: "STANDARD",
		})
		count++
		last = en.key
	}
	if resp.IsTruncated {
		// last already covers every key under the final common prefix (keys are
		// sorted, so they were consumed before the next new entry), so the next
		// page cannot repeat that prefix.
		if v2 {
			resp.NextContinuationToken = base64.RawURLEncoding.EncodeToString([]byte(last))
		} else if delim != "" {
			resp.NextMarker = enc(last)
		}
	}
	if v2 {
		resp.KeyCount = &count
		resp.Marker = nil
	}
	writeXML(w, req, http.StatusOK, resp)
	return nil
}

func (e *Emulator) s3Get(w http.ResponseWriter, req *request, bucket, key string) *apiError {
	e.mu.Lock()
	objs, bok := e.buckets[bucket]
	o, ok := objs[key]
	e.mu.Unlock()
	if !bok {
		return noSuchBucket(bucket)
	}
	if !ok {
		return errorf(404, "NoSuchKey", "The specified key does not exist.")
	}
	etag, err := o.getETag()
	if err != nil {
		return errorf(500, "InternalError", "object %s: %v", key, err)
	}
	h := w.Header()
	h.Set("x-amz-request-id", req.id)
	h.Set("ETag", etag)
	h.Set("Last-Modified", o.modified.Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	ct := o.contentType
	if ct == "" {
		ct = "binary/octet-stream"
	}
	h.Set("Content-Type", ct)

	r := req.r
	if m := r.Header.Get("If-Match"); m != "" && m != etag && m != "*" {
		return errorf(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
	}
	if m := r.Header.Get("If-None-Match"); m != "" && (m == etag || m == "*") {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}

	start, length, status := int64(0), o.size, http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" {
		s, n, err := parseRange(rg, o.size)
		if err != nil {
			h.Del("ETag")
			return errorf(416, "InvalidRange", "The requested range is not satisfiable")
		}
		start, length, status = s, n, http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, s+n-1, o.size))
	}
	if strings.EqualFold(r.Header.Get("X-Amz-Checksum-Mode"), "ENABLED") && status == http.StatusOK {
		// Checksums cover whole objects only, so ranged reads carry none.
		if len(o.checksums) > 0 {
			for k, v := range o.checksums {
				h.Set(k, v)
			}
		} else {
			_, crc, _ := o.digest()
			h.Set("x-amz-checksum-crc64nvme", crc)
		}
		h.Set("x-amz-checksum-type", "FULL_OBJECT")
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return nil
	}
	rc, err := o.open(start)
	if err != nil {
		return errorf(500, "InternalError", "object %s: %v", key, err)
	}
	defer rc.Close()
	w.WriteHeader(status)
	if _, err := io.CopyN(w, rc, length); err != nil {
		e.log.Warn("object body cut short", "bucket", bucket, "key", key, "err", err)
	}
	return nil
}

// parseRange reads a single "bytes=" range, the only form S3 serves.
func parseRange(h string, size int64) (start, length int64, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, errors.New("unsupported range")
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, errors.New("malformed range")
	}
	switch {
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, errors.New("malformed suffix range")
		}
		n = min(n, size)
		return size - n, n, nil
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s < 0 || s >= size {
			return 0, 0, errors.New("range start out of bounds")
		}
		end := size - 1
		if b != "" {
			if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < s {
				return 0, 0, errors.New("malformed range end")
			}
			end = min(end, size-1)
		}
		return s, end - s + 1, nil
	}
}

var crc64NVME = crc64.MakeTable(0x9a6c9329ac4bc9b5)

// checksumAlgorithms are the x-amz-checksum-* headers S3 verifies.
var checksumAlgorithms = map[string]func() hash.Hash{
	"x-amz-checksum-crc32":     func() hash.Hash { return crc32.NewIEEE() },
	"x-amz-checksum-crc32c":    func() hash.Hash { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) },
	"x-amz-checksum-crc64nvme": func() hash.Hash { return crc64.New(crc64NVME) },
	"x-amz-checksum-sha1":      sha1.New,
	"x-amz-checksum-sha256":    sha256.New,
}

// s3Body decodes and checks an upload's body (aws-chunked, trailers, checksums,
// Content-MD5) and returns it with the checksums it was sent with.
func s3Body(req *request) ([]byte, map[string]string, *apiError) {
	r := req.r
	body := req.body
	checksums := map[string]string{}
	for name := range checksumAlgorithms {
		if v := r.Header.Get(name); v != "" {
			checksums[name] = v
		}
	}
	if strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-") || strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") {
		decoded, trailers, err := decodeAWSChunked(body)
		if err != nil {
			return nil, nil, errorf(400, "IncompleteBody", "aws-chunked body: %v", err)
		}
		if dl := r.Header.Get("X-Amz-Decoded-Content-Length"); dl != "" && dl != strconv.Itoa(len(decoded)) {
			return nil, nil, errorf(400, "IncompleteBody", "decoded length %d, header says %s", len(decoded), dl)
		}
		body = decoded
		for k, v := range trailers {
			if _, ok := checksumAlgorithms[k]; ok {
				checksums[k] = v
			}
		}
	}
	for name, want := range checksums {
		h := checksumAlgorithms[name]()
		h.Write(body)
		if got := base64.StdEncoding.EncodeToString(h.Sum(nil)); got != want {
			return nil, nil, errorf(400, "BadDigest", "The %s you specified did not match the calculated checksum.", strings.TrimPrefix(name, "x-amz-checksum-"))
		}
	}
	if md := r.Header.Get("Content-MD5"); md != "" {
		sum := md5.Sum(body)
		if base64.StdEncoding.EncodeToString(sum[:]) != md {
			return nil, nil, errorf(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
		}
	}
	return body, checksums, nil
}

func (e *Emulator) s3Put(w http.ResponseWriter, req *request, bucket, key string) *apiError {
	r := req.r
	body, checksums, aerr := s3Body(req)
	if aerr != nil {
		return aerr
	}
	ifMatch, ifNoneMatch := r.Header.Get("If-Match"), r.Header.Get("If-None-Match")
	if ifNoneMatch != "" && ifNoneMatch != "*" {
		return errorf(501, "NotImplemented", "A header you provided implies functionality that is not implemented")
	}
	o := newMemObject(bytes.Clone(body), e.now())
	o.contentType = r.Header.Get("Content-Type")
	o.checksums = checksums
	e.mu.Lock()
	objs, ok := e.buckets[bucket]
	if ok {
		// The precondition is checked and the object replaced under one lock,
		// so of two writers that read the same ETag exactly one wins.
		if aerr := putPrecondition(objs[key], ifMatch, ifNoneMatch); aerr != nil {
			e.mu.Unlock()
			return aerr
		}
		objs[key] = o
	}
	e.mu.Unlock()
	if !ok {
		return noSuchBucket(bucket)
	}
	etag, _ := o.getETag()
	w.Header().Set("ETag", etag)
	w.Header().Set("x-amz-request-id", req.id)
	for name, v := range checksums {
		w.Header().Set(name, v)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// putPrecondition is S3's conditional write (PutObject with If-None-Match: *
// or If-Match: <ETag>) against cur, the object in place (nil: none): creating
// over an existing object, or replacing an object whose ETag is not the one
// given, fails 412 PreconditionFailed; If-Match on a missing object is 404
// NoSuchKey.
func putPrecondition(cur *object, ifMatch, ifNoneMatch string) *apiError {
	failed := errorf(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
	if ifNoneMatch == "*" && cur != nil {
		return failed
	}
	if ifMatch == "" {
		return nil
	}
	if cur == nil {
		return errorf(404, "NoSuchKey", "The specified key does not exist.")
	}
	etag, err := cur.getETag()
	if err != nil {
		return errorf(500, "InternalError", "object: %v", err)
	}
	if ifMatch != etag && ifMatch != "*" {
		return failed
	}
	return nil
}

// decodeAWSChunked undoes the aws-chunked content encoding: hex-size[;chunk-
// signature=...] CRLF data CRLF ..., a zero-size chunk, then optional trailers.
func decodeAWSChunked(b []byte) (data []byte, trailers map[string]string, err error) {
	br := bufio.NewReader(bytes.NewReader(b))
	var out bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, nil, fmt.Errorf("chunk header: %w", err)
		}
		sizeStr, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), ";")
		size, err := strconv.ParseInt(strings.TrimSpace(sizeStr), 16, 64)
		if err != nil || size < 0 {
			return nil, nil, fmt.Errorf("chunk size %q", sizeStr)
		}
		if size == 0 {
			break
		}
		if _, err := io.CopyN(&out, br, size); err != nil {
			return nil, nil, fmt.Errorf("chunk data: %w", err)
		}
		var crlf [2]byte
		if _, err := io.ReadFull(br, crlf[:]); err != nil || crlf != [2]byte{'\r', '\n'} {
			return nil, nil, errors.New("chunk not terminated by CRLF")
		}
	}
	trailers = map[string]string{}
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, nil, fmt.Errorf("malformed trailer %q", line)
			}
			trailers[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
		if err != nil {
			break
		}
	}
	return out.Bytes(), trailers, nil
}
