#!/usr/bin/env bash
# Installs what the farm and its tests need, only what is missing:
# Debian's packages (Docker Engine, registry, Redis, busybox, docker-compose) and
# a Python venv in .venv from requirements/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements="${1:-requirements/base.txt}"
# busybox-static, not busybox: the base image needs a statically linked binary.
# nftables, socat, iproute2: each daemon's sandbox (scripts/sandbox.py).
# openssh-client: ssh clone URLs with deploy keys (builds/sources.py).
packages=(docker.io docker-registry redis-server busybox-static docker-compose git nftables socat iproute2 openssh-client)
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
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
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
