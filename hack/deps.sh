#!/usr/bin/env bash
# Installs the Debian packages the real-parts tests and the demo use (iptables and conntrack: copied
# into the e2e kube-proxy image by hack/images). Idempotent and quiet when done.
set -euo pipefail
pkgs=(systemd-container debootstrap containerd runc containernetworking-plugins iptables conntrack etcd-server iproute2 iputils-ping e2fsprogs util-linux kmod curl ca-certificates xfsprogs fdisk packer)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# containerd is only a source of binaries for the tests: keep its host service out of the way.
systemctl disable --now containerd 2>/dev/null || true
modprobe loop 2>/dev/null || true
