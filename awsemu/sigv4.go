package awsemu

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	sigV4Algorithm  = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	maxClockSkew    = 15 * time.Minute
)

// sigV4 is what a request claims about its signature, from the Authorization
// header or, for a presigned URL, the query string.
type sigV4 struct {
	accessKeyID   string
	scopeDate     string
	region        string
	service       string
	signedHeaders []string
	signature     string
	presigned     bool
}

func (s sigV4) scope() string {
	return s.scopeDate + "/" + s.region + "/" + s.service + "/aws4_request"
}

// authFailure is a signature problem; the caller renders it in the service's own
// error format (AuthFailure for EC2, SignatureDoesNotMatch for S3, ...).
type authFailure struct {
	kind    authKind
	message string
}

type authKind int

const (
	authMissing authKind = iota
	authUnknownKey
	authBadSignature
	authSkewed
	authMalformed
	authPayloadMismatch
)

func (a *authFailure) Error() string { return a.message }

// parseSigV4 reads the signature claim of a request; ok is false for an
// unsigned request.
func parseSigV4(r *http.Request) (s sigV4, ok bool, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		s, err = parseAuthorizationHeader(h)
		return s, true, err
	}
	q := r.URL.Query()
	if q.Get("X-Amz-Algorithm") == "" && q.Get("X-Amz-Signature") == "" {
		return sigV4{}, false, nil
	}
	if q.Get("X-Amz-Algorithm") != sigV4Algorithm {
		return sigV4{}, true, fmt.Errorf("unsupported X-Amz-Algorithm %q", q.Get("X-Amz-Algorithm"))
	}
	if err := s.setCredential(q.Get("X-Amz-Credential")); err != nil {
		return sigV4{}, true, err
	}
	s.signedHeaders = strings.Split(q.Get("X-Amz-SignedHeaders"), ";")
	s.signature = q.Get("X-Amz-Signature")
	s.presigned = true
	return s, true, nil
}

func parseAuthorizationHeader(h string) (sigV4, error) {
	var s sigV4
	alg, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if alg != sigV4Algorithm {
		return s, fmt.Errorf("unsupported authorization algorithm %q", alg)
	}
	for _, part := range strings.Split(rest, ",") {
		k, v, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found {
			return s, fmt.Errorf("malformed authorization component %q", part)
		}
		switch k {
		case "Credential":
			if err := s.setCredential(v); err != nil {
				return s, err
			}
		case "SignedHeaders":
			s.signedHeaders = strings.Split(v, ";")
		case "Signature":
			s.signature = v
		default:
			return s, fmt.Errorf("unknown authorization component %q", k)
		}
	}
	if s.accessKeyID == "" || len(s.signedHeaders) == 0 || s.signature == "" {
		return s, fmt.Errorf("authorization header lacks Credential, SignedHeaders or Signature")
	}
	return s, nil
}

func (s *sigV4) setCredential(v string) error {
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" {
		return fmt.Errorf("malformed credential %q: want AKID/date/region/service/aws4_request", v)
	}
	s.accessKeyID, s.scopeDate, s.region, s.service = parts[0], parts[1], parts[2], parts[3]
	return nil
}

