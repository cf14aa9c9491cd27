#!/usr/bin/env bash
# Everything a fresh Debian machine needs for the main job and the tests: Debian packages
# (only the missing ones), npm ci, and the build. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(qemu-system-x86 qemu-utils qemu-guest-agent busybox-static linux-image-amd64 e2fsprogs xfsprogs ntfs-3g cpio xz-utils chromium libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients nbdkit libnbd-bin tgt qemu-block-extra libguestfs-tools libguestfs-xfs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # npm ci runs the package's prepare script, which is the build
  echo "setup: npm ci (builds)" >&2
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: build" >&2
  npm run --silent build
fi
