package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/etcdbackup"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/manifests"
	"github.com/nodeagent/nodeagent/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdStatusName is the daemon's record of this node's etcd members and their
// backups, beside state.json; `status` and `etcd members` read it.
const etcdStatusName = "etcd.json"

// EtcdStatus is what the daemon last saw of this node's etcd clusters.
type EtcdStatus struct {
	At       time.Time           `json:"at"`
	Clusters []EtcdClusterStatus `json:"clusters"`
}

// EtcdClusterStatus is one etcd cluster as seen from this node.
type EtcdClusterStatus struct {
	Cluster    string             `json:"cluster"`
	Member     string             `json:"member"`
	Health     *etcd.Health       `json:"health,omitempty"`
	LastBackup *etcdbackup.Backup `json:"lastBackup,omitempty"`
	Schedule   string             `json:"schedule"`
	Warning    string             `json:"warning,omitempty"`
	Error      string             `json:"error,omitempty"`
}

// backupStoreFor is the state store's backups, or nil without a state store.
func backupStoreFor(n *Node) (*etcdbackup.Store, error) {
	url := n.Config.Spec.Cluster.StateStore
	if url == "" || n.AWS == nil {
		return nil, nil
	}
	bucket, prefix, err := config.ParseS3URL(url)
	if err != nil {
		return nil, err
	}
	return &etcdbackup.Store{S3: cloud.NewS3(*n.AWS), Bucket: bucket, Prefix: prefix}, nil
}

// backupPolicy is spec.etcd.backups with its defaults.
func backupPolicy(spec config.Spec) (time.Duration, etcdbackup.Retention) {
	sched, ret := etcdbackup.DefaultSchedule, etcdbackup.DefaultRetention
	if spec.Etcd == nil {
		return sched, ret
	}
	b := spec.Etcd.Backups
	if d, err := time.ParseDuration(b.Schedule); err == nil && d > 0 {
		sched = d
	}
	if d, err := time.ParseDuration(b.KeepHourly); err == nil && d > 0 {
		ret.Hourly = d
	}
	if d, err := time.ParseDuration(b.KeepDaily); err == nil && d > 0 {
		ret.Daily = d
	}
	return sched, ret
}

// etcdJoinPhase decides how members on blank volumes start (etcd-join).
func etcdJoinPhase(o Options, n *Node, store *etcdbackup.Store) *etcd.JoinPhase {
	jo := etcd.JoinOptions{
		Root: o.Root, ClusterName: n.Config.Spec.Cluster.Name, Clusters: n.Config.Spec.Etcd.Clusters, Log: o.log(),
		TLS: func(cluster string) (*tls.Config, error) { return pki.ClientTLS(o.Root, cluster) },
	}
	if store != nil {
		jo.Existed = func(ctx context.Context, cluster string) (bool, error) {
			b, err := store.Latest(ctx, cluster)
			return b != nil, err
		}
		jo.Restored = func(ctx context.Context, cluster string) (uint64, error) {
			cmds, err := store.Commands(ctx, cluster)
			if err != nil || len(cmds) == 0 {
				return 0, err
			}
			last := cmds[len(cmds)-1]
			r, ok, err := store.RestoredBy(ctx, cluster, last.ID)
			if err != nil {
				return 0, err
			}
			if !ok {
				return 0, bootstrap.Waiting("etcd %s: waiting for member %s to restore backup %s", cluster, last.Member, last.Backup)
			}
			return r.ClusterID, nil
		}
	}
	return etcd.NewJoinPhase(jo)
}

// etcdKeeper is the daemon's care of this master's etcd data: it follows
// restore commands, takes the scheduled backups when its member leads, and
// records the member table and last backup for status and /metrics.
type etcdKeeper struct {
	o          Options
	n          *Node
	store      *etcdbackup.Store
	log        *slog.Logger
	schedule   time.Duration
	retention  etcdbackup.Retention
	lastBackup *prometheus.GaugeVec
	backupAge  *prometheus.GaugeVec
	members    *prometheus.GaugeVec
}

