// Package iam ships the two IAM policies a cluster's instance profiles need,
// least privilege: masters.json and nodes.json. Nodes may read the cluster
// config, the gossip key and the CA certificate from the state store, never the
// keys under pki/private/ (the CA key among them): masters sign for them
// (the node signer). The tests load these very documents into the AWS
// emulator, which enforces them on each instance's own credentials.
//
// Placeholders: ${STATE_STORE} is the state store as bucket/prefix (the
// s3:// URL without its scheme), ${STATE_STORE_BUCKET} its bucket, ${ASSETS}
// the bucket/prefix the assets are served from.
package iam

import (
	_ "embed"
	"fmt"
	"strings"
)

// Roles whose policies are shipped.
const (
	Masters = "masters"
	Nodes   = "nodes"
)

var (
	//go:embed masters.json
	mastersJSON string
	//go:embed nodes.json
	nodesJSON string
)

// Policy renders one role's policy for a state store (s3://bucket/prefix or
// bucket/prefix) and an assets location (the same forms).
func Policy(role, stateStore, assets string) (string, error) {
	var doc string
	switch role {
	case Masters:
		doc = mastersJSON
	case Nodes:
		doc = nodesJSON
	default:
		return "", fmt.Errorf("no policy for role %q (masters, nodes)", role)
	}
	store := strings.Trim(strings.TrimPrefix(stateStore, "s3://"), "/")
	assets = strings.Trim(strings.TrimPrefix(assets, "s3://"), "/")
	if store == "" || assets == "" {
		return "", fmt.Errorf("the %s policy needs a state store and an assets location", role)
	}
	bucket, _, _ := strings.Cut(store, "/")
	return strings.NewReplacer("${STATE_STORE_BUCKET}", bucket, "${STATE_STORE}", store, "${ASSETS}", assets).Replace(doc), nil
}
