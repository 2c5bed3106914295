package signer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nodeagent/nodeagent/config"
)

// Presigner makes the identity for one request body; AWSPresigner does it with
// the SDK's STS presign client and the instance's credentials.
type Presigner func(ctx context.Context, bodyHash string) (*Identity, error)

// AWSPresigner presigns sts:GetCallerIdentity with cfg's credentials, with
// the body's hash as a signed header.
func AWSPresigner(cfg aws.Config) Presigner {
	pc := sts.NewPresignClient(sts.NewFromConfig(cfg))
	return func(ctx context.Context, hash string) (*Identity, error) {
		out, err := pc.PresignGetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}, func(po *sts.PresignOptions) {
			po.ClientOptions = append(po.ClientOptions, sts.WithAPIOptions(smithyhttp.AddHeaderValue(HashHeader, hash)))
		})
		if err != nil {
			return nil, fmt.Errorf("presign sts:GetCallerIdentity: %w", err)
		}
		return &Identity{Method: out.Method, URL: out.URL, Headers: out.SignedHeader}, nil
	}
}

// STSEndpoint is the STS endpoint cfg resolves to (scheme://host/path): the
// one a master's signer accepts identities for. It presigns a request with cfg
// (nothing is sent) and keeps the URL without its query.
func STSEndpoint(ctx context.Context, cfg aws.Config) (string, error) {
	id, err := AWSPresigner(cfg)(ctx, BodyHash(nil))
	if err != nil {
		return "", err
	}
	u, err := url.Parse(id.URL)
	if err != nil {
		return "", fmt.Errorf("STS endpoint: %w", err)
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// Client asks the masters' signers for this node's credentials.
type Client struct {
	ClusterName string
	Presign     Presigner
	// Endpoints lists the signers to try, as host:port, in order; the first
	// that answers decides (a refusal is final, a connection error or a 5xx
	// moves on to the next).
	Endpoints func(ctx context.Context) ([]string, error)
	// Timeout of one attempt; default 15 s.
	Timeout time.Duration
}

// Refused is a signer's 4xx: the request was seen and turned down.
type Refused struct {
	Status int
	Reason string
}

func (r *Refused) Error() string {
	return fmt.Sprintf("node signer refused (%d): %s", r.Status, r.Reason)
}

// Get sends req to a signer and returns what it issued. caPEM is the cluster
// CA the signer's serving certificate must chain to.
func (c *Client) Get(ctx context.Context, caPEM []byte, req Request) (*Response, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("node signer: the cluster CA certificate holds no PEM certificate")
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("node signer: encode request: %w", err)
	}
	eps, err := c.Endpoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("node signer: find the masters: %w", err)
	}
	if len(eps) == 0 {
		return nil, errors.New("node signer: no master to ask (none found)")
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: config.SignerName(c.ClusterName), MinVersion: tls.VersionTLS12},
		DialContext:     (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
	}}
	defer hc.CloseIdleConnections()
	var errs []error
	for _, ep := range eps {
		resp, err := c.try(ctx, hc, ep, body)
		var rf *Refused
		if err == nil || errors.As(err, &rf) {
			return resp, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("node signer: no master answered: %w", errors.Join(errs...))
}

func (c *Client) try(ctx context.Context, hc *http.Client, ep string, body []byte) (*Response, error) {
	// Presigned afresh for each attempt: a signer takes a signature once.
	id, err := c.Presign(ctx, BodyHash(body))
	if err != nil {
		return nil, err
	}
	idJSON, err := json.Marshal(id)
	if err != nil {
		return nil, fmt.Errorf("encode identity: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+ep+Path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ep, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set(IdentityHeader, base64.StdEncoding.EncodeToString(idJSON))
	resp, err := hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ep, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: read answer: %w", ep, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb errorBody
		_ = json.Unmarshal(b, &eb)
		if eb.Error == "" {
			eb.Error = resp.Status
		}
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return nil, &Refused{Status: resp.StatusCode, Reason: eb.Error}
		}
		return nil, fmt.Errorf("%s: %s: %s", ep, resp.Status, eb.Error)
	}
	var out Response
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: unreadable answer: %w", ep, err)
	}
	return &out, nil
}

// Endpoints lists the signers: the addresses the gossip name resolves to
// (once this node's daemon keeps /etc/hosts), then the cluster's running
// instances from EC2 (the gossip seeds; those without a signer refuse the
// connection at once), each on config.SignerPort.
func Endpoints(cluster string, seeds func(ctx context.Context) ([]string, error)) func(ctx context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		var out []string
		seen := map[string]bool{}
		add := func(ip string) {
			if !seen[ip] {
				seen[ip] = true
				out = append(out, net.JoinHostPort(ip, strconv.Itoa(config.SignerPort)))
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		addrs, _ := net.DefaultResolver.LookupHost(rctx, config.SignerName(cluster))
		cancel()
		for _, a := range addrs {
			add(a)
		}
		var err error
		if seeds != nil {
			var ips []string
			if ips, err = seeds(ctx); err == nil {
				for _, ip := range ips {
					add(ip)
				}
			}
		}
		if len(out) == 0 && err != nil {
			return nil, err
		}
		return out, nil
	}
}
