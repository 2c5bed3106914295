#!/usr/bin/env bash
# Checks the size of the agent binary as `make build` builds it (static, stripped,
# -tags grpcnotrace, no inlining in generated API code) against its budget, and prints the figure beside the target.
# Fails when the binary grew past BINARY_BUDGET_MIB: a new dependency that disables
# the linker's dead-code elimination of methods (reflect.Value.Method/MethodByName
# with a name known only at run time, text/template and html/template) or pulls in
# whole API groups shows here first. `go build -ldflags=-dumpdep` tells why.
set -euo pipefail
bin="${1:-bin/nodeagent}"
budget_mib="${BINARY_BUDGET_MIB:-30}"
target_mib=30
[ -f "$bin" ] || { echo "binary-size: $bin missing (make build)" >&2; exit 1; }
size=$(stat -c %s "$bin")
awk -v s="$size" -v b="$budget_mib" -v t="$target_mib" 'BEGIN {
  printf "FIGURE nodeagent binary: %.1f MiB (static, stripped)   target <= %d MiB, CI budget %d MiB\n", s/1048576, t, b
  if (s > b*1048576) { printf "binary-size: %.1f MiB is over the budget of %d MiB\n", s/1048576, b > "/dev/stderr"; exit 1 }
}'
