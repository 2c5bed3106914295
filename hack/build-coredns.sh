#!/usr/bin/env bash
# Builds CoreDNS (the cluster DNS add-on) from github.com/coredns/coredns through the Go module
# proxy, static, with the plugins a Kubernetes cluster's Corefile uses — CoreDNS's documented
# compile-time plugin selection: its own coremain and directive order, the plugin packages
# imported here instead of all of core/plugin (which drags in every cloud SDK: route53, azure,
# clouddns, ... and triples the cold build). Cached: prints the binary's path; a second call is free.
set -euo pipefail
version="${COREDNS_VERSION:-v1.15.0}"
cache="${NODEAGENT_E2E_CACHE:-/var/cache/nodeagent-e2e}"
out="${1:-$cache/coredns-${version}}"
[ -x "$out" ] && { echo "$out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module corednsbuild
go 1.24
require github.com/coredns/coredns ${version}
MOD
{
  echo 'package main'
  echo
  echo 'import ('
  echo '	"github.com/coredns/coredns/coremain"'
  for p in any autopath bind bufsize cache debug errors file forward health hosts k8s_external \
      kubernetes loadbalance log loop metadata metrics ready reload rewrite template whoami; do
    echo "	_ \"github.com/coredns/coredns/plugin/$p\""
  done
  echo ')'
  echo
  echo 'func main() { coremain.Run() }'
} > main.go
GOFLAGS=-mod=mod go mod tidy >/dev/null
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${version}" -o "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
