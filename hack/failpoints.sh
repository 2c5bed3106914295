#!/usr/bin/env bash
# failpoints.sh builds bin/nodeagent-failpoints: the agent with its gofail failpoints
# (go.etcd.io/gofail, `// gofail: var NAME string` comments) turned into code. The
# release binary never has them: `gofail enable` rewrites a throw-away copy of the
# tree, never the package tree itself.
#
# Every failpoint is armed the gofail way, GOFAIL_FAILPOINTS='NAME=return("MATCH")'
# (';' between several): when the code passes NAME with a detail containing MATCH
# ("*" matches any), the agent SIGKILLs itself there, as a crash would: no deferred
# cleanup, no flush. 'NAME=return("hold:MATCH")' stops the agent there instead (the
# power-loss sweep cuts the machine's power while it holds). Failpoints: see FAILPOINT_PKGS below and README's crash section.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bin/nodeagent-failpoints}
case $out in /*) ;; *) out=$PWD/$out ;; esac
# The packages holding failpoints.
FAILPOINT_PKGS=(bootstrap internal/fsutil assets volumes pki manifests agent)

work=$(mktemp -d /tmp/nodeagent-failpoints.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | grep -zv '^bin/' | xargs -0 cp --parents -t "$work"
cd "$work"
go tool gofail enable "${FAILPOINT_PKGS[@]}"
for d in "${FAILPOINT_PKGS[@]}"; do
	pkg=$(go list -f '{{.Name}}' "./$d")
	cat >"$d/zz_failpoint_crash.go" <<GO
package $pkg

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// failpointCrash kills the agent with SIGKILL when the armed failpoint's value
// ("*" or a part of detail) matches: a crash exactly here. A value "hold:MATCH"
// stops the agent there instead, for a test to cut the machine's power.
func failpointCrash(name, want, detail string) {
	match, hold := strings.CutPrefix(want, "hold:")
	if match != "*" && !strings.Contains(detail, match) {
		return
	}
	if hold {
		fmt.Fprintf(os.Stderr, "failpoint %s (%s): holding for a power cut\n", name, detail)
		for {
			time.Sleep(time.Hour) // a pending timer: never "all goroutines are asleep"
		}
	}
	fmt.Fprintf(os.Stderr, "failpoint %s (%s): SIGKILL\n", name, detail)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
GO
done
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -o "$out" ./cmd/nodeagent
echo "$out"
