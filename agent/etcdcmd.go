package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/etcdbackup"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdContext is what the etcd commands need of this master: its config (the
// one bootstrap ran with), its members and the backups in the state store.
type etcdContext struct {
	n     *Node
	facts bootstrap.Facts
	store *etcdbackup.Store
}

func loadEtcdContext(ctx context.Context, o Options) (*etcdContext, error) {
	if o.ConfigFile == "" {
		saved := filepath.Join(o.stateDir(), effectiveConfigName)
		if _, err := os.Stat(saved); err == nil {
			o.ConfigFile = saved
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	n, err := LoadNode(ctx, o, identityIfAvailable)
	if err != nil {
		return nil, err
	}
	if !n.IsControlPlane() {
		return nil, errors.New("not a control-plane node: it runs no etcd")
	}
	store, err := backupStoreFor(n)
	if err != nil {
		return nil, err
	}
	return &etcdContext{n: n, facts: loadFacts(o, o.log()), store: store}, nil
}

// loadEtcdBackupContext is loadEtcdContext for the commands that work on the
// backups, which live in the state store.
func loadEtcdBackupContext(ctx context.Context, o Options) (*etcdContext, error) {
	e, err := loadEtcdContext(ctx, o)
	if err != nil {
		return nil, err
	}
	if e.store == nil {
		return nil, errors.New("no state store (spec.cluster.stateStore) or no AWS configuration: backups live in the state store")
	}
	return e, nil
}

func (e *etcdContext) clientURL(cluster string) (string, error) {
	for _, c := range e.n.Config.Spec.Etcd.Clusters {
		if c.Name == cluster {
			return fmt.Sprintf("https://127.0.0.1:%d", c.ClientPort), nil
		}
	}
	return "", fmt.Errorf("etcd cluster %q is not in spec.etcd.clusters", cluster)
}

// client connects to this master's own member of an etcd cluster.
func (e *etcdContext) client(o Options, cluster string) (*clientv3.Client, string, error) {
	endpoint, err := e.clientURL(cluster)
	if err != nil {
		return nil, "", err
	}
	cli, err := localEtcdClient(o, cluster, endpoint)
	return cli, endpoint, err
}

func (e *etcdContext) member(cluster string) (bootstrap.EtcdMemberFact, error) {
	m, ok := e.facts.EtcdMember(cluster)
	if !ok {
		return m, fmt.Errorf("this node holds no member of etcd %s (no claimed volume recorded in its state)", cluster)
	}
	return m, nil
}

// EtcdMembers prints the member table of an etcd cluster as the local member
// sees it.
func EtcdMembers(ctx context.Context, o Options, w io.Writer, cluster, format string) error {
	e, err := loadEtcdContext(ctx, o)
	if err != nil {
		return err
	}
	cli, endpoint, err := e.client(o, cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, herr := etcd.Check(cctx, cli, endpoint)
	if h.MemberID == "" {
		return herr
	}
	if format == "json" {
		return encodeJSON(w, h)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tROLE\tPEER URLS\tCLIENT URLS")
	for _, m := range h.Members {
		role := "voter"
		switch {
		case m.IsLearner:
			role = "learner"
		case m.ID == h.Leader:
			role = "leader"
		}
		name := m.Name
		if name == "" {
			name = "(not started)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.ID, name, role, strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if herr != nil {
		fmt.Fprintf(w, "\nWarning: %v\n", herr)
	}
	return nil
}

// EtcdBackups lists the complete backups of an etcd cluster, newest first.
func EtcdBackups(ctx context.Context, o Options, w io.Writer, cluster, format string) error {
	e, err := loadEtcdBackupContext(ctx, o)
	if err != nil {
		return err
	}
	bs, err := e.store.List(ctx, cluster)
	if err != nil && len(bs) == 0 {
		return err
	}
	if format == "json" {
		if bs == nil {
			bs = []etcdbackup.Backup{}
		}
		return encodeJSON(w, bs)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tAGE\tSIZE\tREVISION\tKEYS\tETCD\tSHA256")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", b.Name(), now.Sub(b.Time).Round(time.Second), humanBytes(b.Size),
			b.Revision, b.Keys, b.EtcdVersion, b.SHA256[:min(12, len(b.SHA256))])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(bs) == 0 {
		fmt.Fprintf(w, "no backups of etcd %s yet\n", cluster)
	}
	if err != nil {
		fmt.Fprintf(w, "\nWarning: %v\n", err)
	}
	return nil
}

// EtcdBackupNow takes a backup of an etcd cluster from the local member now,
// whoever leads, and stores it.
func EtcdBackupNow(ctx context.Context, o Options, w io.Writer, cluster string) error {
	e, err := loadEtcdBackupContext(ctx, o)
	if err != nil {
		return err
	}
	m, err := e.member(cluster)
	if err != nil {
		return err
	}
	cli, endpoint, err := e.client(o, cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	p, info, err := etcdbackup.Take(ctx, etcdutlFor(o, e.n), cli, endpoint, o.Root.Path(m.MountPoint), cluster, m.Member, time.Now())
	if err != nil {
		return err
	}
	defer os.Remove(p)
	b, err := e.store.Upload(ctx, p, info)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "backup %s of etcd %s: %s, revision %d, %d keys, sha256 %s\n", b.Name(), cluster, humanBytes(b.Size), b.Revision, b.Keys, b.SHA256)
	return nil
}

// EtcdRestore asks every master to restore an etcd cluster from a backup
// ("latest" or its time). This node's member restores it; the others join.
func EtcdRestore(ctx context.Context, o Options, w io.Writer, cluster, which string) error {
	e, err := loadEtcdBackupContext(ctx, o)
	if err != nil {
		return err
	}
	m, err := e.member(cluster)
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp(o.Root.Path(m.MountPoint), "restore-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	cmd, refused, err := e.store.RequestRestore(ctx, etcdutlFor(o, e.n), cluster, which, m.Member, scratch, time.Now())
	for _, r := range refused {
		fmt.Fprintf(w, "refused: %v\n", r)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "restore %s requested: etcd %s from backup %s (sha256 %s)\n", cmd.ID, cluster, cmd.Backup, cmd.SHA256)
	fmt.Fprintf(w, "member %s (this node) restores it; every other master's daemon stops its member, keeps its old data dir and joins\n", cmd.Member)
	return nil
}

func encodeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
