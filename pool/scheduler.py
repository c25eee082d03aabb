"""Which daemon takes the next build. Pure functions over the pool: no jobs, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pool.models import DockerDaemon


def choose_daemon(
    daemons: Iterable[DockerDaemon],
    running: Mapping[int, int],
    prefer: int | None = None,
    group: str = "",
    *,
    whole: bool = False,
    spare: Callable[[DockerDaemon], tuple[int, int]] | None = None,
) -> DockerDaemon | None:
    """A daemon of `group` that takes builds and has a free slot (all of its
    slots free, for a build that needs a `whole` daemon), or None if all are full.

    `group` '' is the shared pool (daemons without a group); a named group's
    daemons are chosen only for that group, and it only gets them.
    `running` maps a daemon's primary key to the slots its active builds take.
    First, the daemon whose `spare` cost is lowest (`Lookahead`: what taking it
    would cost builds waiting for a platform), then the daemon with primary key
    `prefer` (the one whose layer cache is warm for this image) when it has
    room; otherwise the least loaded for its capacity, ties to fewer builds in
    absolute terms, then to the older row, so the choice is stable.
    """
    with_room = [d for d in daemons if d.group == group and _has_room(d, running, whole=whole)]
    if len(with_room) < 2:
        return with_room[0] if with_room else None
    cost = spare or (lambda daemon: (0, 0))
    return min(
        with_room,
        key=lambda d: (cost(d), d.pk != prefer, running.get(d.pk, 0) / d.capacity, running.get(d.pk, 0), d.pk),
    )


class Lookahead:
    """What giving a daemon to one build costs the builds waiting for a platform
    (multi-platform children) in the same daemon group, so that a build any of
    several daemons could take leaves the daemons few others can.

    `waiting` counts the waiting builds per (group, platform) (the one being
    placed left out by the caller: `without`). For a daemon, the cost is
    (platforms it would strand, platforms it builds): a platform is stranded
    when the daemons of the group with room (for a build that needs a `whole`
    daemon, if those do) that build it are no more than the builds waiting for
    it, this daemon among them; then fewer of the waited-for platforms at all.
    One pass over the pool per waited-for platform and choice: cheap next to
    the database."""

    def __init__(self, daemons: Iterable[DockerDaemon], running: Mapping[int, int], *, whole: bool) -> None:
        self.daemons = list(daemons)
        self.running = running
        self.whole = whole
        self.waiting: dict[tuple[str, str], int] = {}

    def add(self, group: str, platform: str, count: int = 1) -> None:
        if platform:
            self.waiting[(group, platform)] = self.waiting.get((group, platform), 0) + count

    def without(self, group: str, platform: str) -> Callable[[DockerDaemon], tuple[int, int]] | None:
        """The cost of each daemon of `group` for a build of `platform` ('' : any), or None if nothing waits."""
        needed = {
            p: n - (p == platform) for (g, p), n in self.waiting.items() if g == group and n - (p == platform) > 0
        }
        if not needed:
            return None
        free = {
            p: {d.pk for d in self.daemons if d.group == group and d.builds_platform(p) and self._free(d)}
            for p in needed
        }

        def cost(daemon: DockerDaemon) -> tuple[int, int]:
            builds = [p for p in needed if daemon.builds_platform(p)]
            stranded = sum(1 for p in builds if daemon.pk in free[p] and len(free[p]) <= needed[p])
            return stranded, len(builds)

        return cost

    def _free(self, daemon: DockerDaemon) -> bool:
        return _has_room(daemon, self.running, whole=self.whole)


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
