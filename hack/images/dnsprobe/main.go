// Command dnsprobe is the end-to-end tests' DNS client pod (nodeagent.test/dnsprobe:1
// as hack/images builds it): it resolves each name given as an argument the way
// a pod does — the search list and options of the pod's /etc/resolv.conf, which
// kubelet writes with the cluster DNS IP — and asks the nameserver of that
// file or, with -server, the one given. It writes one line per name ("name ->
// addresses" or "name: error") to stdout and to the pod's termination message
// (/dev/termination-log), retrying until every name resolves or -timeout passes.
// Exit 0 when every name resolved, 1 otherwise. Build it static: CGO_ENABLED=0.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	server := flag.String("server", "", "nameserver host:port to ask (default: the first nameserver of /etc/resolv.conf)")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to retry until every name resolves")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: dnsprobe [-server host:port] name...")
		os.Exit(2)
	}
	ns := *server
	if ns == "" {
		ns = nameserver("/etc/resolv.conf")
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, ns)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var lines []string
	ok := false
	for !ok && ctx.Err() == nil {
		lines, ok = resolveAll(ctx, r, ns, flag.Args())
		if !ok {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	out := strings.Join(lines, "\n") + "\n"
	fmt.Print(out)
	_ = os.WriteFile("/dev/termination-log", []byte(out), 0o644)
	if !ok {
		os.Exit(1)
	}
}

func resolveAll(ctx context.Context, r *net.Resolver, ns string, names []string) ([]string, bool) {
	ok := true
	lines := []string{"nameserver " + ns}
	for _, name := range names {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := r.LookupHost(qctx, name)
		cancel()
		if err != nil {
			ok = false
			lines = append(lines, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s -> %s", name, strings.Join(addrs, ",")))
	}
	return lines, ok
}

// nameserver is the first nameserver line of a resolv.conf, as host:53.
func nameserver(path string) string {
	b, err := os.ReadFile(path)
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "nameserver" {
				return net.JoinHostPort(f[1], "53")
			}
		}
	}
	return "127.0.0.1:53"
}
