"""Which daemon takes the next build. Pure functions over the pool: no jobs, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .models import DockerDaemon


def choose_daemon(
    daemons: Iterable[DockerDaemon], running: Mapping[int, int], prefer: int | None = None
) -> DockerDaemon | None:
    """A daemon that takes builds and has a free slot, or None if all are full.

    `running` maps a daemon's primary key to its active builds. The daemon with
    primary key `prefer` (the one whose layer cache is warm for this image) wins
    when it has room; otherwise the least loaded for its capacity, ties to fewer
    builds in absolute terms, then to the older row, so the choice is stable.
    """
    with_room = [d for d in daemons if d.takes_builds and running.get(d.pk, 0) < d.capacity]
    for daemon in with_room:
        if daemon.pk == prefer:
            return daemon
    if not with_room:
        return None
    return min(with_room, key=lambda d: (running.get(d.pk, 0) / d.capacity, running.get(d.pk, 0), d.pk))
