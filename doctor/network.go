package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// GossipOptions are what the gossip check needs of the node.
type GossipOptions struct {
	Enabled     bool // a gossip (.k8s.local) cluster
	ClusterName string
	NodeName    string
	BindIP      net.IP
	Port        int
	// Key is the ring key this node would use; KeyErr why it could not be read.
	Key    []byte
	KeyErr error
	// Peers lists the other nodes (EC2 seeds).
	Peers func(ctx context.Context) ([]string, error)
}

// maxProbes bounds how many peers the gossip check tries.
const maxProbes = 3

// Gossip: a peer's gossip port answers and accepts this node's key.
func Gossip(o GossipOptions) Check {
	return Check{Name: "gossip", Run: func(ctx context.Context) []Finding {
		if !o.Enabled {
			return skip("not a gossip cluster (the cluster name does not end in .k8s.local)")
		}
		if o.KeyErr != nil {
			return fail("set spec.gossip.secretKeyFile, or put the key in the state store", "no gossip key: %v", o.KeyErr)
		}
		peers, err := o.Peers(ctx)
		if err != nil {
			return judgeCall("finding gossip seeds (workers: the state store's seed list; masters: ec2:DescribeInstances)", err)
		}
		if len(peers) == 0 {
			return ok("no other running instance of the cluster to gossip with yet")
		}
		var mismatched, unreachable []string
		for i, p := range peers {
			if i == maxProbes {
				break
			}
			err := gossip.Probe(ctx, gossip.ProbeConfig{
				ClusterName: o.ClusterName, NodeName: o.NodeName + "-doctor", BindIP: o.BindIP, Peer: p, Port: o.Port,
				SecretKey: o.Key, Timeout: 3 * time.Second,
			})
			switch {
			case err == nil:
				return ok("peer %s accepted this node's gossip key on port %d", p, port(o.Port))
			case errors.Is(err, gossip.ErrKeyMismatch):
				mismatched = append(mismatched, p)
			default:
				unreachable = append(unreachable, err.Error())
			}
		}
		if len(mismatched) > 0 {
			return fail("give every node the same key: spec.gossip.secretKeyFile, or the state store's nodeagent/gossip.key (16, 24 or 32 bytes)",
				"gossip key mismatch: %s answered on port %d but refused this node's key (or the cluster name differs)", strings.Join(mismatched, ", "), port(o.Port))
		}
		return fail(fmt.Sprintf("allow TCP and UDP %d between the cluster's nodes in the security groups, and check that nodeagent.service runs on the peers", port(o.Port)),
			"no peer's gossip port answers: %s", strings.Join(unreachable, "; "))
	}}
}

func port(p int) int {
	if p == 0 {
		return gossip.DefaultPort
	}
	return p
}

// APIServerOptions are what the API server check needs.
type APIServerOptions struct {
	Root fsutil.Root
	// Name is api.internal.<cluster>; Port the API server's (443).
	Name string
	Port int
	// CAFile is the cluster CA (a host path); without it there is no API
	// server to ask (a standalone worker).
	CAFile string
}

// APIServer: api.internal.<cluster> resolves (gossip's /etc/hosts block, or
// DNS) and an API server answers /readyz there over the cluster CA.
func APIServer(o APIServerOptions) Check {
	return Check{Name: "api-server", Run: func(ctx context.Context) []Finding {
		caPEM, err := os.ReadFile(o.Root.Path(o.CAFile))
		if err != nil {
			return skip("no cluster CA at %s: a standalone node has no API server to ask", o.CAFile)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return fail("", "%s holds no certificate", o.CAFile)
		}
		ips := hostsLookup(o.Root.Path("/etc/hosts"), o.Name)
		if len(ips) == 0 {
			ips, err = net.DefaultResolver.LookupHost(ctx, o.Name)
			if err != nil || len(ips) == 0 {
				return fail("on a gossip cluster check the gossip check and that a control plane's nodeagent.service runs; otherwise the DNS record of "+o.Name,
					"%s does not resolve (not in /etc/hosts' managed block, not in DNS): %v", o.Name, err)
			}
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: o.Name},
		}}
		var errs []string
		for _, ip := range ips {
			u := "https://" + net.JoinHostPort(ip, strconv.Itoa(o.Port)) + "/readyz"
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			resp, err := client.Do(req)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK, http.StatusUnauthorized, http.StatusForbidden:
				return ok("API server at %s (%s) answers /readyz: %s", o.Name, ip, resp.Status)
			default:
				errs = append(errs, fmt.Sprintf("%s: %s", ip, resp.Status))
			}
		}
		return fail("check the control plane (nodeagent status on a master) and that TCP "+strconv.Itoa(o.Port)+" is open from this node",
			"no API server answers at %s (%s): %s", o.Name, strings.Join(ips, ", "), strings.Join(errs, "; "))
	}}
}
