"""What the builds on daemons take, read once per dispatch pass: one grouped
query where there were four (slots per daemon, builds per image, per
repository and per team), each a scan of the active builds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.db.models import Count

from builds.jobs.limits import needs_whole_daemon
from builds.models import BuildJob


@dataclass
class ActiveLoad:
    slots: dict[int, int] = field(default_factory=dict)  # per daemon id: as dispatch.slots_in_use counts them
    per_image: dict[str, int] = field(default_factory=dict)
    per_repository: dict[int, int] = field(default_factory=dict)
    running: dict[int, int] = field(default_factory=dict)  # per team id, 0 for no team


def active_load(daemons) -> ActiveLoad:
    capacity = {daemon.pk: daemon.capacity for daemon in daemons}
    rows = (
        BuildJob.objects.filter(status__in=BuildJob.ACTIVE, daemon__isnull=False)
        .values("daemon", "builder", "image", "repository", "team")
        .annotate(active=Count("id"))
        .order_by()
    )
    slots, images, repositories, teams = Counter(), Counter(), Counter(), Counter()
    for row in rows:
        # A build that needs its daemon to itself takes every slot of it (limits.py).
        each = capacity.get(row["daemon"], 1) if needs_whole_daemon(row["builder"]) else 1
        slots[row["daemon"]] += row["active"] * each
        images[row["image"]] += row["active"]
        if row["repository"] is not None:
            repositories[row["repository"]] += row["active"]
        teams[row["team"] or 0] += row["active"]
    return ActiveLoad(dict(slots), dict(images), dict(repositories), dict(teams))
