package awsemu

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Instance-profile credentials, IAM policies per role, and STS.
//
// An instance with an InstanceProfile gets temporary credentials of its own over
// IMDS (meta-data/iam/security-credentials/<role>). Requests signed with them are
// the role's: every action is evaluated against the role's policy document
// (World.Policies), as IAM does — an explicit Deny wins, then an Allow, else the
// action is denied. The world's own key pair stays the account's root: it may
// do anything. sts:GetCallerIdentity needs no permission, as on AWS.

const (
	stsXMLNS   = "https://sts.amazonaws.com/doc/2011-06-15/"
	stsVersion = "2011-06-15"
	// instanceCredentialsTTL is how long instance-profile credentials live.
	instanceCredentialsTTL = 6 * time.Hour
)

// ServiceSTS is the Security Token Service (GetCallerIdentity only).
const ServiceSTS = "sts"

// credential is one set of temporary instance-profile credentials.
type credential struct {
	accessKeyID, secret, token string
	instanceID, role           string
	expires                    time.Time
}

// principal is who signed a request: nil for the account's root key.
type principal = credential

// policyDoc is an IAM policy document: statements with Effect, Action and
// Resource. What the emulator cannot evaluate (NotAction, NotResource,
// Condition, Principal) is refused when the policy is loaded, so a policy never
// means more here than it would on AWS.
type policyDoc struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid      string      `json:"Sid,omitempty"`
	Effect   string      `json:"Effect"`
	Action   stringOrSet `json:"Action"`
	Resource stringOrSet `json:"Resource"`
}

type stringOrSet []string

func (s *stringOrSet) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("want a string or a list of strings")
	}
	*s = many
	return nil
}

// parsePolicy decodes and checks a policy document.
func parsePolicy(doc string) (*policyDoc, error) {
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	var p policyDoc
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w (supported: Version, Statement[].Sid/Effect/Action/Resource)", err)
	}
	if p.Version != "2012-10-17" {
		return nil, fmt.Errorf("policy: Version %q, want 2012-10-17", p.Version)
	}
	for i, st := range p.Statement {
		if st.Effect != "Allow" && st.Effect != "Deny" {
			return nil, fmt.Errorf("policy: statement %d: Effect %q, want Allow or Deny", i, st.Effect)
		}
		if len(st.Action) == 0 || len(st.Resource) == 0 {
			return nil, fmt.Errorf("policy: statement %d needs Action and Resource", i)
		}
		for _, a := range st.Action {
			if a != "*" && !strings.Contains(a, ":") {
				return nil, fmt.Errorf("policy: statement %d: action %q is not service:Action", i, a)
			}
		}
	}
	return &p, nil
}

// allows evaluates one action on one resource.
func (p *policyDoc) allows(action, resource string) (allowed bool, why string) {
	allowed = false
	for _, st := range p.Statement {
		if !iamMatch(st.Action, action, true) || !iamMatch(st.Resource, resource, false) {
			continue
		}
		if st.Effect == "Deny" {
			return false, "explicit deny in statement " + st.Sid
		}
		allowed = true
	}
	if !allowed {
		return false, "no statement allows it"
	}
	return true, ""
}

