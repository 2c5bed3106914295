package awsemu

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"hash/crc64"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// multipartUpload is one S3 multipart upload in progress: its parts are held
// apart from the bucket, and the object appears only when the upload is
// completed, all at once, as on S3.
type multipartUpload struct {
	bucket, key string
	contentType string
	parts       map[int][]byte
}

// s3MinPartSize is S3's lower bound for every part but the last.
const s3MinPartSize = 5 << 20

func (e *Emulator) s3CreateMultipart(w http.ResponseWriter, req *request, bucket, key string) *apiError {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.buckets[bucket]; !ok {
		return noSuchBucket(bucket)
	}
	e.nextUpload++
	id := fmt.Sprintf("upload-%06d", e.nextUpload)
	e.uploads[id] = &multipartUpload{bucket: bucket, key: key, contentType: req.r.Header.Get("Content-Type"), parts: map[int][]byte{}}
	writeXML(w, req, http.StatusOK, struct {
		XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
		Xmlns    string   `xml:"xmlns,attr"`
		Bucket   string   `xml:"Bucket"`
		Key      string   `xml:"Key"`
		UploadID string   `xml:"UploadId"`
	}{Xmlns: s3XMLNS, Bucket: bucket, Key: key, UploadID: id})
	return nil
}

func noSuchUpload(id string) *apiError {
	return errorf(404, "NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed. (%s)", id)
}

func (e *Emulator) s3UploadPart(w http.ResponseWriter, req *request, bucket, key string) *apiError {
	q := req.r.URL.Query()
	n, err := strconv.Atoi(q.Get("partNumber"))
	if err != nil || n < 1 || n > 10000 {
		return errorf(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
	}
	body, checksums, aerr := s3Body(req)
	if aerr != nil {
		return aerr
	}
	id := q.Get("uploadId")
	e.mu.Lock()
	u, ok := e.uploads[id]
	if ok && (u.bucket != bucket || u.key != key) {
		ok = false
	}
	if ok {
		u.parts[n] = bytes.Clone(body)
	}
	e.mu.Unlock()
	if !ok {
		return noSuchUpload(id)
	}
	sum := md5.Sum(body)
	w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:])+`"`)
	for name, v := range checksums {
		w.Header().Set(name, v)
	}
	w.Header().Set("x-amz-request-id", req.id)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (e *Emulator) s3CompleteMultipart(w http.ResponseWriter, req *request, bucket, key string) *apiError {
	var in struct {
		Parts []struct {
			PartNumber int    `xml:"PartNumber"`
			ETag       string `xml:"ETag"`
		} `xml:"Part"`
	}
	if err := xml.Unmarshal(req.body, &in); err != nil {
		return errorf(400, "MalformedXML", "The XML you provided was not well-formed: %v", err)
	}
	id := req.r.URL.Query().Get("uploadId")
	e.mu.Lock()
	defer e.mu.Unlock()
	u, ok := e.uploads[id]
	if !ok || u.bucket != bucket || u.key != key {
		return noSuchUpload(id)
	}
	if len(in.Parts) == 0 {
		return errorf(400, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema")
	}
	var data bytes.Buffer
	var md5s []byte
	for i, p := range in.Parts {
		if i > 0 && p.PartNumber <= in.Parts[i-1].PartNumber {
			return errorf(400, "InvalidPartOrder", "The list of parts was not in ascending order. The parts list must be specified in order by part number.")
		}
		b, ok := u.parts[p.PartNumber]
		sum := md5.Sum(b)
		if !ok || strings.Trim(p.ETag, `"`) != hex.EncodeToString(sum[:]) {
			return errorf(400, "InvalidPart", "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.")
		}
		if i < len(in.Parts)-1 && len(b) < s3MinPartSize {
			return errorf(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
		}
		data.Write(b)
		md5s = append(md5s, sum[:]...)
	}
	o := newMemObject(slices.Clip(data.Bytes()), e.now())
	o.contentType = u.contentType
	all := md5.Sum(md5s)
	etag := fmt.Sprintf(`"%s-%d"`, hex.EncodeToString(all[:]), len(in.Parts))
	crc := crc64.New(crc64NVME)
	crc.Write(o.data)
	o.digestOnce.Do(func() { // the multipart ETag is not the content's MD5
		o.etag, o.crc64 = etag, base64.StdEncoding.EncodeToString(crc.Sum(nil))
	})
	objs, ok := e.buckets[bucket]
	if !ok {
		return noSuchBucket(bucket)
	}
	objs[key] = o
	delete(e.uploads, id)
	writeXML(w, req, http.StatusOK, struct {
		XMLName xml.Name `xml:"CompleteMultipartUploadResult"`
		Xmlns   string   `xml:"xmlns,attr"`
		Bucket  string   `xml:"Bucket"`
		Key     string   `xml:"Key"`
		ETag    string   `xml:"ETag"`
	}{Xmlns: s3XMLNS, Bucket: bucket, Key: key, ETag: etag})
	return nil
}

// PendingUploads lists the keys of multipart uploads neither completed nor
// aborted, as "bucket/key".
func (e *Emulator) PendingUploads() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, u := range e.uploads {
		out = append(out, u.bucket+"/"+u.key)
	}
	slices.Sort(out)
	return out
}