// verify checks a request's signature against the emulator's credentials. body
// is the whole request body, already read.
func (e *Emulator) verify(r *http.Request, s sigV4, body []byte) (*principal, *authFailure) {
	secret, p, ok := e.lookupKey(s.accessKeyID)
	if !ok {
		return nil, &authFailure{authUnknownKey, "The AWS Access Key Id you provided does not exist in our records."}
	}
	if p != nil {
		// Temporary credentials come with their session token, signed along.
		tok := r.Header.Get("X-Amz-Security-Token")
		if s.presigned {
			tok = r.URL.Query().Get("X-Amz-Security-Token")
		}
		if tok != p.token {
			return nil, &authFailure{authUnknownKey, "The security token included in the request is invalid."}
		}
		if e.now().After(p.expires) {
			return nil, &authFailure{authSkewed, "The security token included in the request is expired"}
		}
	}
	if s.region != e.region {
		return nil, &authFailure{authMalformed, fmt.Sprintf("Credential should be scoped to a valid region, not '%s'; expecting '%s'.", s.region, e.region)}
	}
	q := r.URL.Query()
	dateStr := r.Header.Get("X-Amz-Date")
	if s.presigned {
		dateStr = q.Get("X-Amz-Date")
	}
	if dateStr == "" {
		dateStr = r.Header.Get("Date")
	}
	t, err := time.Parse(amzDateFormat, dateStr)
	if err != nil {
		return nil, &authFailure{authMalformed, fmt.Sprintf("X-Amz-Date %q is not of the form %s", dateStr, amzDateFormat)}
	}
	if t.Format("20060102") != s.scopeDate {
		return nil, &authFailure{authMalformed, fmt.Sprintf("Credential date %s does not match X-Amz-Date %s", s.scopeDate, dateStr)}
	}
	now := e.now()
	if s.presigned {
		expires := q.Get("X-Amz-Expires")
		if expires == "" && s.service == ServiceSTS {
			// STS takes a presigned request without X-Amz-Expires for 15
			// minutes (the SDK's PresignGetCallerIdentity sets none).
			expires = "900"
		}
		exp, err := strconv.Atoi(expires)
		if err != nil || exp <= 0 || exp > 7*24*3600 {
			return nil, &authFailure{authMalformed, "X-Amz-Expires must be a number of seconds up to one week"}
		}
		if now.After(t.Add(time.Duration(exp) * time.Second)) {
			return nil, &authFailure{authSkewed, "Request has expired"}
		}
	} else if d := now.Sub(t); d > maxClockSkew || d < -maxClockSkew {
		return nil, &authFailure{authSkewed, fmt.Sprintf("Request timestamp %s differs from the server time %s by more than %s", dateStr, now.UTC().Format(amzDateFormat), maxClockSkew)}
	}

	payloadHash := r.Header.Get("X-Amz-Content-Sha256")
	switch {
	case s.presigned && s.service != ServiceS3:
		// Other services' presigned requests sign the (empty) body's hash.
		sum := sha256.Sum256(body)
		payloadHash = hex.EncodeToString(sum[:])
	case s.presigned:
		payloadHash = unsignedPayload
		if v := q.Get("X-Amz-Content-Sha256"); v != "" {
			payloadHash = v
		}
	case payloadHash == "":
		sum := sha256.Sum256(body)
		payloadHash = hex.EncodeToString(sum[:])
	case payloadHash == unsignedPayload || strings.HasPrefix(payloadHash, "STREAMING-"):
		// The body is not covered by the signature (chunk signatures, if any, are not checked).
	default:
		sum := sha256.Sum256(body)
		if !strings.EqualFold(payloadHash, hex.EncodeToString(sum[:])) {
			return nil, &authFailure{authPayloadMismatch, "The provided 'x-amz-content-sha256' header does not match what was computed."}
		}
	}

	canonical, err := canonicalRequest(r, s, payloadHash)
	if err != nil {
		return nil, &authFailure{authMalformed, err.Error()}
	}
	crHash := sha256.Sum256([]byte(canonical))
	stringToSign := sigV4Algorithm + "\n" + dateStr + "\n" + s.scope() + "\n" + hex.EncodeToString(crHash[:])
	key := signingKey(secret, s.scopeDate, s.region, s.service)
	want := hex.EncodeToString(hmacSHA256(key, []byte(stringToSign)))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(s.signature))) {
		return nil, &authFailure{authBadSignature, "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."}
	}
	return p, nil
}

func canonicalRequest(r *http.Request, s sigV4, payloadHash string) (string, error) {
	uri := r.URL.EscapedPath()
	if uri == "" {
		uri = "/"
	}
	// S3 signs the path as sent; every other service signs it escaped once more.
	if s.service != ServiceS3 {
		uri = escapeURI(uri, false)
	}

	q := r.URL.Query()
	if s.presigned {
		q.Del("X-Amz-Signature")
	}
	type kv struct{ k, v string }
	var params []kv
	for k, vs := range q {
		for _, v := range vs {
			params = append(params, kv{escapeURI(k, true), escapeURI(v, true)})
		}
	}
	sort.Slice(params, func(i, j int) bool {
		if params[i].k != params[j].k {
			return params[i].k < params[j].k
		}
		return params[i].v < params[j].v
	})
	var query strings.Builder
	for i, p := range params {
		if i > 0 {
			query.WriteByte('&')
		}
		query.WriteString(p.k + "=" + p.v)
	}

	var headers strings.Builder
	for _, name := range s.signedHeaders {
		if name != strings.ToLower(name) {
			return "", fmt.Errorf("signed header %q is not lower case", name)
		}
		var values []string
		switch name {
		case "host":
			values = []string{r.Host}
		case "content-length":
			values = r.Header.Values("Content-Length")
			if len(values) == 0 && r.ContentLength > 0 {
				values = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			values = r.Header.Values(name)
		}
		headers.WriteString(name + ":")
		for i, v := range values {
			if i > 0 {
				headers.WriteByte(',')
			}
			headers.WriteString(collapseSpaces(v))
		}
		headers.WriteByte('\n')
	}
	return strings.Join([]string{
		r.Method, uri, query.String(), headers.String(), strings.Join(s.signedHeaders, ";"), payloadHash,
	}, "\n"), nil
}

// escapeURI is SigV4's URI encoding: everything but unreserved characters is
// percent-encoded, '/' only when encodeSlash.
func escapeURI(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') ||
			c == '-' || c == '.' || c == '_' || c == '~' || (c == '/' && !encodeSlash) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// collapseSpaces trims a header value and squeezes runs of spaces to one, as
// SigV4 canonical headers require.
func collapseSpaces(v string) string {
	v = strings.Trim(v, " ")
	var b strings.Builder
	prevSpace := false
	for i := 0; i < len(v); i++ {
		if v[i] == ' ' {
			if prevSpace {
				continue
			}
			prevSpace = true
		} else {
			prevSpace = false
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

func hmacSHA256(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}
