package signer

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/lazyre"
	"github.com/nodeagent/nodeagent/pki"
)

// CASource yields the cluster CA (certificate and key, PEM); pki.CASource.
type CASource interface {
	Load(ctx context.Context) (certPEM, keyPEM []byte, err error)
}

// DescribeInstancesAPI is the one EC2 call the signer makes.
type DescribeInstancesAPI interface {
	DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// ServerOptions configure a master's signer.
type ServerOptions struct {
	ClusterName string
	CA          CASource
	EC2         DescribeInstancesAPI
	// STSEndpoint is the STS endpoint (scheme://host/path) presigned requests
	// must name; STSEndpoint(ctx, cfg) tells it from the SDK's configuration.
	// The signer never forwards a request anywhere else.
	STSEndpoint string
	// HTTP calls STS; default a client with a 10 s timeout.
	HTTP *http.Client
	// Validity of issued certificates; default DefaultValidity.
	Validity time.Duration
	Log      *slog.Logger
	Now      func() time.Time
}

// Server issues node credentials over HTTPS.
type Server struct {
	o   ServerOptions
	sts *url.URL

	mu   sync.Mutex
	seen map[string]time.Time // presigned signatures already used -> forget after
	cert *tls.Certificate
}

// NewServer checks the options.
func NewServer(o ServerOptions) (*Server, error) {
	if o.ClusterName == "" || o.CA == nil || o.EC2 == nil {
		return nil, errors.New("signer: cluster name, CA and EC2 are required")
	}
	u, err := url.Parse(o.STSEndpoint)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("signer: STS endpoint %q is not a URL", o.STSEndpoint)
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Server{o: o, sts: u, seen: map[string]time.Time{}}, nil
}

// TLSConfig serves a certificate for config.SignerName issued from the
// cluster CA, renewed when a third of its life is left.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		ctx := hi.Context()
		s.mu.Lock()
		c := s.cert
		s.mu.Unlock()
		// The serving certificate is judged by the clients' clocks: real time.
		now := time.Now()
		if c != nil && c.Leaf != nil && now.Before(c.Leaf.NotAfter.Add(-c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)/3)) {
			return c, nil
		}
		caCert, caKey, err := s.o.CA.Load(ctx)
		if err != nil {
			return nil, fmt.Errorf("signer: load CA: %w", err)
		}
		nc, err := pki.ServingCert(caCert, caKey, config.SignerName(s.o.ClusterName), []string{config.SignerName(s.o.ClusterName)}, now, 30*24*time.Hour)
		if err != nil {
			return nil, fmt.Errorf("signer: serving certificate: %w", err)
		}
		s.mu.Lock()
		s.cert = &nc
		s.mu.Unlock()
		return &nc, nil
	}}
}

// Serve serves HTTPS on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("POST "+Path, s)
	srv := &http.Server{Handler: mux, TLSConfig: s.TLSConfig(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.o.Log.Handler(), slog.LevelInfo)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("signer: serve: %w", err)
	}
	return nil
}

// refusal is a request the signer turns down: status 4xx and why.
type refusal struct {
	status int
	reason string
}

func (r *refusal) Error() string { return r.reason }

func refuse(status int, format string, args ...any) *refusal {
	return &refusal{status: status, reason: fmt.Sprintf(format, args...)}
}

