"""Which daemons a pushed image may warm, and the disk's bound on it. Pure
functions over the pool: no jobs, no I/O (builds/worker/prepull.py pulls)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pool.disks import DataDisk
from pool.models import DockerDaemon


def targets(
    daemons: Iterable[DockerDaemon], source: DockerDaemon, group: str, repository: str, most: int
) -> list[DockerDaemon]:
    """The daemons to warm after `source` pushed an image of `repository` from a
    build of daemon group `group` ('' : the shared pool): those that may build
    it (its group only: a daemon of another group may be another team's) and
    take builds now (enabled, not draining, healthy, a worker online, disk not
    full), that run the same platform natively where both are known (another
    platform's layers are no cache for it), and whose farm images are under
    their limit as last measured (a pull would only make the next prune drop
    another image). At most `most` of them (0: every one), the same ones for
    every push of a repository while the pool stays as it is (the highest
    hashes of repository and daemon name): a pool of 128 daemons pulls each
    image onto a few, not all, and a repository's rebuilds find it warm there."""
    eligible = _eligible(daemons, source, group)
    if most:
        eligible = sorted(eligible, key=lambda daemon: _rank(repository, daemon.name))[:most]
    return eligible


def _rank(repository: str, daemon_name: str) -> str:
    return hashlib.sha256(f"{repository}\0{daemon_name}".encode()).hexdigest()


def _eligible(daemons: Iterable[DockerDaemon], source: DockerDaemon, group: str) -> list[DockerDaemon]:
    chosen = []
    for daemon in daemons:
        if daemon.pk == source.pk or daemon.group != group or not daemon.takes_builds:
            continue
        if daemon.native_platform and source.native_platform and daemon.native_platform != source.native_platform:
            continue
        if daemon.disk_farm_images_bytes is not None and daemon.disk_farm_images_bytes >= daemon.images_limit_bytes:
            continue
        chosen.append(daemon)
    return chosen


def disk_refusal(disk: DataDisk | None, max_fraction: float) -> str:
    """Why the daemon's data disk takes no pre-pull now ('' : it may): used at or
    above `max_fraction` of its size, or full. Where the worker's host cannot see
    the data root (None), the images limit in `targets` is the only bound."""
    if disk is None:
        return ""
    used = 1 - disk.free / disk.size if disk.size else 1.0
    if disk.full or used >= max_fraction:
        return f"its data disk is {used:.0%} used, at or above the bound of {max_fraction:.0%} ({disk.describe()})"
    return ""
