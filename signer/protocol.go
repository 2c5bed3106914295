// Package signer is the node signer: workers never hold the cluster CA key, so
// the daemon on every master issues each worker's kubelet and kube-proxy client
// certificates, for its own name and IP only, after the worker proved who it is
// with its AWS identity.
//
// The proof is kops-controller's: the worker presigns an sts:GetCallerIdentity
// request with its instance-profile credentials, with the SHA-256 of its request
// body as a signed header (HashHeader), and sends the presigned request along
// (IdentityHeader). The signer checks that the request names its own STS
// endpoint and nothing but GetCallerIdentity, that the body is the one signed,
// and that it has not seen the signature before; it forwards the request to STS,
// takes the instance ID from the assumed-role ARN, looks the instance up
// (running, this cluster's tag, its private DNS name and IP) and only then signs
// the public keys the worker sent. The worker's private keys never leave it.
package signer

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"
)

const (
	// Path is where the signer takes requests (POST).
	Path = "/v1/node-credentials"
	// IdentityHeader carries the presigned GetCallerIdentity request (base64 JSON
	// of Identity).
	IdentityHeader = "X-Nodeagent-Identity"
	// HashHeader is signed into the presigned request: the hex SHA-256 of the
	// request body, which binds the identity to this one request.
	HashHeader = "X-Nodeagent-Request-Sha256"
	// DefaultValidity is how long issued certificates live unless configured
	// (spec.pki.nodeCredentialsValidity); workers renew when a third is left.
	DefaultValidity = 24 * time.Hour
	// RenewFraction is the part of a certificate's life left when it is renewed.
	RenewFraction = 1.0 / 3
	maxBody       = 64 << 10
)

// Identity is a presigned sts:GetCallerIdentity request.
type Identity struct {
	Method  string      `json:"method"`
	URL     string      `json:"url"`
	Headers http.Header `json:"headers"`
}

// Request asks for a node's credentials. The public keys are PEM (PKIX).
type Request struct {
	NodeName           string `json:"nodeName"`
	NodeIP             string `json:"nodeIP"`
	KubeletPublicKey   string `json:"kubeletPublicKey"`
	KubeProxyPublicKey string `json:"kubeProxyPublicKey"`
}

// Response holds the issued certificates (PEM) and the CA that signed them.
type Response struct {
	CACert        string    `json:"caCert"`
	KubeletCert   string    `json:"kubeletCert"`
	KubeProxyCert string    `json:"kubeProxyCert"`
	NotAfter      time.Time `json:"notAfter"`
}

// errorBody is a refusal's JSON.
type errorBody struct {
	Error string `json:"error"`
}

// BodyHash is the hex SHA-256 a request body is bound to its identity by.
func BodyHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// KubeletCN and KubeProxyCN are the identities issued.
func KubeletCN(nodeName string) string { return "system:node:" + nodeName }

// KubeletOrg is the kubelet certificate's group.
const KubeletOrg = "system:nodes"

// KubeProxyCN is kube-proxy's identity.
const KubeProxyCN = "system:kube-proxy"
