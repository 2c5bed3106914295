#!/usr/bin/env bash
# Builds the Debian bookworm root filesystem that the end-to-end tests and `make demo`
# boot with systemd-nspawn (internal/nspawn), and prints its directory.
#
# Idempotent: a finished rootfs carries a stamp file naming the package set it was built
# with; a second call with the same set only prints the directory. A half-finished earlier
# run never counts: debootstrap works in DIR.tmp, which is renamed into place only after
# it succeeded and the stamp is written.
#
# The package set is systemd + D-Bus (the agent talks to systemd over the bus) plus what
# containerd, runc and kubelet call at run time inside the machine: mount/umount
# (util-linux, mount), iptables (kubelet's canary chains), kmod, iproute2, e2fsprogs
# (volume formatting), and libseccomp2 for Debian's dynamically linked runc.
set -euo pipefail

dir="${1:-${ROOTFS_DIR:-/var/cache/nodeagent-e2e/rootfs}}"
suite="${ROOTFS_SUITE:-bookworm}"
mirror="${ROOTFS_MIRROR:-http://deb.debian.org/debian}"
stamp_name=.nodeagent-rootfs-complete # keep in sync with nspawn.StampFile

packages=(systemd systemd-sysv dbus iproute2 kmod procps ca-certificates util-linux mount
  e2fsprogs iptables libseccomp2)
include=$(IFS=,; echo "${packages[*]}")
want="suite=$suite include=$include"

if [ -f "$dir/$stamp_name" ] && [ "$(cat "$dir/$stamp_name")" = "$want" ]; then
  echo "$dir"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "rootfs.sh: debootstrap needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

tmp="$dir.tmp"
# A leftover DIR.tmp is from an interrupted run: debootstrap cannot resume reliably, start over.
rm -rf --one-file-system "$tmp"
mkdir -p "$(dirname "$dir")"
log="$(dirname "$dir")/rootfs-build.log"
echo "rootfs.sh: debootstrap $suite into $tmp (log $log)" >&2
if ! debootstrap --variant=minbase --include="$include" "$suite" "$tmp" "$mirror" >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "rootfs.sh: debootstrap failed, see $log" >&2
  exit 1
fi

# Machine-specific identity must not be baked in: systemd creates a fresh machine-id on
# first boot of each machine when the file is empty.
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
# The host's network configuration is shared (no private network): no DHCP inside.
echo "nodeagent-e2e" >"$tmp/etc/hostname"
# Units that only make sense on a real console or that fight the host.
for unit in getty@tty1.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service; do
  ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
done
# Keep apt's cache out of the image.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*

printf '%s' "$want" >"$tmp/$stamp_name"
if [ -e "$dir" ]; then
  # Two renames, so the directory is missing only between them. Deleting the old tree
  # pulls the files from under any machine still using it as its overlay's lower layer:
  # a rebuild (a changed package set) must not run while e2e machines are up.
  old="$dir.old.$$"
  mv "$dir" "$old"
  mv "$tmp" "$dir"
  rm -rf --one-file-system "$old"
else
  mv "$tmp" "$dir"
fi
echo "$dir"
