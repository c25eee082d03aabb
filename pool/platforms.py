"""Platforms (os/arch[/variant], as in OCI image indexes) that daemons build:
their engine's own, and those QEMU's binfmt handlers on their host emulate.
Pure functions and file reads: no jobs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ValidationError

PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/v[0-9]+)?$")

# uname's machine names (the engine's Architecture) -> OCI's architecture and variant.
_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm/v7",
    "armv6l": "arm/v6",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
# QEMU's binfmt handler names (/proc/sys/fs/binfmt_misc/qemu-NAME) -> the platform it runs.
_QEMU = {
    "aarch64": "linux/arm64",
    "arm": "linux/arm/v7",
    "ppc64le": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
    "i386": "linux/386",
    "x86_64": "linux/amd64",
}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def from_engine(os_type: str, architecture: str) -> str:
    """The platform of an engine's `docker info` (OSType linux, Architecture x86_64)."""
    arch = _ARCHITECTURES.get(architecture.lower(), architecture.lower())
    return f"{os_type.lower()}/{arch}" if os_type and arch else ""


def check(platform: str) -> str:
    """`platform` as the farm spells it, or ValueError saying why not."""
    platform = platform.strip().lower()
    if not PLATFORM.fullmatch(platform):
        raise ValueError(f"{platform!r} is not a platform: write os/arch, e.g. linux/amd64 or linux/arm64")
    return platform


def split(text: str) -> list[str]:
    return list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))


def validate_list(value: str) -> None:
    """A daemon's `emulated_platforms`: empty, 'none', or os/arch, comma-separated."""
    if value.strip() == "none":
        return
    for platform in split(value):
        try:
            check(platform)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def detect_emulation(binfmt_dir: Path = BINFMT_DIR) -> list[str]:
    """The platforms an enabled QEMU binfmt handler of this host runs: one listing
    of the directory, then a read of each qemu- handler in it (cheap enough for
    every worker heartbeat)."""
    try:
        present = {entry.name for entry in os.scandir(binfmt_dir)}
    except OSError:
        return []
    found = []
    for name, platform in _QEMU.items():
        if f"qemu-{name}" not in present:
            continue
        try:
            state = (binfmt_dir / f"qemu-{name}").read_text().splitlines()
        except OSError:
            continue
        if state and state[0].strip() == "enabled":
            found.append(platform)
    return found
