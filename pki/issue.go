package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// certSpec is what a certificate must say; a certificate on disk is kept only if
// it says exactly this.
type certSpec struct {
	CN     string
	Orgs   []string
	DNS    []string
	IPs    []net.IP
	Usages []x509.ExtKeyUsage
}

var (
	serverUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	clientUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	// etcd's server certificate is also used as a client certificate when etcd
	// dials itself (grpc gateway), so it needs both usages, like the peer one.
	bothUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

// sans returns the spec's SANs as sorted, de-duplicated strings ("DNS:x", "IP:y").
func (s certSpec) sans() []string {
	var out []string
	for _, d := range s.DNS {
		out = append(out, "DNS:"+d)
	}
	for _, ip := range s.IPs {
		out = append(out, "IP:"+ip.String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func certSANs(c *x509.Certificate) []string {
	return certSpec{DNS: c.DNSNames, IPs: c.IPAddresses}.sans()
}

func usageNames(us []x509.ExtKeyUsage) []string {
	var out []string
	for _, u := range us {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			out = append(out, "serverAuth")
		case x509.ExtKeyUsageClientAuth:
			out = append(out, "clientAuth")
		default:
			out = append(out, fmt.Sprintf("usage%d", u))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func subjectString(cn string, orgs []string) string {
	s := "CN=" + cn
	if len(orgs) > 0 {
		o := slices.Clone(orgs)
		slices.Sort(o)
		s += ",O=" + strings.Join(o, "+")
	}
	return s
}

// mismatch says why an existing certificate cannot be kept, or "" when it can.
// The CA is the current one; now and renewBefore decide "close to expiry".
func mismatch(c *x509.Certificate, want certSpec, ca *x509.Certificate, now time.Time, renewBefore time.Duration) string {
	if err := c.CheckSignatureFrom(ca); err != nil || string(c.RawIssuer) != string(ca.RawSubject) {
		return "not signed by the current CA"
	}
	if got, w := subjectString(c.Subject.CommonName, c.Subject.Organization), subjectString(want.CN, want.Orgs); got != w {
		return fmt.Sprintf("subject %s, want %s", got, w)
	}
	if d := diff(certSANs(c), want.sans()); d != "" {
		return "SANs changed: " + d
	}
	if got, w := usageNames(c.ExtKeyUsage), usageNames(want.Usages); !slices.Equal(got, w) {
		return fmt.Sprintf("usages %v, want %v", got, w)
	}
	if now.Before(c.NotBefore) {
		return "not valid before " + c.NotBefore.UTC().Format(time.RFC3339)
	}
	// A certificate cannot outlive its CA; when it already ends with the CA,
	// re-issuing would not help and would repeat on every run.
	if now.Add(renewBefore).After(c.NotAfter) && c.NotAfter.Before(ca.NotAfter) {
		if now.After(c.NotAfter) {
			return "expired " + c.NotAfter.UTC().Format(time.RFC3339)
		}
		return fmt.Sprintf("expires %s, within %s", c.NotAfter.UTC().Format(time.RFC3339), renewBefore)
	}
	return ""
}

// diff lists what want adds (+) and drops (-) relative to got.
func diff(got, want []string) string {
	var parts []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			parts = append(parts, "+"+w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			parts = append(parts, "-"+g)
		}
	}
	return strings.Join(parts, " ")
}

// issue makes a fresh P-256 key and a certificate for it signed by the CA. The
// certificate never outlives the CA.
func issue(a *authority, want certSpec, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if a.key == nil {
		return nil, nil, fmt.Errorf("the CA source has no key, so %q cannot be issued", want.CN)
	}
	key, err := newECKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = a.sign(&key.PublicKey, want, now, validity)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// sign makes the CA's certificate for pub (PEM). The certificate never
// outlives the CA, and is backdated a little so that a node whose clock lags
// the CA's still accepts it.
func (a *authority) sign(pub crypto.PublicKey, want certSpec, now time.Time, validity time.Duration) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: want.CN, Organization: want.Orgs},
		DNSNames:              want.DNS,
		IPAddresses:           want.IPs,
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           want.Usages,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign %q: %w", want.CN, err)
	}
	return encodeCert(der), nil
}

// serviceIP is the first host address of the service CIDR: the address of the
// "kubernetes" service, which pods use to reach the apiserver.
func serviceIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("service CIDR: %w", err)
	}
	ones, bits := n.Mask.Size()
	if bits-ones < 2 {
		return nil, fmt.Errorf("service CIDR %s has no room for a service IP", cidr)
	}
	ip := slices.Clone(n.IP)
	for i := len(ip) - 1; i >= 0; i-- {
		ip[i]++
		if ip[i] != 0 {
			break
		}
	}
	return ip, nil
}
