package awsemu

import (
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// maxBody bounds what one request may upload; the emulator keeps objects in memory.
const maxBody = 1 << 30

// apiError is an error answer in service-neutral form; each service renders it
// in its own wire format.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// request is one decoded call to EC2, S3 or Auto Scaling.
type request struct {
	service string
	action  string
	id      string
	form    url.Values // query-protocol parameters (EC2, Auto Scaling)
	body    []byte
	r       *http.Request
	// principal is who signed the request: nil for the account's root key.
	principal *principal
}

func (e *Emulator) serveAWS(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	sig, signed, sigErr := parseSigV4(r)
	req := &request{body: body, r: r, id: e.requestID()}
	req.service = sig.service
	if !signed || sigErr != nil {
		req.service = guessService(r, body)
	}
	switch req.service {
	case ServiceEC2, ServiceAutoScaling, ServiceSTS:
		form, err := url.ParseQuery(r.URL.RawQuery)
		if err == nil && len(body) > 0 {
			var bodyForm url.Values
			if bodyForm, err = url.ParseQuery(string(body)); err == nil {
				for k, v := range bodyForm {
					form[k] = append(form[k], v...)
				}
			}
		}
		req.form = form
		req.action = form.Get("Action")
		if err != nil {
			e.countCall(req.service, req.action)
			e.writeError(w, req, errorf(400, "MalformedQueryString", "cannot parse parameters: %v", err))
			return
		}
	case ServiceS3:
		req.action = s3Action(r)
		if req.action == "GetObject" {
			bucket, _ := splitS3Path(r.URL.Path)
			e.mu.Lock()
			e.objectReads[bucket]++
			e.mu.Unlock()
		}
	default:
		e.countCall(req.service, "")
		w.Header().Set("Content-Type", "text/plain")
		http.Error(w, fmt.Sprintf("awsemu: service %q is not emulated (ec2, s3, autoscaling, sts are)", req.service), http.StatusBadRequest)
		return
	}
	e.countCall(req.service, req.action)
	log := e.log.With("service", req.service, "action", req.action, "request_id", req.id)

	var af *authFailure
	switch {
	case !signed:
		af = &authFailure{authMissing, "Request is missing Authentication Token"}
	case sigErr != nil:
		af = &authFailure{authMalformed, sigErr.Error()}
	default:
		req.principal, af = e.verify(r, sig, body)
	}
	if af != nil {
		log.Warn("request rejected", "reason", af.message)
		e.writeError(w, req, authError(req.service, af))
		return
	}
	if ferr, reset := e.injectFault(w, r, req.service, req.action); reset {
		log.Info("fault injected: connection reset")
		return
	} else if ferr != nil {
		log.Info("fault injected", "code", ferr.code)
		e.writeError(w, req, ferr)
		return
	}
	if derr := e.denied(req); derr != nil {
		log.Info("action denied", "code", derr.code)
		e.writeError(w, req, derr)
		return
	}
	if derr := e.authorize(req); derr != nil {
		e.writeError(w, req, derr)
		return
	}
	lose := e.loseAnswer(req.service, req.action)
	if lose {
		// Served for real, answered into the void, then the connection reset.
		w = &lostAnswer{real: w, header: http.Header{}}
	}
	var aerr *apiError
	switch req.service {
	case ServiceEC2:
		aerr = e.serveEC2(w, req)
	case ServiceAutoScaling:
		aerr = e.serveAutoScaling(w, req)
	case ServiceS3:
		aerr = e.serveS3(w, req)
	case ServiceSTS:
		aerr = e.serveSTS(w, req)
	}
	if aerr != nil {
		log.Info("request failed", "code", aerr.code, "message", aerr.message)
		e.writeError(w, req, aerr)
	}
	if lose {
		log.Info("fault injected: answer lost after the action, connection reset", "status", w.(*lostAnswer).status)
		resetConn(w.(*lostAnswer).real)
		return
	}
	if aerr == nil {
		log.Debug("request served")
	}
}

// loseAnswer decides whether the service's LoseAnswerRate applies to this
// request (counted against the faults' Limit like the others).
func (e *Emulator) loseAnswer(service, action string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.faults[service]
	if f.LoseAnswerRate <= 0 || !f.matches(action) || (f.Limit > 0 && e.faulted[service] >= f.Limit) {
		return false
	}
	if e.rng.Float64() >= f.LoseAnswerRate {
		return false
	}
	e.faulted[service]++
	return true
}

// lostAnswer is the answer nobody receives: written, then dropped.
type lostAnswer struct {
	real   http.ResponseWriter
	header http.Header
	status int
}

func (l *lostAnswer) Header() http.Header { return l.header }
func (l *lostAnswer) WriteHeader(code int) {
	if l.status == 0 {
		l.status = code
	}
}
func (l *lostAnswer) Write(b []byte) (int, error) {
	l.WriteHeader(http.StatusOK)
	return len(b), nil
}

// guessService routes a request that carries no usable credential scope, so it
// is refused in the right service's error format.
func guessService(r *http.Request, body []byte) string {
	if r.Method == http.MethodPost && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		if form, err := url.ParseQuery(string(body)); err == nil && form.Get("Action") != "" {
			if form.Get("Version") == "2011-01-01" {
				return ServiceAutoScaling
			}
			return ServiceEC2
		}
	}
	if q := r.URL.Query(); q.Get("Action") != "" {
		if q.Get("Version") == "2011-01-01" {
			return ServiceAutoScaling
		}
		return ServiceEC2
	}
	return ServiceS3
}

