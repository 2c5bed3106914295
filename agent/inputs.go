package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// configInputs are the raw inputs a node's effective config is derived from:
// its own document (user-data or a --config file) and the state store's
// cluster.yaml. They are kept under the state dir, so that the daemon derives
// the same config bootstrap did and follows what changes.
type configInputs struct {
	// NodeSource is sourceUserData, or the --config file bootstrap was given.
	NodeSource string `json:"nodeSource"`
	// Node is the node's own NodeConfig document (user-data unwrapped).
	Node []byte `json:"-"`
	// StateStore is spec.cluster.stateStore of Node; "" when none.
	StateStore string `json:"stateStore,omitempty"`
	// Cluster is nodeagent/cluster.yaml; nil when the store has none.
	Cluster []byte `json:"-"`
	// ClusterETag is the ETag Cluster was read with (the next read is
	// conditional on it).
	ClusterETag string `json:"clusterETag,omitempty"`
}

// sourceUserData names EC2 user-data as the node's document.
const sourceUserData = "user-data"

// Files under the state dir holding the raw inputs (0600: a node document may
// hold a bootstrap token).
const (
	inputsDir         = "inputs"
	inputsMetaName    = "inputs.json"
	inputsNodeName    = "node.yaml"
	inputsClusterName = "cluster.yaml"
)

func (o Options) inputsPath(name string) string {
	return filepath.Join(o.stateDir(), inputsDir, name)
}