// ServeHTTP handles one credentials request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := s.o.Log.With("remote", r.RemoteAddr)
	resp, instanceID, err := s.handle(r)
	if err != nil {
		var rf *refusal
		status := http.StatusInternalServerError
		if errors.As(err, &rf) {
			status = rf.status
			log.Warn("node credentials refused", "reason", rf.reason, "instance", instanceID, "status", status)
		} else {
			log.Error("node credentials failed", "err", err, "instance", instanceID)
		}
		writeJSON(w, status, errorBody{Error: err.Error()})
		return
	}
	log.Info("issued node credentials", "instance", instanceID, "notAfter", resp.NotAfter.UTC().Format(time.RFC3339))
	writeJSON(w, http.StatusOK, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// instanceSession is an instance profile's session name: the instance ID
// (hexadecimal on EC2; the tests' IDs use more letters).
var instanceSession = lazyre.New(`^i-[0-9a-z]{8,17}$`)

func (s *Server) handle(r *http.Request) (*Response, string, error) {
	ctx := r.Context()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, "", refuse(400, "read request: %v", err)
	}
	if len(body) > maxBody {
		return nil, "", refuse(413, "request body over %d bytes", maxBody)
	}
	var req Request
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, "", refuse(400, "request body: %v", err)
	}
	kubeletPub, err := pki.ParsePublicKey([]byte(req.KubeletPublicKey))
	if err != nil {
		return nil, "", refuse(400, "kubeletPublicKey: %v", err)
	}
	proxyPub, err := pki.ParsePublicKey([]byte(req.KubeProxyPublicKey))
	if err != nil {
		return nil, "", refuse(400, "kubeProxyPublicKey: %v", err)
	}

	id, err := s.checkPresigned(r.Header.Get(IdentityHeader), body)
	if err != nil {
		return nil, "", err
	}
	arn, err := s.callerIdentity(ctx, id)
	if err != nil {
		return nil, "", err
	}
	// arn:aws:sts::<account>:assumed-role/<role>/<session>; an instance
	// profile's session is the instance ID.
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[2] != "sts" {
		return nil, "", refuse(403, "credentials of %s are not an instance profile's (no assumed role)", arn)
	}
	res := strings.Split(parts[5], "/")
	if len(res) != 3 || res[0] != "assumed-role" || !instanceSession().MatchString(res[2]) {
		return nil, "", refuse(403, "credentials of %s are not an instance profile's (the session is not an instance ID)", arn)
	}
	instanceID := res[2]

	out, err := s.o.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{instanceID}})
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && strings.HasPrefix(ae.ErrorCode(), "InvalidInstanceID") {
			return nil, instanceID, refuse(403, "instance %s does not exist in this account", instanceID)
		}
		return nil, instanceID, fmt.Errorf("describe instance %s: %w", instanceID, err)
	}
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		return nil, instanceID, refuse(403, "instance %s does not exist in this account", instanceID)
	}
	inst := out.Reservations[0].Instances[0]
	if inst.State == nil || inst.State.Name != "running" {
		state := "unknown"
		if inst.State != nil {
			state = string(inst.State.Name)
		}
		return nil, instanceID, refuse(403, "instance %s is %s, not running", instanceID, state)
	}
	var cluster string
	for _, t := range inst.Tags {
		if aws.ToString(t.Key) == "KubernetesCluster" {
			cluster = aws.ToString(t.Value)
		}
	}
	if cluster != s.o.ClusterName {
		return nil, instanceID, refuse(403, "instance %s belongs to cluster %q, not %q", instanceID, cluster, s.o.ClusterName)
	}
	dns, ip := aws.ToString(inst.PrivateDnsName), aws.ToString(inst.PrivateIpAddress)
	if req.NodeName != dns {
		return nil, instanceID, refuse(403, "instance %s is node %s, not %q", instanceID, dns, req.NodeName)
	}
	if req.NodeIP != ip {
		return nil, instanceID, refuse(403, "instance %s has IP %s, not %q", instanceID, ip, req.NodeIP)
	}

	caCert, caKey, err := s.o.CA.Load(ctx)
	if err != nil {
		return nil, instanceID, fmt.Errorf("load CA: %w", err)
	}
	now := s.o.Now()
	nodeIP := net.ParseIP(ip)
	kubelet, err := pki.SignClientCert(caCert, caKey, kubeletPub, pki.ClientCertSpec{
		CN: KubeletCN(dns), Orgs: []string{KubeletOrg}, DNS: []string{dns}, IPs: []net.IP{nodeIP},
	}, now, s.o.Validity)
	if err != nil {
		return nil, instanceID, err
	}
	proxy, err := pki.SignClientCert(caCert, caKey, proxyPub, pki.ClientCertSpec{CN: KubeProxyCN}, now, s.o.Validity)
	if err != nil {
		return nil, instanceID, err
	}
	notAfter, err := pki.CertNotAfter(kubelet)
	if err != nil {
		return nil, instanceID, err
	}
	return &Response{CACert: string(caCert), KubeletCert: string(kubelet), KubeProxyCert: string(proxy), NotAfter: notAfter}, instanceID, nil
}

