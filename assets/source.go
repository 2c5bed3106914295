package assets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nodeagent/nodeagent/config"
)

// RetryPolicy says how often one mirror URL is tried on transient failures (5xx,
// 429, S3 throttling, timeouts, connection errors). Zero fields take defaults.
// A hash mismatch or another 4xx is never retried: the next mirror is tried.
type RetryPolicy struct {
	Attempts  int           // per URL; default 4
	BaseDelay time.Duration // first backoff; default 200ms, doubled each time
	MaxDelay  time.Duration // cap on one backoff; default 5s
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 4
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = 200 * time.Millisecond
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = 5 * time.Second
	}
	return p
}

// backoff is the wait after the given failed attempt (1-based): exponential, capped,
// with the upper half jittered so that many nodes booting together do not retry a
// struggling mirror in lockstep.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.MaxDelay
	if attempt-1 < 30 {
		d = min(p.BaseDelay<<(attempt-1), p.MaxDelay)
	}
	half := d / 2
	return half + rand.N(half+1)
}

// transientError marks a failure worth retrying on the same URL.
type transientError struct{ err error }

func (e transientError) Error() string { return e.err.Error() }
func (e transientError) Unwrap() error { return e.err }

func transient(err error) error { return transientError{err} }

func isTransient(err error) bool {
	var t transientError
	return errors.As(err, &t)
}

// transientStatus says which HTTP statuses are the server's passing trouble.
func transientStatus(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}

// Redact returns the URL without user info, query or fragment, fit for logs and
// status: presigned URLs carry their signature in the query.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// open starts reading one URL. Errors name the URL only by src (redacted).
func (i *Installer) open(ctx context.Context, raw, src string) (io.ReadCloser, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: not a URL", src)
	}
	switch u.Scheme {
	case "http", "https":
		return i.openHTTP(ctx, raw, src)
	case "s3":
		return i.openS3(ctx, raw, src)
	case "file":
		// A file URL names a host path, so it is resolved under Root like every
		// other host path (bake --root reads from the image being built).
		f, err := os.Open(i.Root.Path(u.Path))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		return f, nil
	default:
		return nil, fmt.Errorf("%s: unsupported scheme %q", src, u.Scheme)
	}
}

func (i *Installer) openHTTP(ctx context.Context, raw, src string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", src, err)
	}
	c := i.HTTP
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// url.Error would print the full URL, query included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, transient(fmt.Errorf("GET %s: %w", src, err))
	}
	if resp.StatusCode/100 == 2 {
		return sized{resp.Body, resp.ContentLength}, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	err = fmt.Errorf("GET %s: %s", src, resp.Status)
	if transientStatus(resp.StatusCode) {
		return nil, transient(err)
	}
	return nil, err
}

// s3Throttles are S3 error codes that mean "slow down and try again", whatever the
// HTTP status they came with.
var s3Throttles = map[string]bool{
	"SlowDown": true, "Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true,
	"RequestTimeout": true, "InternalError": true, "ServiceUnavailable": true, "TooManyRequests": true,
}

func (i *Installer) openS3(ctx context.Context, raw, src string) (io.ReadCloser, error) {
	if i.S3 == nil {
		return nil, fmt.Errorf("%s: no S3 client (AWS region and credentials are not configured)", src)
	}
	bucket, key, err := config.ParseS3URL(raw)
	if err != nil {
		return nil, err
	}
	out, err := i.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err = fmt.Errorf("s3 GetObject %s: %w", src, err)
		var api interface{ ErrorCode() string }
		if errors.As(err, &api) && s3Throttles[api.ErrorCode()] {
			return nil, transient(err)
		}
		var st interface{ HTTPStatusCode() int }
		if errors.As(err, &st) {
			if transientStatus(st.HTTPStatusCode()) {
				return nil, transient(err)
			}
			return nil, err
		}
		// No HTTP response at all: connection refused, reset, DNS, timeout.
		return nil, transient(err)
	}
	return sized{out.Body, aws.ToInt64(out.ContentLength)}, nil
}

// sized is a download body whose length the server announced (0 or -1 when
// it did not), for progress reports.
type sized struct {
	io.ReadCloser
	n int64
}

func (s sized) Size() int64 { return max(s.n, 0) }
