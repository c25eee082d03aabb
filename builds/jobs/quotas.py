"""A team's fair share of the farm at submit: its concurrency and hourly limits.

In "reject" mode (the team's `over_limit`, else GENERATOR_TEAM_OVER_LIMIT) a
submit over a limit is refused with 429 and Retry-After:
- concurrent builds: the team's builds not yet ended (waiting ones too, or
  "reject" would just queue them) against `max_concurrent_builds`; Retry-After
  is a guess (GENERATOR_TEAM_RETRY_AFTER_SECONDS): nobody knows when a build ends.
- builds per hour: the team's submissions in the sliding hour before now against
  `max_builds_per_hour`; Retry-After is when the oldest of them leaves the hour.

In "queue" mode a submit is taken and the dispatcher holds the team's builds
back instead (builds/jobs/dispatch.py): no more running than the concurrency limit,
and no more started in a sliding hour than the hourly limit.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from builds.models import BuildJob
from lib.errors import TooManyBuilds
from teams.models import Team

HOUR = timedelta(hours=1)


def check_submit(team: Team | None) -> None:
    """Raises TooManyBuilds if `team` may not submit one more build now.

    Called once early (a refused submit stores nothing) and again inside the
    transaction that creates the job, where it first locks the team's row: two
    submits at once then count one after the other, so neither passes on a count
    that the other is about to change. (SQLite's IMMEDIATE transactions are
    serial anyway; PostgreSQL needs the row lock.)"""
    if team is None or team.over_limit_mode != Team.OverLimit.REJECT:
        return
    if not (team.max_concurrent_builds or team.max_builds_per_hour):
        return
    if transaction.get_connection().in_atomic_block:
        # Its own statement: in READ COMMITTED a statement that waited for the lock
        # still reads the other tables as they were when it began, so counts read in
        # the same statement would miss the job the lock's last holder just committed.
        Team.objects.select_for_update().filter(pk=team.pk).values_list("pk", flat=True).first()
    now = timezone.now()
    active, oldest_counted = _counts(team, now)
    if (limit := team.max_concurrent_builds) and active >= limit:
        raise TooManyBuilds(
            f"team {team.slug} has {active} builds waiting or running; its limit is {limit} concurrent builds"
            " (max_concurrent_builds): try again when one has ended",
            settings.GENERATOR_TEAM_RETRY_AFTER_SECONDS,
        )
    if (limit := team.max_builds_per_hour) and oldest_counted is not None:
        wait = (oldest_counted + HOUR - now).total_seconds()
        raise TooManyBuilds(
            f"team {team.slug} submitted {limit} builds in the last hour; its limit is {limit} builds per hour"
            f" (max_builds_per_hour): the next may be submitted in {math.ceil(wait)} s",
            math.ceil(wait),
        )


def _counts(team: Team, now: datetime) -> tuple[int, datetime | None]:
    """(the team's builds not yet ended, the limit-th newest of its submissions in
    the sliding hour or None), in one statement. The second is one row, however
    many the team submitted (down the (team, created_at) index): if there is one,
    the team is at its hourly limit, and that one leaves the hour first.

    Plain SQL: the ORM took ~1.2 ms of CPU to build this statement, the database
    ~0.1 ms to answer it, and a submit asks it twice (docs/benchmarks.md)."""
    table = connection.ops.quote_name(BuildJob._meta.db_table)
    statuses = ", ".join(["%s"] * len(BuildJob.ACTIVE))
    active = f"SELECT COUNT(*) FROM {table} WHERE team_id = %s AND status IN ({statuses})"
    limit = team.max_builds_per_hour or 0
    oldest = (
        f"SELECT created_at FROM {table} WHERE team_id = %s AND created_at > %s"
        " ORDER BY created_at DESC LIMIT 1 OFFSET %s"
    )
    since = connection.ops.adapt_datetimefield_value(now - HOUR)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT ({active}), ({oldest})", [team.pk, *BuildJob.ACTIVE, team.pk, since, max(limit - 1, 0)])
        count, oldest_counted = cursor.fetchone()
    if isinstance(oldest_counted, str):  # SQLite: text, or a naive datetime (UTC) by its column's type
        oldest_counted = datetime.fromisoformat(oldest_counted)
    if oldest_counted is not None and oldest_counted.tzinfo is None:
        oldest_counted = oldest_counted.replace(tzinfo=UTC)
    return count, oldest_counted if limit else None
