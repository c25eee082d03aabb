"""The sliding hour of dispatches, as the fair share and queue mode's hourly
limit read it (builds/dispatch.py, BuildJob.queue_position): per team, asked
only of the teams that have a build waiting, one step down the (team,
dispatched_at) index each, so that a farm that started 100,000 builds this hour
does not read them all on every submit and every pass."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from teams.models import Team

from .models import BuildJob

HOUR = timedelta(hours=1)


def _in_the_hour() -> QuerySet:
    return BuildJob.objects.filter(dispatched_at__gte=timezone.now() - HOUR)


def last_starts(team_ids: set[int]) -> dict[int, datetime]:
    """Per team id of `team_ids` (0: builds of no team): when its last build was
    given a daemon, if that was in the sliding hour before now; the others are left out."""
    latest = _in_the_hour().order_by("-dispatched_at").values("dispatched_at")
    found: dict[int, datetime] = {}
    if named := team_ids - {0}:
        of_team = Subquery(latest.filter(team=OuterRef("pk"))[:1])
        rows = Team.objects.filter(pk__in=named).annotate(last=of_team).values_list("pk", "last")
        found.update({pk: last for pk, last in rows if last is not None})
    if 0 in team_ids and (last := latest.filter(team__isnull=True).values_list("dispatched_at", flat=True).first()):
        found[0] = last
    return found


def started_this_hour(team_id: int, up_to: int) -> int:
    """How many of a team's builds were given a daemon in the sliding hour,
    counted up to `up_to` (its hourly limit: all the limit needs to know)."""
    return _in_the_hour().filter(team_id=team_id).order_by().values("pk")[:up_to].count()
