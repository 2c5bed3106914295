package doctor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/beevik/ntp"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// AmazonTimeSync is the Amazon Time Sync Service every instance reaches.
const AmazonTimeSync = "169.254.169.123"

// Clock offsets: TLS, etcd leases and SigV4 (5 minutes) suffer long before
// the failure threshold is reached; a second is already trouble for etcd.
const (
	ClockWarnOffset = 100 * time.Millisecond
	ClockFailOffset = time.Second
)

const clockFix = "run chrony or systemd-timesyncd against the Amazon Time Sync Service (server 169.254.169.123 prefer iburst), then chronyc makestep"

// Clock measures this node's clock offset against an NTP server (SNTP, as
// chronyc or ntpdate -q would) and reads whether a time sync daemon reports
// the clock synchronized.
func Clock(root fsutil.Root, server string, timeout time.Duration) Check {
	return Check{Name: "clock", Run: func(ctx context.Context) []Finding {
		var out []Finding
		resp, err := ntp.QueryWithOptions(server, ntp.QueryOptions{Timeout: timeout})
		if err == nil {
			err = resp.Validate()
		}
		switch {
		case err != nil:
			out = append(out, warn("allow UDP 123 to "+server+" (the Amazon Time Sync Service answers on every instance)", "cannot measure the clock offset against %s: %v", server, err)...)
		case resp.ClockOffset.Abs() >= ClockFailOffset:
			out = append(out, fail(clockFix, "clock is %s against %s: certificates, etcd leases and AWS signatures fail", offsetWords(resp.ClockOffset), server)...)
		case resp.ClockOffset.Abs() >= ClockWarnOffset:
			out = append(out, warn(clockFix, "clock is %s against %s", offsetWords(resp.ClockOffset), server)...)
		default:
			out = append(out, ok("clock offset %s against %s (stratum %d)", roundOffset(resp.ClockOffset), server, resp.Stratum)...)
		}
		out = append(out, syncDaemon(ctx, root)...)
		return out
	}}
}

// offsetWords says which way the clock is off: NTP's offset is the server's
// time minus ours.
func offsetWords(d time.Duration) string {
	if d > 0 {
		return roundOffset(d) + " behind"
	}
	return roundOffset(-d) + " ahead"
}

func roundOffset(d time.Duration) string {
	if d.Abs() >= time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// syncDaemon reads timesyncd's state file or chronyc's tracking report.
func syncDaemon(ctx context.Context, root fsutil.Root) []Finding {
	if _, err := os.Stat(root.Path("/run/systemd/timesync/synchronized")); err == nil {
		return ok("systemd-timesyncd reports the clock synchronized")
	}
	if path, err := exec.LookPath("chronyc"); err == nil && (root == "" || root == "/") {
		out, err := exec.CommandContext(ctx, path, "-n", "tracking").Output()
		if err != nil {
			return warn("systemctl start chrony", "chronyc tracking failed: %v", err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			k, v, found := strings.Cut(line, ":")
			if found && strings.TrimSpace(k) == "Leap status" {
				if s := strings.TrimSpace(v); s != "Normal" {
					return warn(clockFix, "chrony reports leap status %q: not synchronized", s)
				}
				return ok("chrony reports the clock synchronized")
			}
		}
		return warn(clockFix, "chronyc tracking did not report a leap status")
	}
	return warn(clockFix, "%s", fmt.Sprintf("no time sync daemon reports the clock synchronized (no /run/systemd/timesync/synchronized, no chronyc)"))
}
