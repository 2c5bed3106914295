package election

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// A candidate with a config that could never lead properly is refused before
// it touches the API server: no lease store or identity, or timings where the
// holder could not renew before others take the lease.
func TestRunRefusesABadConfig(t *testing.T) {
	lead := func(context.Context) {}
	good := Config{Leases: LeasesOf(dynamic.NewForConfigOrDie(&rest.Config{Host: "http://127.0.0.1:9"}), "kube-system"), Name: "l", Identity: "a",
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, OnStartedLeading: lead}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no identity", func(c *Config) { c.Identity = "" }, "identity"},
		{"no lease store", func(c *Config) { c.Leases = nil }, "lease store"},
		{"renew deadline past the lease duration", func(c *Config) { c.RenewDeadline = 20 * time.Second }, "renew deadline"},
		{"no retry period", func(c *Config) { c.RetryPeriod = 0 }, "retry period"},
		{"nothing to do when leading", func(c *Config) { c.OnStartedLeading = nil }, "OnStartedLeading"},
	} {
		c := good
		tc.edit(&c)
		err := Run(context.Background(), c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
}