// loadInputs reads the inputs bootstrap or the daemon last used; nil when none
// were kept (a node booted by an older agent, or never booted).
func loadInputs(o Options) (*configInputs, error) {
	meta, err := os.ReadFile(o.inputsPath(inputsMetaName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config inputs: %w", err)
	}
	var in configInputs
	if err := json.Unmarshal(meta, &in); err != nil {
		return nil, fmt.Errorf("config inputs %s are corrupt: %w", o.inputsPath(inputsMetaName), err)
	}
	if in.Node, err = os.ReadFile(o.inputsPath(inputsNodeName)); err != nil {
		return nil, fmt.Errorf("read config inputs: %w", err)
	}
	in.Cluster, err = os.ReadFile(o.inputsPath(inputsClusterName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read config inputs: %w", err)
	}
	return &in, nil
}

// saveInputs keeps the inputs, each file written atomically and only when
// changed; the metadata goes last, so a crash in between leaves the old
// metadata with files that are at worst newer (and re-read conditionally).
func saveInputs(o Options, in *configInputs) error {
	if err := os.MkdirAll(filepath.Join(o.stateDir(), inputsDir), 0o700); err != nil {
		return fmt.Errorf("save config inputs: %w", err)
	}
	if _, err := fsutil.WriteFileIfChanged(o.inputsPath(inputsNodeName), in.Node, 0o600); err != nil {
		return fmt.Errorf("save config inputs: %w", err)
	}
	if in.Cluster != nil {
		if _, err := fsutil.WriteFileIfChanged(o.inputsPath(inputsClusterName), in.Cluster, 0o600); err != nil {
			return fmt.Errorf("save config inputs: %w", err)
		}
	} else if err := os.Remove(o.inputsPath(inputsClusterName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("save config inputs: %w", err)
	}
	meta, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return fmt.Errorf("encode config inputs: %w", err)
	}
	if _, err := fsutil.WriteFileIfChanged(o.inputsPath(inputsMetaName), append(meta, '\n'), 0o600); err != nil {
		return fmt.Errorf("save config inputs: %w", err)
	}
	return nil
}

// readNodeDoc reads the node's own document: the --config file (or stdin) when
// given; else, when follow is set (the daemon), the source bootstrap last used
// (a --config file's kept copy, or user-data); else user-data.
func readNodeDoc(ctx context.Context, o Options, md cloud.IMDSAPI, awsErr error, saved *configInputs, follow bool) (doc []byte, source string, err error) {
	switch {
	case o.ConfigFile == "-":
		doc, err = io.ReadAll(io.LimitReader(o.Stdin, 1<<20))
		return doc, "-", wrapRead(err)
	case o.ConfigFile != "":
		doc, err = os.ReadFile(o.ConfigFile)
		return doc, o.ConfigFile, wrapRead(err)
	case follow && saved != nil && saved.NodeSource != sourceUserData:
		// bootstrap --config FILE: the daemon keeps that document (its copy;
		// the file itself may be gone) until the next bootstrap says otherwise.
		return saved.Node, saved.NodeSource, nil
	}
	if md == nil {
		return nil, "", fmt.Errorf("no --config given and AWS is not configured: %w", awsErr)
	}
	raw, err := cloud.FetchUserData(ctx, md)
	if err == nil {
		raw, err = config.ExtractUserData(raw)
	}
	return raw, sourceUserData, wrapRead(err)
}

func wrapRead(err error) error {
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return nil
}

// readCluster reads cluster.yaml from the state store, conditionally on the
// ETag last read when the store is the same: unchanged costs one 304.
func readCluster(ctx context.Context, store *cloud.StateStore, url string, saved *configInputs) (data []byte, etag string, err error) {
	var prevETag string
	var prev []byte
	if saved != nil && saved.StateStore == url && saved.ClusterETag != "" {
		prevETag, prev = saved.ClusterETag, saved.Cluster
	}
	data, etag, changed, err := store.GetIfChanged(ctx, cloud.ClusterConfigKey, prevETag)
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		return nil, "", nil
	case err != nil:
		return nil, "", fmt.Errorf("cluster config: %w", err)
	case !changed:
		return prev, prevETag, nil
	}
	return data, etag, nil
}

// shortHash is a SHA-256 prefix, the version of an input without an ETag.
func shortHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// readInputs reads every raw input afresh (cluster.yaml conditionally) and
// returns them with the state store they name. md, the IMDS client, is set
// when awsCfg is.
func readInputs(ctx context.Context, o Options, awsCfg *aws.Config, md *imds.Client, awsErr error, saved *configInputs, follow bool) (*configInputs, *cloud.StateStore, error) {
	var mdAPI cloud.IMDSAPI // a nil *imds.Client is not a nil interface
	if awsCfg != nil && md != nil {
		mdAPI = md
	} else if awsCfg != nil {
		mdAPI = cloud.NewIMDS(*awsCfg)
	}
	doc, source, err := readNodeDoc(ctx, o, mdAPI, awsErr, saved, follow)
	if err != nil {
		return nil, nil, err
	}
	in := &configInputs{NodeSource: source, Node: doc, StateStore: stateStoreURL(doc)}
	if in.StateStore == "" {
		return in, nil, nil
	}
	if awsCfg == nil {
		return nil, nil, fmt.Errorf("spec.cluster.stateStore is %s but AWS is not configured: %w", in.StateStore, awsErr)
	}
	store, err := cloud.NewStateStore(cloud.NewS3(*awsCfg), in.StateStore)
	if err != nil {
		return nil, nil, fmt.Errorf("spec.cluster.stateStore: %w", err)
	}
	if in.Cluster, in.ClusterETag, err = readCluster(ctx, store, in.StateStore, saved); err != nil {
		return nil, nil, err
	}
	return in, store, nil
}

// sources describes the inputs for status.
func (in *configInputs) sources(store *cloud.StateStore) []bootstrap.ConfigSource {
	node := bootstrap.ConfigSource{Name: "file", Location: in.NodeSource, Version: shortHash(in.Node)}
	if in.NodeSource == sourceUserData {
		node = bootstrap.ConfigSource{Name: sourceUserData, Version: shortHash(in.Node)}
	}
	out := []bootstrap.ConfigSource{node}
	if store != nil && in.Cluster != nil {
		out = append(out, bootstrap.ConfigSource{Name: "cluster.yaml", Location: store.URL(cloud.ClusterConfigKey), Version: in.ClusterETag})
	}
	return out
}
