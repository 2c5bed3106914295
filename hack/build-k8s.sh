#!/usr/bin/env bash
# Builds the real Kubernetes node and control-plane binaries (kubelet, kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy) from k8s.io/kubernetes through the Go
# module proxy, in one `go build` so they share its work, for the end-to-end tests and
# `make demo`. k8s.io/kubernetes points its staging modules at ./staging/src/..., which a
# module download does not contain, so each one is replaced by its published v0.x release.
#
# Cached: prints the output directory; a second call with every binary present is free.
# kubelet is also linked at the older single-binary path (…/kubelet-<version>).
set -euo pipefail
version="${K8S_VERSION:-${KUBELET_VERSION:-v1.34.4}}"
cache="${NODEAGENT_E2E_CACHE:-/var/cache/nodeagent-e2e}"
out="${1:-$cache/k8s-${version}}"
bins=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy)

have_all() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
link_kubelet() { [ -n "${1:-}" ] || ln -sfn "$out/kubelet" "$cache/kubelet-${version}"; }
if have_all; then link_kubelet "${1:-}"; echo "$out"; exit 0; fi

minor="v0.${version#v1.}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
proxy="$(go env GOPROXY)"; proxy="${proxy%%,*}"; [ -n "$proxy" ] && [ "$proxy" != direct ] || proxy=https://proxy.golang.org
curl -fsSL "$proxy/k8s.io/kubernetes/@v/${version}.mod" -o upstream.mod
{
  echo "module k8sbuild"
  echo "go 1.24"
  echo "require k8s.io/kubernetes ${version}"
  grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' upstream.mod | awk -v m="$minor" '{print "replace " $1 " => " $1 " " m}'
} > go.mod
{
  echo "package main"
  for b in "${bins[@]}"; do echo "import _ \"k8s.io/kubernetes/cmd/$b\""; done
} > tools.go
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true
mkdir -p "$out.tmp"
pkgs=(); for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
echo "build-k8s.sh: building ${bins[*]} ${version} (cold: ~20 min on 2 cores)" >&2
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${version#v1.}" \
  -o "$out.tmp/" "${pkgs[@]}"
rm -rf "$out"
mv "$out.tmp" "$out"
link_kubelet "${1:-}"
echo "$out"