func newEtcdKeeper(o Options, n *Node, store *etcdbackup.Store, reg *prometheus.Registry) *etcdKeeper {
	sched, ret := backupPolicy(n.Config.Spec)
	k := &etcdKeeper{o: o, n: n, store: store, log: o.log().With("component", "etcd-keeper"), schedule: sched, retention: ret,
		lastBackup: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeagent_etcd_last_backup_timestamp_seconds", Help: "When the newest complete backup of each etcd cluster was taken.",
		}, []string{"cluster"}),
		backupAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeagent_etcd_last_backup_age_seconds", Help: "Age of the newest complete backup of each etcd cluster.",
		}, []string{"cluster"}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeagent_etcd_members", Help: "Members of each etcd cluster as the local member lists them, by kind.",
		}, []string{"cluster", "kind"}),
	}
	reg.MustRegister(k.lastBackup, k.backupAge, k.members)
	return k
}

func (k *etcdKeeper) clientURL(cluster string) string {
	for _, c := range k.n.Config.Spec.Etcd.Clusters {
		if c.Name == cluster {
			return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ClientPort))
		}
	}
	return ""
}

func (k *etcdKeeper) peerURL(cluster, member string) string {
	for _, c := range k.n.Config.Spec.Etcd.Clusters {
		if c.Name == cluster {
			return "https://" + net.JoinHostPort(config.EtcdMemberHost(cluster, member, k.n.Config.Spec.Cluster.Name), strconv.Itoa(c.PeerPort))
		}
	}
	return ""
}

// tick runs once a reconcile interval.
func (k *etcdKeeper) tick(ctx context.Context) {
	facts := loadFacts(k.o, k.log)
	st := EtcdStatus{At: time.Now().UTC()}
	for _, m := range facts.EtcdMembers {
		cs := EtcdClusterStatus{Cluster: m.Cluster, Member: m.Member, Schedule: k.schedule.String()}
		if err := k.cluster(ctx, m, &cs); err != nil {
			cs.Error = err.Error()
			if bootstrap.IsWaiting(err) {
				k.log.Info("etcd data", "cluster", m.Cluster, "waiting", err)
			} else {
				k.log.Warn("etcd data", "cluster", m.Cluster, "err", err)
			}
		}
		st.Clusters = append(st.Clusters, cs)
	}
	if err := writeEtcdStatus(k.o, st); err != nil {
		k.log.Warn("etcd status not written", "err", err)
	}
}

func (k *etcdKeeper) cluster(ctx context.Context, m bootstrap.EtcdMemberFact, cs *EtcdClusterStatus) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if k.store != nil {
		if err := k.followRestore(ctx, m); err != nil {
			return err
		}
	}
	endpoint := k.clientURL(m.Cluster)
	cli, err := localEtcdClient(k.o, m.Cluster, endpoint)
	if err != nil {
		return err
	}
	defer cli.Close()
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	h, herr := etcd.Check(hctx, cli, endpoint)
	hcancel()
	if h.MemberID != "" {
		cs.Health = &h
		voters, learners := 0.0, 0.0
		for _, x := range h.Members {
			if x.IsLearner {
				learners++
			} else {
				voters++
			}
		}
		k.members.WithLabelValues(m.Cluster, "voter").Set(voters)
		k.members.WithLabelValues(m.Cluster, "learner").Set(learners)
	}
	if k.store == nil {
		cs.Warning = "no state store: etcd is not backed up"
		return herr
	}
	var res etcdbackup.Result
	if herr == nil {
		t := &etcdbackup.Taker{Store: k.store, Cluster: m.Cluster, Member: m.Member, Endpoint: endpoint,
			Schedule: k.schedule, Retention: k.retention, Scratch: k.o.Root.Path(m.MountPoint), Tool: etcdutlFor(k.o, k.n), Log: k.log}
		res, err = t.Tick(ctx, cli, time.Now())
	} else {
		var lerr error
		res.Latest, lerr = k.store.Latest(ctx, m.Cluster)
		err = errors.Join(herr, lerr)
	}
	cs.LastBackup = res.Latest
	if b := res.Latest; b != nil {
		k.lastBackup.WithLabelValues(m.Cluster).Set(float64(b.Time.Unix()))
		k.backupAge.WithLabelValues(m.Cluster).Set(time.Since(b.Time).Seconds())
	}
	cs.Warning = backupWarning(res.Latest, k.schedule, time.Now())
	return err
}

