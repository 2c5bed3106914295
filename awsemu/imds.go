package awsemu

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	imdsTokenHeader = "X-Aws-Ec2-Metadata-Token"
	imdsTTLHeader   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	imdsMaxTTL      = 21600
)

type imdsToken struct {
	instanceID string
	expires    time.Time
}

// identityDocument mirrors /latest/dynamic/instance-identity/document.
type identityDocument struct {
	AccountID               string    `json:"accountId"`
	Architecture            string    `json:"architecture"`
	AvailabilityZone        string    `json:"availabilityZone"`
	BillingProducts         []string  `json:"billingProducts"`
	DevpayProductCodes      []string  `json:"devpayProductCodes"`
	MarketplaceProductCodes []string  `json:"marketplaceProductCodes"`
	ImageID                 string    `json:"imageId"`
	InstanceID              string    `json:"instanceId"`
	InstanceType            string    `json:"instanceType"`
	KernelID                *string   `json:"kernelId"`
	PendingTime             time.Time `json:"pendingTime"`
	PrivateIP               string    `json:"privateIp"`
	RamdiskID               *string   `json:"ramdiskId"`
	Region                  string    `json:"region"`
	Version                 string    `json:"version"`
}

func (e *Emulator) serveIMDS(w http.ResponseWriter, r *http.Request, instanceID string) {
	action := strings.TrimPrefix(r.URL.Path, "/latest/")
	e.countCall(ServiceIMDS, action)
	log := e.log.With("service", ServiceIMDS, "instance", instanceID, "path", r.URL.Path)
	if ferr, reset := e.injectFault(w, r, ServiceIMDS, action); reset {
		log.Info("fault injected: connection reset")
		return
	} else if ferr != nil {
		log.Info("fault injected", "status", ferr.status)
		http.Error(w, http.StatusText(ferr.status), ferr.status)
		return
	}
	if r.URL.Path == "/latest/api/token" {
		e.mu.Lock()
		drop := e.faults[ServiceIMDS].PutHopLimitExceeded
		e.mu.Unlock()
		if drop && r.Method == http.MethodPut {
			// The answer would die on the way back (its IP TTL is the hop
			// limit): the caller sees nothing until it gives up.
			log.Info("fault injected: token PUT answer dropped (hop limit exceeded)")
			<-r.Context().Done()
			return
		}
		e.imdsToken(w, r, instanceID, log)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	if !e.validToken(r.Header.Get(imdsTokenHeader), instanceID) {
		// IMDSv2 only: a missing, unknown or expired token is refused.
		log.Info("metadata request without a valid token")
		http.Error(w, http.StatusText(http.StatusUnauthorized), http.StatusUnauthorized)
		return
	}
	tree, ok := e.metadataTree(instanceID)
	if !ok {
		http.Error(w, "instance "+instanceID+" is unknown to the emulator", http.StatusNotFound)
		return
	}
	body, ok := lookupMetadata(tree, r.URL.Path)
	if !ok {
		http.Error(w, http.StatusText(http.StatusNotFound), http.StatusNotFound)
		return
	}
	ct := "text/plain"
	if strings.HasSuffix(r.URL.Path, "/instance-identity/document") {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		io.WriteString(w, body)
	}
}

func (e *Emulator) imdsToken(w http.ResponseWriter, r *http.Request, instanceID string, log interface{ Info(string, ...any) }) {
	if r.Method != http.MethodPut {
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	// A token request relayed through a proxy is refused, as the real service does.
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, http.StatusText(http.StatusForbidden), http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(imdsTTLHeader))
	if err != nil || ttl < 1 || ttl > imdsMaxTTL {
		log.Info("token request with a bad TTL", "ttl", r.Header.Get(imdsTTLHeader))
		http.Error(w, http.StatusText(http.StatusBadRequest), http.StatusBadRequest)
		return
	}
	raw := make([]byte, 42)
	if _, err := rand.Read(raw); err != nil {
		http.Error(w, "token: "+err.Error(), http.StatusInternalServerError)
		return
	}
	tok := base64.RawURLEncoding.EncodeToString(raw)
	e.mu.Lock()
	now := e.now()
	for t, v := range e.tokens {
		if now.After(v.expires) {
			delete(e.tokens, t)
		}
	}
	e.tokens[tok] = imdsToken{instanceID: instanceID, expires: now.Add(time.Duration(ttl) * time.Second)}
	e.mu.Unlock()
	w.Header().Set(imdsTTLHeader, strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, tok)
}

func (e *Emulator) validToken(tok, instanceID string) bool {
	if tok == "" {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.tokens[tok]
	return ok && t.instanceID == instanceID && e.now().Before(t.expires)
}

// metadataTree flattens an instance's metadata to path -> value, paths relative
// to /latest/.
func (e *Emulator) metadataTree(instanceID string) (map[string]string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[instanceID]
	if !ok {
		return nil, false
	}
	mac := macFor(in.ID)
	md := map[string]string{
		"ami-id":                      in.ImageID,
		"ami-launch-index":            "0",
		"hostname":                    in.Hostname,
		"instance-action":             "none",
		"instance-id":                 in.ID,
		"instance-life-cycle":         "on-demand",
		"instance-type":               in.Type,
		"local-hostname":              in.Hostname,
		"local-ipv4":                  in.PrivateIP,
		"mac":                         mac,
		"placement/availability-zone": in.AvailabilityZone,
		"placement/region":            e.region,
		"reservation-id":              in.reservation,
		"security-groups":             "default",
		"services/domain":             "amazonaws.com",
		"services/partition":          "aws",
		"block-device-mapping/ami":    "/dev/xvda",
		"block-device-mapping/root":   "/dev/xvda",
		"network/interfaces/macs/" + mac + "/local-ipv4s":            in.PrivateIP,
		"network/interfaces/macs/" + mac + "/local-hostname":         in.Hostname,
		"network/interfaces/macs/" + mac + "/mac":                    mac,
		"network/interfaces/macs/" + mac + "/device-number":          "0",
		"network/interfaces/macs/" + mac + "/vpc-ipv4-cidr-block":    "10.0.0.0/16",
		"network/interfaces/macs/" + mac + "/subnet-ipv4-cidr-block": "10.0.0.0/16",
	}
	e.addCredentialsMetadata(md, in.ID, in.InstanceProfile)
	e.endMetadataLocked(in, md)
	for k, v := range in.Tags {
		// Instance tags in metadata cannot hold '/' in their keys.
		if !strings.Contains(k, "/") {
			md["tags/instance/"+k] = v
		}
	}
	tree := map[string]string{}
	for k, v := range md {
		tree["meta-data/"+k] = v
	}
	doc, _ := json.MarshalIndent(identityDocument{
		AccountID:        DefaultAccountID,
		Architecture:     "x86_64",
		AvailabilityZone: in.AvailabilityZone,
		ImageID:          in.ImageID,
		InstanceID:       in.ID,
		InstanceType:     in.Type,
		PendingTime:      in.launched.Truncate(time.Second),
		PrivateIP:        in.PrivateIP,
		Region:           e.region,
		Version:          "2017-09-30",
	}, "", "  ")
	tree["dynamic/instance-identity/document"] = string(doc)
	if in.UserData != "" {
		tree["user-data"] = in.UserData
	}
	return tree, true
}

// lookupMetadata answers a leaf with its value and a directory with its
// children, one a line, directories ending in '/'.
func lookupMetadata(tree map[string]string, urlPath string) (string, bool) {
	p, ok := strings.CutPrefix(urlPath, "/latest")
	if !ok {
		if urlPath == "/" {
			return "latest", true
		}
		return "", false
	}
	p = strings.Trim(p, "/")
	if v, ok := tree[p]; ok {
		return v, true
	}
	prefix := p + "/"
	if p == "" {
		prefix = ""
	}
	children := map[string]bool{}
	for k := range tree {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if name, _, isDir := strings.Cut(rest, "/"); isDir {
			children[name+"/"] = true
		} else {
			children[name] = true
		}
	}
	if len(children) == 0 {
		return "", false
	}
	names := make([]string, 0, len(children))
	for n := range children {
		if p == "" {
			// /latest/ lists its sections without trailing slashes.
			n = strings.TrimSuffix(n, "/")
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, "\n"), true
}

func macFor(instanceID string) string {
	h := uint32(2166136261)
	for i := 0; i < len(instanceID); i++ {
		h = (h ^ uint32(instanceID[i])) * 16777619
	}
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(h>>24), byte(h>>16), byte(h>>8), byte(h), byte(len(instanceID)))
}
