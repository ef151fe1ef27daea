#!/usr/bin/env bash
# System packages and kernel set-up the farm needs: runc for BuildKit's OCI worker,
# Debian's docker-registry, busybox-static (amd64 and arm64) for the base image,
# qemu-user-static registered with binfmt_misc so linux/arm64 steps run here.
# bubblewrap runs upstream melange (the differential suite), postgresql the PostgreSQL
# store tests, chromium the dashboard tests (through Playwright, its executable_path;
# fonts-dejavu-core so that its pages and screenshots have a font with --no-install-recommends).
# GNU wget and patch run melange's fetch and patch pipelines in their tests (busybox's lack
# the options they use).
# Idempotent: installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
debs="$here/.tools/debs"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
for p in runc docker-registry busybox-static qemu-user-static binfmt-support ca-certificates \
    bubblewrap postgresql chromium fonts-dejavu-core wget patch; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
arm64_added=1
dpkg --print-foreign-architectures | grep -qx arm64 || arm64_added=0
# Debian's source archive (the upstream tarballs examples/ are built from, through
# `apt-get source`): a deb-src entry beside every deb entry already configured, once.
src_added=1
if ! grep -rqs -e '^Types:.*deb-src' -e '^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  src_added=0
  tmp=$(mktemp)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -q '^Types: deb$' "$f" || continue
    sed 's/^Types: deb$/Types: deb-src/' "$f" >> "$tmp" && echo >> "$tmp"
  done
  if [ -s "$tmp" ]; then $SUDO install -m 644 "$tmp" /etc/apt/sources.list.d/melange2-deb-src.sources; fi
  if [ -f /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$tmp"
    $SUDO install -m 644 "$tmp" /etc/apt/sources.list.d/melange2-deb-src.list
  fi
  rm -f "$tmp"
fi
if [ ${#need[@]} -gt 0 ] || [ $arm64_added = 0 ] || [ $src_added = 0 ] \
    || [ ! -f "$debs/busybox-static_arm64.deb" ]; then
  if [ $arm64_added = 0 ]; then $SUDO dpkg --add-architecture arm64; fi
  $SUDO apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The busybox-static packages our base image is made from, one per architecture.
mkdir -p "$debs"
for arch in amd64 arm64; do
  if [ ! -f "$debs/busybox-static_$arch.deb" ]; then
    tmp=$(mktemp -d) && chmod 777 "$tmp"
    (cd "$tmp" && apt-get download -qq "busybox-static:$arch")
    mv "$tmp"/busybox-static_*_"$arch".deb "$debs/busybox-static_$arch.deb"
    rm -rf "$tmp"
  fi
done

# qemu-aarch64 in binfmt_misc (the F flag keeps it usable inside containers).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  $SUDO update-binfmts --enable qemu-aarch64 || $SUDO update-binfmts --import qemu-aarch64
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64