// backupWarning is status's warning about a cluster's backups: none yet, or
// the newest older than twice the schedule.
func backupWarning(latest *etcdbackup.Backup, schedule time.Duration, now time.Time) string {
	if latest == nil {
		return "no backup yet"
	}
	if age := now.Sub(latest.Time); age > 2*schedule {
		return fmt.Sprintf("the last backup (%s) is %s old, more than twice the schedule (%s)", latest.Name(), age.Round(time.Minute), schedule)
	}
	return ""
}

// followRestore carries out this member's part of the newest restore command
// it has not done yet. It holds the run lock throughout, so no reconcile
// re-writes the static pod meanwhile.
func (k *etcdKeeper) followRestore(ctx context.Context, m bootstrap.EtcdMemberFact) error {
	volume := k.o.Root.Path(m.MountPoint)
	cmd, err := k.store.Pending(ctx, m.Cluster, volume)
	if err != nil || cmd == nil {
		if cmd == nil && err == nil {
			return k.markRestored(ctx, m)
		}
		return err
	}
	if cmd.Member != m.Member {
		if _, ok, err := k.store.RestoredBy(ctx, m.Cluster, cmd.ID); err != nil || !ok {
			if err == nil {
				err = bootstrap.Waiting("etcd %s: restore %s: waiting for member %s to restore backup %s", m.Cluster, cmd.ID, cmd.Member, cmd.Backup)
			}
			return err
		}
	}
	unlock, err := k.o.store().LockRun(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	log := k.log.With("cluster", m.Cluster, "restore", cmd.ID, "backup", cmd.Backup)
	log.Info("following restore command: stopping the local member")
	pod := k.o.Root.Path(filepath.Join(manifests.DefaultDir, manifests.EtcdPodName(m.Cluster)+".yaml"))
	if err := os.Remove(pod); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop etcd %s: %w", m.Cluster, err)
	}
	if err := waitClosed(ctx, k.clientURL(m.Cluster)); err != nil {
		return fmt.Errorf("etcd %s: the local member did not stop: %w", m.Cluster, err)
	}
	step := etcdbackup.Step{Store: k.store, Command: *cmd, Member: m.Member, PeerURL: k.peerURL(m.Cluster, m.Member),
		Volume: volume, Scratch: volume, Tool: etcdutlFor(k.o, k.n)}
	kept, err := step.Apply(ctx, time.Now())
	if err != nil {
		return fmt.Errorf("etcd %s: restore %s: %w", m.Cluster, cmd.ID, err)
	}
	log.Info("restore step done; the old data dir is kept", "kept", kept, "restorer", cmd.Member == m.Member)
	// How the member starts now: the restorer as a one-member cluster on the
	// restored data; the others blank, decided afresh by etcd-join (as
	// learners of the restored cluster).
	_, err = k.o.store().Update(func(st *bootstrap.State) {
		for i := range st.Facts.EtcdMembers {
			f := &st.Facts.EtcdMembers[i]
			if f.Cluster != m.Cluster {
				continue
			}
			f.ClusterState, f.InitialCluster = "", nil
			if cmd.Member == m.Member {
				f.ClusterState, f.InitialCluster = etcd.StateNew, []string{m.Member + "=" + step.PeerURL}
			}
		}
	})
	return err
}

