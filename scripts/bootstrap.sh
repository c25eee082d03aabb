#!/usr/bin/env bash
# Installs what the farm and its tests need, only what is missing:
# Debian's packages (Docker Engine, registry, Redis, busybox, docker-compose) and
# a Python venv in .venv from requirements/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements="${1:-requirements/base.txt}"
# busybox-static, not busybox: the base image needs a statically linked binary.
# nftables, socat, iproute2: each daemon's sandbox (scripts/sandbox.py).
# openssh-client: ssh clone URLs with deploy keys (builds/sources/git.py).
# qemu-user-static, binfmt-support: RUN steps of other platforms (multi-platform builds) under QEMU.
packages=(docker.io docker-registry redis-server busybox-static docker-compose git nftables socat iproute2 openssh-client
  qemu-user-static binfmt-support)
# Debian 13's docker.io (26.1) has no BuildKit client inside its CLI: the buildx plugin is
# its own package there (Debian 12's 20.10 CLI embeds one, and has no buildx package).
debian=$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo unknown)
case "$debian" in
  12) ;;
  13) packages+=(docker-buildx) ;;
  *) echo "==> Debian ${debian}: checked on Debian 12 only (13 installs docker-buildx); going on" >&2 ;;
esac
# The browser tests drive Debian's Chromium (Playwright's own download cannot run here);
# the deploy key tests clone from a test-owned sshd (tests/ssh_server.py; the service stays off).
if [ "$(basename "$requirements")" = test.txt ]; then packages+=(chromium openssh-server); fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "error: apt-get could not install ${missing[*]} on Debian ${debian}: the farm needs each of them" >&2
    exit 1
  fi
fi

# QEMU's handlers, registered with the kernel (a container or a fresh boot may have none mounted).
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || ! grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  update-binfmts --enable qemu-aarch64 >/dev/null
fi

# The arm64 busybox of the two-platform base image (scripts/localfarm.py publish_busybox_index).
debs="${GENERATOR_FOREIGN_DEBS:-/var/cache/generator/debs}"
if ! ls "$debs"/busybox-static_*_arm64.deb >/dev/null 2>&1; then
  echo "==> downloading busybox-static:arm64 into $debs"
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -q >/dev/null; }
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -q busybox-static:arm64 >/dev/null 2>&1) \
    || { apt-get update -q >/dev/null; (cd "$debs" && apt-get download -q busybox-static:arm64 >/dev/null 2>&1); }
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(basename "$requirements")"
if [ ! -f "$stamp" ] || [ -n "$(find requirements -newer "$stamp" -name '*.txt')" ]; then
  echo "==> installing Python packages from $requirements"
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import django, celery, channels, daphne, docker" # fails loudly if the install did
  touch "$stamp"
fi
