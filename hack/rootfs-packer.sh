#!/usr/bin/env bash
# Builds the root filesystem of the Packer build machine of the image test (e2e
# TestPackerImage) and prints its directory: the e2e rootfs (hack/rootfs.sh) plus what a
# cloud base image has and the template's provisioners use: openssh-server (Packer's SSH
# communicator), sudo (the shell provisioner's execute_command) and cloud-init's absence
# is fine (`cloud-init clean || true`). ssh.service is not enabled: the test configures
# its port and key, then starts it. The shared e2e rootfs is never modified.
#
# Idempotent like hack/rootfs.sh: a stamp names the base rootfs stamp and the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
base="$(hack/rootfs.sh)"
dir="${1:-/var/cache/nodeagent-e2e/rootfs-packer}"
stamp_name=.nodeagent-rootfs-complete # keep in sync with nspawn.StampFile
packages=(openssh-server sudo)
want="base=$(cat "$base/$stamp_name") packages=${packages[*]}"
if [ -f "$dir/$stamp_name" ] && [ "$(cat "$dir/$stamp_name")" = "$want" ]; then
  echo "$dir"
  exit 0
fi
tmp="$dir.tmp"
rm -rf --one-file-system "$tmp"
cp -a --reflink=auto "$base" "$tmp"
rm -f "$tmp/$stamp_name"
log="$(dirname "$dir")/rootfs-packer-build.log"
echo "rootfs-packer.sh: installing ${packages[*]} into $tmp (log $log)" >&2
# Not booted: apt runs in a chroot (the host's network and resolver, a private mount
# namespace for /proc and /dev, no service started: policy-rc.d refuses).
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod +x "$tmp/usr/sbin/policy-rc.d"
if ! unshare --mount --fork sh -c "mount -t proc proc '$tmp/proc' && mount --rbind /dev '$tmp/dev' &&
  chroot '$tmp' sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${packages[*]}'" >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "rootfs-packer.sh: apt-get failed, see $log" >&2
  exit 1
fi
rm -f "$tmp/usr/sbin/policy-rc.d"
cp -a "$base/etc/resolv.conf" "$tmp/etc/resolv.conf"
rm -f "$tmp"/etc/systemd/system/multi-user.target.wants/ssh.service "$tmp"/etc/systemd/system/sshd.service
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
: >"$tmp/etc/machine-id"
printf '%s' "$want" >"$tmp/$stamp_name"
rm -rf --one-file-system "$dir"
mv "$tmp" "$dir"
echo "$dir"
