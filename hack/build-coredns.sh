#!/usr/bin/env bash
# Builds CoreDNS (the cluster DNS add-on) from github.com/coredns/coredns through the Go module
# proxy: its own main package with its default plugin set, static. Cached: prints the binary's
# path; a second call is free.
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
cat > tools.go <<'SRC'
//go:build tools

package tools

import _ "github.com/coredns/coredns"
SRC
GOFLAGS=-mod=mod go mod tidy >/dev/null
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${version}" -o "$out.tmp" github.com/coredns/coredns
mv "$out.tmp" "$out"
echo "$out"
