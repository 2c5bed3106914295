package host

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// capSysResource is CAP_SYS_RESOURCE: lowering a process's oom_score_adj needs it.
const capSysResource = 24

// CanLowerOOMScore reports whether this process (and so the container runtime
// it starts, as the same user) may lower oom_score_adj. An instance's root can;
// a node inside a container that withholds CAP_SYS_RESOURCE cannot, and then the
// runtime must be told not to try (containerd's restrict_oom_score_adj), or
// every pod sandbox fails to start.
func CanLowerOOMScore() (bool, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		v, ok := strings.CutPrefix(s.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, fmt.Errorf("parse CapEff %q: %w", v, err)
		}
		return caps&(1<<capSysResource) != 0, nil
	}
	if err := s.Err(); err != nil {
		return false, fmt.Errorf("read capabilities: %w", err)
	}
	return false, fmt.Errorf("read capabilities: no CapEff line in /proc/self/status")
}
