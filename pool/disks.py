"""The filesystem a daemon's data root lives on, measured where the caller sees it.

`make up` gives each daemon's data root a filesystem of its own of a size the
operator sets (scripts/localfarm.py, mount_data_disk), so a build that writes
without end fills that, not the disk the database, the registry and the logs
are on. A daemon's worker runs on the daemon's host (it makes its builds'
cgroups there, builds/engine/cgroups.py), so it can look at the data root the daemon
names (`DockerRootDir` of `GET /info`; under --userns-remap a folder below
--data-root, on the same filesystem) with statvfs. Where it cannot (the path is
not there, e.g. a compose worker without the daemon's data volume) nothing is
measured and nothing is claimed: the farm never takes a step's printed words for
a full disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker

from pool.models import DockerDaemon
from pool.tls import client_settings

logger = logging.getLogger(__name__)

MIB = 1 << 20
# Full: less free than this, or than 1% of the filesystem, whichever is more.
# ext4 made by make up keeps no blocks for root, so a writer that met ENOSPC
# leaves a few blocks at most.
FULL_MARGIN_BYTES = 16 * MIB


@dataclass(frozen=True)
class DataDisk:
    path: str  # the daemon's data root, as it names it
    size: int  # bytes of the filesystem it is on
    free: int  # bytes an unprivileged writer may still take

    @property
    def full(self) -> bool:
        return self.free < max(FULL_MARGIN_BYTES, self.size // 100)

    def describe(self) -> str:
        return f"{self.free / MIB:.1f} MiB free of {self.size / MIB:.0f} MiB on its data root {self.path}"


def measure(daemon: DockerDaemon, *, api_version: str, timeout: float) -> DataDisk | None:
    """The daemon's data root filesystem as this host sees it, or None where it
    cannot be seen (unreachable daemon, path not on this host)."""

    def info() -> dict:
        api = docker.APIClient(**client_settings(daemon), version=api_version, timeout=timeout)
        try:
            return api.info()
        finally:
            api.close()

    return measure_by(info, daemon.name)


def measure_by(info: Callable[[], dict], name: str) -> DataDisk | None:
    """As `measure`, asking `info` (an engine session's `GET /info`: a build's own, which saves it
    a client and a connection of their own)."""
    try:
        root = info().get("DockerRootDir") or ""
    except Exception as exc:  # never the build's failure: the caller goes on without a measure
        logger.info("could not ask daemon %s for its data root: %s", name, exc)
        return None
    return statvfs(root) if root else None


def statvfs(path: str) -> DataDisk | None:
    try:
        stat = os.statvfs(path)
    except OSError:  # not on this host
        return None
    return DataDisk(path, stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize)


class FullestWatch:
    """The data root's filesystem sampled while a build runs (a statvfs, at most
    every `every` seconds): a step that fills the disk fails, and BuildKit lets
    go of its files within a second or so, before the build's error reaches the
    worker; the fullest sample keeps what the disk looked like meanwhile."""

    def __init__(self, first: DataDisk, every: float = 0.05) -> None:
        self.fullest, self.every = first, every
        self._last = time.monotonic()

    def sample(self, *, now: bool = False) -> None:
        """Takes a sample, if the last is `every` seconds old (or `now`)."""
        moment = time.monotonic()
        if not now and moment - self._last < self.every:
            return
        self._last = moment
        if (disk := statvfs(self.fullest.path)) is not None and disk.free < self.fullest.free:
            self.fullest = disk


def record_size(daemon_id: int, disk: DataDisk) -> None:
    """The size housekeeping holds the daemon's limits within (DockerDaemon.*_limit_bytes)."""
    DockerDaemon.objects.filter(pk=daemon_id).update(data_disk_bytes=disk.size)


def report(daemon_names: list[str], *, api_version: str, timeout: float) -> None:
    """At a worker's start: the size of each of its daemons' data root filesystems."""
    for daemon in DockerDaemon.objects.filter(name__in=daemon_names):
        if disk := measure(daemon, api_version=api_version, timeout=timeout):
            record_size(daemon.pk, disk)