// markRestored records, once the restoring member serves, that the others may
// join it.
func (k *etcdKeeper) markRestored(ctx context.Context, m bootstrap.EtcdMemberFact) error {
	cmds, err := k.store.Commands(ctx, m.Cluster)
	if err != nil || len(cmds) == 0 {
		return err
	}
	last := cmds[len(cmds)-1]
	if last.Member != m.Member {
		return nil
	}
	if _, ok, err := k.store.RestoredBy(ctx, m.Cluster, last.ID); err != nil || ok {
		return err
	}
	tlsCfg, err := pki.ClientTLS(k.o.Root, m.Cluster)
	if err != nil {
		return err
	}
	cli, err := etcd.NewClient([]string{k.clientURL(m.Cluster)}, tlsCfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ml, err := cli.MemberList(cctx)
	if err != nil {
		return bootstrap.Waiting("etcd %s: restored member not serving yet: %v", m.Cluster, err)
	}
	return k.store.MarkRestored(ctx, m.Cluster, etcdbackup.Restored{ID: last.ID, Member: m.Member, ClusterID: ml.Header.ClusterId, At: time.Now().UTC()})
}

// waitClosed waits until nothing accepts connections at an https URL's address.
func waitClosed(ctx context.Context, u string) error {
	addr := strings.TrimPrefix(u, "https://")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still accepts connections after 2m", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func writeEtcdStatus(o Options, st EtcdStatus) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(o.stateDir(), etcdStatusName), b, 0o600)
}

// LoadEtcdStatus reads what the daemon last recorded of this node's etcd.
func LoadEtcdStatus(o Options) (*EtcdStatus, error) {
	b, err := os.ReadFile(filepath.Join(o.stateDir(), etcdStatusName))
	if err != nil {
		return nil, err
	}
	var st EtcdStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", etcdStatusName, err)
	}
	slices.SortFunc(st.Clusters, func(a, b EtcdClusterStatus) int { return strings.Compare(a.Cluster, b.Cluster) })
	return &st, nil
}

// WriteEtcdTable renders the daemon's view of this node's etcd for `status`:
// each cluster's members and its last backup, with a warning when that backup
// is older than twice the schedule.
func WriteEtcdTable(w io.Writer, es *EtcdStatus, now time.Time) error {
	fmt.Fprintf(w, "\netcd (as of %s ago):\n", now.Sub(es.At).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  CLUSTER\tMEMBER\tROLE\tMEMBERS\tLAST BACKUP\tAGE\tSIZE\tREVISION")
	for _, c := range es.Clusters {
		role, members := "-", "-"
		if h := c.Health; h != nil {
			role = "follower"
			switch {
			case h.IsLearner:
				role = "learner"
			case h.IsLeader:
				role = "leader"
			}
			var names []string
			for _, m := range h.Members {
				n := m.Name
				if n == "" {
					n = "(not started)"
				}
				if m.IsLearner {
					n += "(learner)"
				}
				names = append(names, n)
			}
			members = strings.Join(names, ",")
		}
		last, age, size, rev := "-", "-", "-", "-"
		if b := c.LastBackup; b != nil {
			last, age, size, rev = b.Name(), now.Sub(b.Time).Round(time.Second).String(), humanBytes(b.Size), strconv.FormatInt(b.Revision, 10)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Cluster, c.Member, role, members, last, age, size, rev)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range es.Clusters {
		if c.Warning != "" {
			fmt.Fprintf(w, "  Warning: etcd %s: %s\n", c.Cluster, c.Warning)
		}
		if c.Error != "" {
			fmt.Fprintf(w, "  Error: etcd %s: %s\n", c.Cluster, c.Error)
		}
	}
	return nil
}

// localEtcdClient connects to endpoint, a member of an etcd cluster on this
// master, with the master's client certificate for that cluster.
func localEtcdClient(o Options, cluster, endpoint string) (*clientv3.Client, error) {
	tlsCfg, err := pki.ClientTLS(o.Root, cluster)
	if err != nil {
		return nil, err
	}
	return etcd.NewClient([]string{endpoint}, tlsCfg)
}
