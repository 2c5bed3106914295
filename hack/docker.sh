#!/usr/bin/env bash
# Caches Debian's Docker Engine (the docker.io package, 20.10) for the end-to-end tests, which
# serve its binaries to a node as verified assets: dockerd, the docker CLI (the images phase's
# `docker load`) and docker-proxy. The package is downloaded with `apt-get download` and unpacked
# with `dpkg-deb -x`, never installed: the host's own containerd and docker stay as they are.
# Its containerd and runc are the containerd package's, already served to nodes.
#
# Idempotent: a finished cache carries a stamp naming the package version; a second call only
# prints the directory. Work happens in DIR.tmp, renamed into place when complete.
set -euo pipefail

dir="${1:-${DOCKER_DIR:-/var/cache/nodeagent-e2e/docker}}"
stamp_name=.nodeagent-docker-complete
want_major="20.10."

if [ -f "$dir/$stamp_name" ]; then
  echo "$dir"
  exit 0
fi

tmp="$dir.tmp"
rm -rf --one-file-system "$tmp"
mkdir -p "$tmp/deb"
cd "$tmp/deb"
# apt's sandbox user cannot write here; the download is verified by apt against the
# signed index either way.
if ! apt-get download -o APT::Sandbox::User=root docker.io >/dev/null 2>&1; then
  apt-get update -qq
  apt-get download -o APT::Sandbox::User=root docker.io >/dev/null
fi
deb=$(ls docker.io_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in
  "$want_major"*) ;;
  *) echo "docker.sh: Debian serves docker.io $version, the tests expect $want_major*" >&2; exit 1 ;;
esac
dpkg-deb -x "$deb" "$tmp/x"
install -m 0755 "$tmp/x/usr/sbin/dockerd" "$tmp/x/usr/sbin/docker-proxy" "$tmp/x/usr/bin/docker" "$tmp/"
"$tmp/dockerd" --version >&2
rm -rf --one-file-system "$tmp/deb" "$tmp/x"
echo "docker.io $version" >"$tmp/$stamp_name"
rm -rf --one-file-system "$dir"
mv "$tmp" "$dir"
echo "$dir"