func authError(service string, af *authFailure) *apiError {
	switch service {
	case ServiceEC2:
		if af.kind == authSkewed {
			return errorf(400, "RequestExpired", "%s", af.message)
		}
		return errorf(401, "AuthFailure", "%s", af.message)
	case ServiceAutoScaling, ServiceSTS:
		switch af.kind {
		case authMissing:
			return errorf(403, "MissingAuthenticationToken", "%s", af.message)
		case authUnknownKey:
			return errorf(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
		case authSkewed:
			return errorf(400, "RequestExpired", "%s", af.message)
		case authMalformed:
			return errorf(400, "IncompleteSignature", "%s", af.message)
		}
		return errorf(403, "SignatureDoesNotMatch", "%s", af.message)
	default:
		switch af.kind {
		case authMissing:
			return errorf(403, "AccessDenied", "Access Denied")
		case authUnknownKey:
			return errorf(403, "InvalidAccessKeyId", "%s", af.message)
		case authSkewed:
			if strings.Contains(af.message, "expired") {
				return errorf(403, "AccessDenied", "%s", af.message)
			}
			return errorf(403, "RequestTimeTooSkewed", "%s", af.message)
		case authMalformed:
			return errorf(400, "AuthorizationHeaderMalformed", "%s", af.message)
		case authPayloadMismatch:
			return errorf(400, "XAmzContentSHA256Mismatch", "%s", af.message)
		}
		return errorf(403, "SignatureDoesNotMatch", "%s", af.message)
	}
}

// denied refuses an action the faults' Deny list names, as IAM would.
func (e *Emulator) denied(req *request) *apiError {
	e.mu.Lock()
	deny := e.faults[req.service].Deny
	e.mu.Unlock()
	if !slices.Contains(deny, req.action) {
		return nil
	}
	switch req.service {
	case ServiceEC2:
		return errorf(403, "UnauthorizedOperation", "You are not authorized to perform this operation. User: arn:aws:sts::%s:assumed-role/nodes/%s is not authorized to perform: ec2:%s", DefaultAccountID, req.id, req.action)
	case ServiceAutoScaling:
		return errorf(403, "AccessDenied", "User: arn:aws:sts::%s:assumed-role/nodes is not authorized to perform: autoscaling:%s", DefaultAccountID, req.action)
	default:
		return errorf(403, "AccessDenied", "Access Denied")
	}
}

// injectFault applies the service's configured faults to a request of action:
// latency first, then at most one of throttling, an internal error or a reset
// connection (reset: the connection is gone, nothing more to write).
func (e *Emulator) injectFault(w http.ResponseWriter, r *http.Request, service, action string) (aerr *apiError, reset bool) {
	e.mu.Lock()
	f := e.faults[service]
	if !f.matches(action) || (f.Limit > 0 && e.faulted[service] >= f.Limit) {
		e.mu.Unlock()
		return nil, false
	}
	throttle := f.ThrottleRate > 0 && e.rng.Float64() < f.ThrottleRate
	fail := !throttle && f.ErrorRate > 0 && e.rng.Float64() < f.ErrorRate
	reset = !throttle && !fail && f.ResetRate > 0 && e.rng.Float64() < f.ResetRate
	if throttle || fail || reset || f.Latency > 0 {
		e.faulted[service]++
	}
	e.mu.Unlock()
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if reset {
		resetConn(w)
		return nil, true
	}
	switch {
	case throttle:
		switch service {
		case ServiceEC2:
			return errorf(503, "RequestLimitExceeded", "Request limit exceeded."), false
		case ServiceAutoScaling:
			return errorf(400, "Throttling", "Rate exceeded"), false
		case ServiceIMDS:
			return errorf(429, "TooManyRequests", "Too Many Requests"), false
		default:
			return errorf(503, "SlowDown", "Please reduce your request rate."), false
		}
	case fail:
		switch service {
		case ServiceEC2:
			return errorf(500, "InternalError", "An internal error has occurred."), false
		case ServiceAutoScaling:
			return errorf(500, "InternalFailure", "An internal error has occurred."), false
		default:
			return errorf(500, "InternalError", "We encountered an internal error. Please try again."), false
		}
	}
	return nil, false
}

// matches reports whether the faults apply to action.
func (f Faults) matches(action string) bool {
	if len(f.Actions) == 0 {
		return true
	}
	for _, a := range f.Actions {
		if strings.HasPrefix(action, a) {
			return true
		}
	}
	return false
}

// resetConn drops the request's connection with a TCP RST (SO_LINGER 0).
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok { // not HTTP/1: the nearest thing is an answer-less failure
		http.Error(w, "connection reset", http.StatusBadGateway)
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	c := conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

func (e *Emulator) requestID() string {
	e.mu.Lock()
	e.reqSeq++
	n := e.reqSeq
	e.mu.Unlock()
	return fmt.Sprintf("a0e1b2c3-%04x-4%03x-8%03x-%012x", (n>>40)&0xffff, (n>>28)&0xfff, (n>>16)&0xfff, n&0xffffffffffff)
}

type ec2ErrorResponse struct {
	XMLName   xml.Name `xml:"Response"`
	Errors    []ec2Err `xml:"Errors>Error"`
	RequestID string   `xml:"RequestID"`
}

type ec2Err struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

type queryErrorResponse struct {
	XMLName   xml.Name `xml:"ErrorResponse"`
	Xmlns     string   `xml:"xmlns,attr"`
	Error     queryErr `xml:"Error"`
	RequestID string   `xml:"RequestId"`
}

type queryErr struct {
	Type    string `xml:"Type"`
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

type s3ErrorResponse struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource,omitempty"`
	RequestID string   `xml:"RequestId"`
	HostID    string   `xml:"HostId"`
}

func (e *Emulator) writeError(w http.ResponseWriter, req *request, aerr *apiError) {
	switch req.service {
	case ServiceEC2:
		writeXML(w, req, aerr.status, ec2ErrorResponse{Errors: []ec2Err{{aerr.code, aerr.message}}, RequestID: req.id})
	case ServiceAutoScaling, ServiceSTS:
		typ := "Sender"
		if aerr.status >= 500 {
			typ = "Receiver"
		}
		ns := autoScalingXMLNS
		if req.service == ServiceSTS {
			ns = stsXMLNS
		}
		writeXML(w, req, aerr.status, queryErrorResponse{Xmlns: ns, Error: queryErr{typ, aerr.code, aerr.message}, RequestID: req.id})
	default:
		if req.r.Method == http.MethodHead {
			// HEAD answers carry no body; the SDK reads the status and headers.
			w.Header().Set("x-amz-request-id", req.id)
			w.WriteHeader(aerr.status)
			return
		}
		writeXML(w, req, aerr.status, s3ErrorResponse{Code: aerr.code, Message: aerr.message, Resource: req.r.URL.Path, RequestID: req.id, HostID: "awsemu"})
	}
}

func writeXML(w http.ResponseWriter, req *request, status int, v any) {
	b, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, "awsemu: encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	switch req.service {
	case ServiceS3:
		h.Set("Content-Type", "application/xml")
		h.Set("x-amz-request-id", req.id)
	case ServiceAutoScaling, ServiceSTS:
		h.Set("Content-Type", "text/xml")
		h.Set("x-amzn-RequestId", req.id)
	default:
		h.Set("Content-Type", "text/xml;charset=UTF-8")
	}
	h.Set("Content-Length", fmt.Sprint(len(xml.Header)+len(b)))
	w.WriteHeader(status)
	io.WriteString(w, xml.Header)
	w.Write(b)
}
