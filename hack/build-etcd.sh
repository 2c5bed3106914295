#!/usr/bin/env bash
# Builds a real etcd server (v3.5, the line kops runs) from go.etcd.io/etcd/server/v3 through the
# Go module proxy: a three-line main calling etcdmain.Main, as etcd's own main package does.
# Cached: prints the binary's path; a second call is free.
set -euo pipefail
version="${ETCD_VERSION:-v3.5.35}"
cache="${NODEAGENT_E2E_CACHE:-/var/cache/nodeagent-e2e}"
out="${1:-$cache/etcd-${version}}"
[ -x "$out" ] && { echo "$out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module etcdbuild
go 1.24
require go.etcd.io/etcd/server/v3 ${version}
MOD
cat > main.go <<'SRC'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
SRC
GOFLAGS=-mod=mod go mod tidy >/dev/null
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w" -o "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