func iamMatch(patterns []string, s string, fold bool) bool {
	for _, p := range patterns {
		if fold {
			p, s = strings.ToLower(p), strings.ToLower(s)
		}
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// globMatch is IAM's wildcard match: * any run of characters (also '/'), ? one.
func globMatch(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if globMatch(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && globMatch(pattern[1:], s[1:])
	default:
		return s != "" && s[0] == pattern[0] && globMatch(pattern[1:], s[1:])
	}
}

// iamAction and iamResource name a request as a policy sees it.
func iamAction(req *request) string {
	switch req.service {
	case ServiceS3:
		switch req.action {
		case "HeadObject":
			return "s3:GetObject"
		case "ListObjects", "ListObjectsV2", "HeadBucket":
			return "s3:ListBucket"
		case "ListBuckets":
			return "s3:ListAllMyBuckets"
		case "DeleteObjects":
			return "s3:DeleteObject"
		case "CopyObject":
			return "s3:PutObject"
		}
		return "s3:" + req.action
	case ServiceAutoScaling:
		return "autoscaling:" + req.action
	}
	return req.service + ":" + req.action
}

func iamResource(req *request) string {
	if req.service != ServiceS3 {
		return "*"
	}
	bucket, key := splitS3Path(req.r.URL.Path)
	if key == "" {
		return "arn:aws:s3:::" + bucket
	}
	return "arn:aws:s3:::" + bucket + "/" + key
}

// authorize applies the signing role's policy; the root key may do anything.
func (e *Emulator) authorize(req *request) *apiError {
	p := req.principal
	if p == nil || (req.service == ServiceSTS && req.action == "GetCallerIdentity") {
		return nil
	}
	e.mu.Lock()
	pol := e.policies[p.role]
	e.mu.Unlock()
	action, resource := iamAction(req), iamResource(req)
	why := "no policy is attached to role " + p.role
	if pol != nil {
		var ok bool
		if ok, why = pol.allows(action, resource); ok {
			return nil
		}
	}
	e.log.Info("IAM denied", "role", p.role, "instance", p.instanceID, "action", action, "resource", resource, "why", why)
	user := fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", DefaultAccountID, p.role, p.instanceID)
	switch req.service {
	case ServiceEC2:
		return errorf(403, "UnauthorizedOperation", "You are not authorized to perform this operation. User: %s is not authorized to perform: %s", user, action)
	case ServiceS3:
		return errorf(403, "AccessDenied", "Access Denied")
	default:
		return errorf(403, "AccessDenied", "User: %s is not authorized to perform: %s on resource: %s", user, action, resource)
	}
}

// lookupKey finds the secret of an access key: the root pair or live
// instance-profile credentials.
func (e *Emulator) lookupKey(akid string) (secret string, p *principal, ok bool) {
	if akid == e.accessKeyID {
		return e.secretKey, nil, true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.creds[akid]
	if !ok {
		return "", nil, false
	}
	return c.secret, c, true
}

// instanceCredentialsLocked returns (making or renewing) an instance's
// credentials; e.mu is held.
func (e *Emulator) instanceCredentialsLocked(instanceID string) (*credential, error) {
	in, ok := e.instances[instanceID]
	if !ok || in.InstanceProfile == "" {
		return nil, errors.New("no instance profile")
	}
	now := e.now()
	for _, c := range e.creds {
		if c.instanceID == instanceID && c.role == in.InstanceProfile && now.Add(time.Hour).Before(c.expires) {
			return c, nil
		}
	}
	c := &credential{
		accessKeyID: "ASIA" + strings.ToUpper(randomHex(8)),
		secret:      randomHex(20),
		token:       randomHex(32),
		instanceID:  instanceID,
		role:        in.InstanceProfile,
		expires:     now.Add(instanceCredentialsTTL).UTC().Truncate(time.Second),
	}
	e.creds[c.accessKeyID] = c
	return c, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error()) // the kernel's RNG does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// imdsCredentialsDoc is what IMDS serves at iam/security-credentials/<role>.
type imdsCredentialsDoc struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

// addCredentialsMetadata adds the instance profile's entries to a metadata
// tree; e.mu is held.
func (e *Emulator) addCredentialsMetadata(md map[string]string, instanceID, role string) {
	if role == "" {
		return
	}
	md["iam/info"] = fmt.Sprintf(`{"Code":"Success","InstanceProfileArn":"arn:aws:iam::%s:instance-profile/%s"}`, DefaultAccountID, role)
	c, err := e.instanceCredentialsLocked(instanceID)
	if err != nil {
		return
	}
	doc, _ := json.Marshal(imdsCredentialsDoc{
		Code: "Success", LastUpdated: e.now().UTC().Format(time.RFC3339), Type: "AWS-HMAC",
		AccessKeyID: c.accessKeyID, SecretAccessKey: c.secret, Token: c.token, Expiration: c.expires.Format(time.RFC3339),
	})
	md["iam/security-credentials/"+role] = string(doc)
}

type getCallerIdentityResponse struct {
	XMLName xml.Name `xml:"GetCallerIdentityResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		Arn     string `xml:"Arn"`
		UserID  string `xml:"UserId"`
		Account string `xml:"Account"`
	} `xml:"GetCallerIdentityResult"`
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

// serveSTS answers GetCallerIdentity with the signer's ARN: an instance
// profile's is arn:aws:sts::<account>:assumed-role/<role>/<instance id>.
func (e *Emulator) serveSTS(w http.ResponseWriter, req *request) *apiError {
	if v := req.form.Get("Version"); v != stsVersion {
		return errorf(400, "InvalidParameterValue", "Version %q is not supported; this endpoint speaks %s", v, stsVersion)
	}
	if req.action != "GetCallerIdentity" {
		return errorf(400, "InvalidAction", "Could not find operation %s for version %s", req.action, stsVersion)
	}
	var out getCallerIdentityResponse
	out.Xmlns, out.RequestID = stsXMLNS, req.id
	out.Result.Account = DefaultAccountID
	if p := req.principal; p != nil {
		out.Result.Arn = fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", DefaultAccountID, p.role, p.instanceID)
		out.Result.UserID = "AROA" + strings.ToUpper(hex.EncodeToString([]byte(p.role)))[:min(16, 2*len(p.role))] + ":" + p.instanceID
	} else {
		out.Result.Arn = fmt.Sprintf("arn:aws:iam::%s:user/awsemu", DefaultAccountID)
		out.Result.UserID = "AIDAAWSEMUROOTUSER01"
	}
	writeXML(w, req, http.StatusOK, out)
	return nil
}

// SetPolicy attaches (replaces) a role's policy document; "" removes it.
func (e *Emulator) SetPolicy(role, doc string) error {
	var p *policyDoc
	if doc != "" {
		var err error
		if p, err = parsePolicy(doc); err != nil {
			return fmt.Errorf("role %s: %w", role, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if p == nil {
		delete(e.policies, role)
	} else {
		e.policies[role] = p
	}
	return nil
}

// SetClock replaces the emulator's clock (nil: the real one), as a test ages
// presigned URLs, tokens and credentials.
func (e *Emulator) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	e.clock.Store(&now)
}

func (e *Emulator) now() time.Time { return (*e.clock.Load())() }
