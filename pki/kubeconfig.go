package pki

import (
	"fmt"

	"sigs.k8s.io/yaml"
)

// kubeconfig is the subset of the client-go Config (v1) file the agent writes.
// []byte fields marshal as base64, which is what the *-data keys hold.
type kubeconfig struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string    `json:"name"`
	Cluster kcCluster `json:"cluster"`
}

type kcCluster struct {
	Server                   string `json:"server"`
	CertificateAuthority     string `json:"certificate-authority,omitempty"`
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
}

type namedUser struct {
	Name string `json:"name"`
	User kcUser `json:"user"`
}

type kcUser struct {
	ClientCertificate     string `json:"client-certificate,omitempty"`
	ClientKey             string `json:"client-key,omitempty"`
	ClientCertificateData []byte `json:"client-certificate-data,omitempty"`
	ClientKeyData         []byte `json:"client-key-data,omitempty"`
}

type namedContext struct {
	Name    string    `json:"name"`
	Context kcContext `json:"context"`
}

type kcContext struct {
	Cluster string `json:"cluster"`
	User    string `json:"user"`
}

// renderKubeconfig writes a one-cluster, one-user config. Either the *Data or the
// file fields of cluster and user are set by the caller.
func renderKubeconfig(clusterName, userName string, c kcCluster, u kcUser) ([]byte, error) {
	ctx := userName + "@" + clusterName
	kc := kubeconfig{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []namedCluster{{Name: clusterName, Cluster: c}},
		Users:          []namedUser{{Name: userName, User: u}},
		Contexts:       []namedContext{{Name: ctx, Context: kcContext{Cluster: clusterName, User: userName}}},
		CurrentContext: ctx,
	}
	out, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("render kubeconfig: %w", err)
	}
	return out, nil
}

// embeddedCredentials returns the client certificate and key a kubeconfig holds.
func embeddedCredentials(data []byte) (certPEM, keyPEM []byte, err error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, nil, fmt.Errorf("parse kubeconfig: %w", err)
	}
	if len(kc.Users) != 1 {
		return nil, nil, fmt.Errorf("kubeconfig has %d users, want 1", len(kc.Users))
	}
	u := kc.Users[0].User
	if len(u.ClientCertificateData) == 0 || len(u.ClientKeyData) == 0 {
		return nil, nil, fmt.Errorf("kubeconfig user %q has no embedded client certificate and key", kc.Users[0].Name)
	}
	return u.ClientCertificateData, u.ClientKeyData, nil
}
