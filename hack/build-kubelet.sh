#!/usr/bin/env bash
# Builds a real kubelet from k8s.io/kubernetes through the Go module proxy, for the
# end-to-end tests and `make demo`. k8s.io/kubernetes points its staging modules at
# ./staging/src/..., which a module download does not contain, so each one is
# replaced by its published v0.x release. The result is cached: a second call is free.
set -euo pipefail
version="${KUBELET_VERSION:-v1.34.4}"
out="${1:-/var/cache/nodeagent-e2e/kubelet-${version}}"
[ -x "$out" ] && { echo "$out"; exit 0; }

minor="v0.${version#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
proxy="$(go env GOPROXY)"; proxy="${proxy%%,*}"; [ -n "$proxy" ] && [ "$proxy" != direct ] || proxy=https://proxy.golang.org
curl -fsSL "$proxy/k8s.io/kubernetes/@v/${version}.mod" -o upstream.mod
{
  echo "module kubeletbuild"
  echo "go 1.24"
  echo "require k8s.io/kubernetes ${version}"
  grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' upstream.mod | awk -v m="$minor" '{print "replace " $1 " => " $1 " " m}'
} > go.mod
printf 'package main\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > tools.go
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${version}" -o "$out.tmp" k8s.io/kubernetes/cmd/kubelet
mv "$out.tmp" "$out"
echo "$out"
