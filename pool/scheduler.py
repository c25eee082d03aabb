"""Which daemon takes the next build. Pure functions over the pool: no jobs, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .models import DockerDaemon


def choose_daemon(
    daemons: Iterable[DockerDaemon],
    running: Mapping[int, int],
    prefer: int | None = None,
    group: str = "",
    *,
    whole: bool = False,
) -> DockerDaemon | None:
    """A daemon of `group` that takes builds and has a free slot (all of its
    slots free, for a build that needs a `whole` daemon), or None if all are full.

    `group` '' is the shared pool (daemons without a group); a named group's
    daemons are chosen only for that group, and it only gets them.
    `running` maps a daemon's primary key to the slots its active builds take. The daemon with
    primary key `prefer` (the one whose layer cache is warm for this image) wins
    when it has room; otherwise the least loaded for its capacity, ties to fewer
    builds in absolute terms, then to the older row, so the choice is stable.
    """
    with_room = [d for d in daemons if d.group == group and _has_room(d, running, whole=whole)]
    for daemon in with_room:
        if daemon.pk == prefer:
            return daemon
    if not with_room:
        return None
    return min(with_room, key=lambda d: (running.get(d.pk, 0) / d.capacity, running.get(d.pk, 0), d.pk))


def platform_daemons(
    daemons: Iterable[DockerDaemon], platform: str, running: Mapping[int, int], *, whole: bool = False
) -> list[DockerDaemon]:
    """The daemons that may take a build for `platform` ('' : any): those that run
    it natively while one of them has room, else those that emulate it too."""
    daemons = list(daemons)
    if not platform:
        return daemons
    native = [d for d in daemons if d.native_platform == platform]
    if any(_has_room(d, running, whole=whole) for d in native):
        return native
    return [d for d in daemons if d.builds_platform(platform)]


def groups_with_room(daemons: Iterable[DockerDaemon], running: Mapping[int, int]) -> set[str]:
    """The daemon groups ('' for the shared pool) with a daemon that could take a build now."""
    return {d.group for d in daemons if _has_room(d, running)}


def _has_room(daemon: DockerDaemon, running: Mapping[int, int], *, whole: bool = False) -> bool:
    taken = running.get(daemon.pk, 0)
    return daemon.takes_builds and (taken == 0 if whole else taken < daemon.capacity)
