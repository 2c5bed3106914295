#!/usr/bin/env bash
# Builds a real etcd server (v3.5, the line kops runs) from go.etcd.io/etcd/server/v3 through the
# Go module proxy: a three-line main calling etcdmain.Main, as etcd's own main package does.
# With ETCD_PROGRAM=etcdutl it builds etcd's offline tool of the same version instead
# (go.etcd.io/etcd/etcdutl/v3, whose module root is its main package): the etcd image ships both,
# as the release images do, and the agent runs the image's etcdutl for snapshot checks and restores.
# Cached: prints the binary's path; a second call is free.
set -euo pipefail
version="${ETCD_VERSION:-v3.5.35}"
program="${ETCD_PROGRAM:-etcd}"
cache="${NODEAGENT_E2E_CACHE:-/var/cache/nodeagent-e2e}"
out="${1:-$cache/${program}-${version}}"
[ -x "$out" ] && { echo "$out"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
case "$program" in
etcd)
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
  pkg=.
  ;;
etcdutl)
  cat > go.mod <<MOD
module etcdutlbuild
go 1.24
require go.etcd.io/etcd/etcdutl/v3 ${version}
MOD
  cat > tools.go <<'SRC'
//go:build tools

package tools

import _ "go.etcd.io/etcd/etcdutl/v3"
SRC
  GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
  GOFLAGS=-mod=mod go get go.etcd.io/etcd/etcdutl/v3@"${version}" >/dev/null 2>&1
  pkg=go.etcd.io/etcd/etcdutl/v3
  ;;
*)
  echo "ETCD_PROGRAM must be etcd or etcdutl, got $program" >&2
  exit 2
  ;;
esac
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w" -o "$out.tmp" "$pkg"
mv "$out.tmp" "$out"
echo "$out"
