package etcd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeyPrefix is where nodes publish their status.
const KeyPrefix = "/nodeagent/nodes/"

// DefaultTTL is the lease TTL when NewPublisher is given none.
const DefaultTTL = 60 * time.Second

// Publisher keeps /nodeagent/nodes/<node> = status JSON in etcd under a lease it
// keeps alive, so the key disappears on its own when the node or agent dies.
type Publisher struct {
	cli *clientv3.Client
	key string
	ttl time.Duration
	log *slog.Logger

	mu       sync.Mutex
	lease    clientv3.LeaseID // 0: none
	stopKA   context.CancelFunc
	kaDone   chan struct{}
	lastPut  []byte
	leaseGen int // bumped on every grant, so a stale keep-alive goroutine cannot clear a new lease
	closed   bool
}

// NewPublisher prepares a publisher; it connects lazily and grants its lease on
// the first Publish.
func NewPublisher(endpoints []string, tlsCfg *tls.Config, node string, ttl time.Duration, log *slog.Logger) (*Publisher, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd publisher: no endpoints")
	}
	if node == "" {
		return nil, errors.New("etcd publisher: empty node name")
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("etcd publisher: TTL %s is below one second", ttl)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cli, err := newClient(endpoints, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("etcd publisher: %w", err)
	}
	return &Publisher{cli: cli, key: KeyPrefix + node, ttl: ttl, log: log.With("key", KeyPrefix+node)}, nil
}

// Key is the etcd key this publisher owns.
func (p *Publisher) Key() string { return p.key }

// Publish puts statusJSON under the lease, granting a new lease first when there
// is none or the old one was lost. An unchanged status under a live lease is not
// put again.
func (p *Publisher) Publish(ctx context.Context, statusJSON []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("etcd publisher is closed")
	}
	if p.lease != 0 && bytes.Equal(p.lastPut, statusJSON) {
		return nil
	}
	for attempt := 0; ; attempt++ {
		if p.lease == 0 {
			if err := p.grantLocked(ctx); err != nil {
				return err
			}
		}
		_, err := p.cli.Put(ctx, p.key, string(statusJSON), clientv3.WithLease(p.lease))
		if err == nil {
			p.lastPut = bytes.Clone(statusJSON)
			return nil
		}
		// The lease expired server-side before the keep-alive noticed (e.g. etcd
		// was down longer than the TTL): start over with a new one, once.
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			p.log.Warn("etcd lease gone; granting a new one", "lease", fmt.Sprintf("%x", p.lease))
			p.dropLeaseLocked()
			continue
		}
		return fmt.Errorf("put %s: %w", p.key, err)
	}
}

func (p *Publisher) grantLocked(ctx context.Context) error {
	g, err := p.cli.Grant(ctx, int64((p.ttl+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("grant lease for %s: %w", p.key, err)
	}
	// The keep-alive outlives the caller's context: it runs until Close or until
	// the lease is lost.
	kaCtx, cancel := context.WithCancel(context.Background())
	ch, err := p.cli.KeepAlive(kaCtx, g.ID)
	if err != nil {
		cancel()
		return fmt.Errorf("keep lease %x alive: %w", g.ID, err)
	}
	p.leaseGen++
	gen, done := p.leaseGen, make(chan struct{})
	p.lease, p.stopKA, p.kaDone, p.lastPut = g.ID, cancel, done, nil
	go func() {
		defer close(done)
		for range ch {
		}
		// The channel closes when the lease can no longer be kept alive or on
		// Close; in the first case the next Publish grants a new lease.
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.leaseGen == gen && !p.closed && p.lease == g.ID {
			p.log.Warn("etcd lease keep-alive ended; will re-grant on next publish", "lease", fmt.Sprintf("%x", g.ID))
			p.lease, p.lastPut = 0, nil
		}
	}()
	p.log.Info("etcd lease granted", "lease", fmt.Sprintf("%x", g.ID), "ttl", p.ttl)
	return nil
}

func (p *Publisher) dropLeaseLocked() {
	if p.stopKA != nil {
		p.stopKA()
	}
	p.lease, p.lastPut, p.stopKA = 0, nil, nil
}

// Close stops the keep-alive and revokes the lease, which deletes the key at
// once rather than after the TTL.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	lease, stop, done := p.lease, p.stopKA, p.kaDone
	p.lease, p.stopKA = 0, nil
	p.mu.Unlock()

	if stop != nil {
		stop()
		<-done
	}
	var errs []error
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := p.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			errs = append(errs, fmt.Errorf("revoke lease %x: %w", lease, err))
		}
		cancel()
	}
	if err := p.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, fmt.Errorf("close etcd client: %w", err))
	}
	return errors.Join(errs...)
}
