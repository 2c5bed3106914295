package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"time"
)

// What the node signer (package signer) needs from the PKI: certificates for
// public keys it did not make, a serving certificate, the node's key pairs and
// the kube-proxy kubeconfig. The private keys of nodes never leave the nodes.

// ClientCertSpec is a client certificate the node signer issues.
type ClientCertSpec struct {
	CN   string
	Orgs []string
	DNS  []string
	IPs  []net.IP
}

// SignClientCert signs a client certificate for pub with the CA (PEM cert and
// key). It never outlives the CA.
func SignClientCert(caCertPEM, caKeyPEM []byte, pub crypto.PublicKey, spec ClientCertSpec, now time.Time, validity time.Duration) ([]byte, error) {
	a, err := parseCA(caCertPEM, caKeyPEM, now)
	if err != nil {
		return nil, err
	}
	if a.key == nil {
		return nil, errors.New("the CA source has no key")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("validity %s is not positive", validity)
	}
	return a.sign(pub, certSpec{CN: spec.CN, Orgs: spec.Orgs, DNS: spec.DNS, IPs: spec.IPs, Usages: clientUsage}, now, validity)
}

// ServingCert issues a fresh key and serving certificate for names from the CA.
func ServingCert(caCertPEM, caKeyPEM []byte, cn string, dns []string, now time.Time, validity time.Duration) (tls.Certificate, error) {
	a, err := parseCA(caCertPEM, caKeyPEM, now)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM, keyPEM, err := issue(a, certSpec{CN: cn, DNS: dns, Usages: serverUsage}, now, validity)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// NewKey makes a P-256 key pair and returns the private key as PEM and the
// public key as PEM (PKIX).
func NewKey() (keyPEM, pubPEM []byte, err error) {
	k, err := newECKey()
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = encodeKey(k); err != nil {
		return nil, nil, err
	}
	if pubPEM, err = encodePublic(k.Public()); err != nil {
		return nil, nil, err
	}
	return keyPEM, pubPEM, nil
}

// ParsePublicKey reads a PEM public key (PKIX).
func ParsePublicKey(pubPEM []byte) (crypto.PublicKey, error) {
	b, _ := pem.Decode(pubPEM)
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return pub, nil
}

// ClientCertStatus says why a client certificate and key (PEM) cannot be kept,
// or "" when they can: they must match, be signed by the CA, name want's CN
// and organisations, and not be within the last renewFraction of their life.
func ClientCertStatus(certPEM, keyPEM, caCertPEM []byte, want ClientCertSpec, now time.Time, renewFraction float64) string {
	ca, err := firstCert(caCertPEM)
	if err != nil {
		return "CA certificate: " + err.Error()
	}
	c, err := firstCert(certPEM)
	if err != nil {
		return "unreadable certificate: " + err.Error()
	}
	k, err := parseKey(keyPEM)
	if err != nil {
		return "unreadable key: " + err.Error()
	}
	if !publicKeysEqual(k.Public(), c.PublicKey) {
		return "key does not match certificate"
	}
	if err := c.CheckSignatureFrom(ca); err != nil || string(c.RawIssuer) != string(ca.RawSubject) {
		return "not signed by the current CA"
	}
	if got, w := subjectString(c.Subject.CommonName, c.Subject.Organization), subjectString(want.CN, want.Orgs); got != w {
		return fmt.Sprintf("subject %s, want %s", got, w)
	}
	if d := diff(certSANs(c), (certSpec{DNS: want.DNS, IPs: want.IPs}).sans()); d != "" {
		return "SANs changed: " + d
	}
	life := c.NotAfter.Sub(c.NotBefore)
	renewAt := c.NotAfter.Add(-time.Duration(float64(life) * renewFraction))
	switch {
	case now.After(c.NotAfter):
		return "expired " + c.NotAfter.UTC().Format(time.RFC3339)
	case now.After(renewAt):
		return "due for renewal: expires " + c.NotAfter.UTC().Format(time.RFC3339)
	}
	return ""
}

// CertNotAfter is the end of a PEM certificate's validity.
func CertNotAfter(certPEM []byte) (time.Time, error) {
	c, err := firstCert(certPEM)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}

// FileKubeconfig renders a one-user kubeconfig embedding the CA and naming the
// client certificate and key files, which client-go reloads when they change.
func FileKubeconfig(cluster, user, server string, caPEM []byte, certPath, keyPath string) ([]byte, error) {
	return renderKubeconfig(cluster, user, kcCluster{Server: server, CertificateAuthorityData: caPEM},
		kcUser{ClientCertificate: certPath, ClientKey: keyPath})
}
