"""Which daemon takes the next build. Pure functions over the pool: no jobs, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .models import DockerDaemon


def least_loaded(daemons: Iterable[DockerDaemon], running: Mapping[int, int]) -> DockerDaemon | None:
    """The enabled daemon with the fewest running builds for its capacity.

    `running` maps a daemon's primary key to its active builds. Ties go to the
    daemon with fewer builds in absolute terms, then to the older row, so the
    choice is stable.
    """
    candidates = [d for d in daemons if d.enabled and d.capacity > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda d: (running.get(d.pk, 0) / d.capacity, running.get(d.pk, 0), d.pk))