// checkPresigned decodes the identity and checks it before anything is sent
// to STS: the signer's own STS endpoint, GetCallerIdentity only, the body's
// hash signed in, and a signature not used before.
func (s *Server) checkPresigned(header string, body []byte) (*Identity, error) {
	if header == "" {
		return nil, refuse(401, "no %s header: the request carries no AWS identity", IdentityHeader)
	}
	raw, err := base64.StdEncoding.DecodeString(header)
	if err != nil {
		return nil, refuse(400, "%s is not base64: %v", IdentityHeader, err)
	}
	var id Identity
	if err := json.Unmarshal(raw, &id); err != nil {
		return nil, refuse(400, "%s is not an identity: %v", IdentityHeader, err)
	}
	u, err := url.Parse(id.URL)
	if err != nil {
		return nil, refuse(400, "identity URL: %v", err)
	}
	path := u.Path
	if path == "" {
		path = "/"
	}
	wantPath := s.sts.Path
	if wantPath == "" {
		wantPath = "/"
	}
	if u.Scheme != s.sts.Scheme || u.Host != s.sts.Host || path != wantPath {
		return nil, refuse(403, "identity names %s://%s%s, not this cluster's STS endpoint", u.Scheme, u.Host, u.Path)
	}
	if id.Method != http.MethodGet {
		return nil, refuse(403, "identity method %q, want GET", id.Method)
	}
	q := u.Query()
	if a := q["Action"]; len(a) != 1 || a[0] != "GetCallerIdentity" {
		return nil, refuse(403, "identity is not a GetCallerIdentity request")
	}
	signed := strings.Split(q.Get("X-Amz-SignedHeaders"), ";")
	if !slices.Contains(signed, strings.ToLower(HashHeader)) {
		return nil, refuse(403, "identity does not sign %s: it is not bound to this request", HashHeader)
	}
	if got, want := id.Headers.Get(HashHeader), BodyHash(body); got != want {
		return nil, refuse(403, "request body changed after signing (%s %.12s…, body %.12s…)", HashHeader, got, want)
	}
	sig := q.Get("X-Amz-Signature")
	if sig == "" {
		return nil, refuse(403, "identity is not presigned (no X-Amz-Signature)")
	}
	// A signature is good once: a captured request cannot be replayed while
	// STS would still accept it. Kept until well past any presign expiry.
	now := s.o.Now()
	keep := 15 * time.Minute
	if exp, err := strconv.Atoi(q.Get("X-Amz-Expires")); err == nil && exp > 0 {
		keep = time.Duration(exp)*time.Second + maxSkew
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, until := range s.seen {
		if now.After(until) {
			delete(s.seen, k)
		}
	}
	if _, dup := s.seen[sig]; dup {
		return nil, refuse(403, "identity replayed: this presigned request was used before")
	}
	s.seen[sig] = now.Add(keep + maxSkew)
	return &id, nil
}

// maxSkew is SigV4's tolerated clock skew.
const maxSkew = 15 * time.Minute

type stsIdentity struct {
	Arn string `xml:"GetCallerIdentityResult>Arn"`
}

type stsError struct {
	Code    string `xml:"Error>Code"`
	Message string `xml:"Error>Message"`
}

// callerIdentity forwards the presigned request to STS and returns the ARN.
func (s *Server) callerIdentity(ctx context.Context, id *Identity) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, id.URL, nil)
	if err != nil {
		return "", refuse(400, "identity URL: %v", err)
	}
	for k, vs := range id.Headers {
		if strings.EqualFold(k, "Host") {
			continue
		}
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := s.o.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("STS: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("STS: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e stsError
		_ = xml.Unmarshal(b, &e)
		if resp.StatusCode >= 500 {
			return "", fmt.Errorf("STS: %s %s: %s", resp.Status, e.Code, e.Message)
		}
		return "", refuse(403, "STS refused the identity: %s: %s", e.Code, e.Message)
	}
	var out stsIdentity
	if err := xml.Unmarshal(b, &out); err != nil || out.Arn == "" {
		return "", fmt.Errorf("STS: unreadable GetCallerIdentity answer: %v", err)
	}
	return out.Arn, nil
}
