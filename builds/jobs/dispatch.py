"""The farm's own queue: which waiting job goes to which daemon, and when.

A job waits in the database (queued, no daemon) until a daemon that takes
builds has a free slot; only then is its task sent, by name, to that daemon's
Celery queue. So a daemon's queue never holds more than its capacity, a full
pool makes jobs wait in order (with a position), and nothing is piled onto a
daemon that may be about to fail.

Daemon groups: a job of a repository pinned to a group goes only to daemons of
that group, and every other job only to the shared daemons (no group).

Fair share between teams: free slots go to the team with the fewest builds
running (on a daemon) that has a build waiting, and inside a team to its oldest
build; a tie goes to the team whose last build started longest ago (teams take
turns), then to the team whose next build is older. So one team's 500
waiting builds do not hold another team's one build behind them: that build
starts at the next free slot. A team at its concurrency limit, or (queue mode)
at its hourly limit of started builds, gets no more (teams/models.py,
builds/jobs/quotas.py). Builds of no team count as one team.

Platforms: a multi-platform child goes to a daemon that builds its platform,
native first (pool/scheduler.py `platform_daemons`), and among those the
daemon whose loss strands no other waiting child (`Lookahead`): an amd64 child
does not take the only daemon that builds arm64 while an arm64 child waits and
another daemon could build amd64. That comes before the warm daemon and the load.

`dispatch()` runs after every submit and every finished build, and every few
seconds from beat (which also catches what a lost message or a sick daemon left
behind: see `rescue_stranded`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from builds.jobs import transitions
from builds.jobs.active_load import active_load
from builds.jobs.fair_share import FairQueue
from builds.jobs.limits import needs_whole_daemon
from builds.models import WAITING, BuildJob, last_starts, started_this_hour
from lib.redis_clients import farm_redis
from pool.models import DockerDaemon
from pool.scheduler import Lookahead, choose_daemon, groups_with_room, platform_daemons
from teams.models import Team

logger = logging.getLogger(__name__)

RUN_BUILD_TASK = "builds.run_build"
DISPATCH_BATCH = 200
# What a pass reads of each daemon (pool/scheduler.py's choices, the queue's name): not its TLS keys, errors
# and disk figures, read for every daemon on every pass (a third of the daemons' read at 128: docs/benchmarks.md).
DAEMON_FIELDS = (
    "name",
    "capacity",
    "group",
    "enabled",
    "draining",
    "healthy",
    "worker_online",
    "disk_full",
    "native_platform",
    "emulated_platforms",
    "detected_emulation",
)
# And of each waiting job in its batch, with its repository and team (the limits, the group, the fair share).
JOB_FIELDS = (
    "image",
    "attempt",
    "builder",
    "platform",
    "created_at",
    "repository",
    "repository__daemon_group",
    "repository__max_concurrent_builds",
    "team",
    "team__max_concurrent_builds",
    "team__max_builds_per_hour",
    "team__over_limit",
)


class NoDaemonAvailable(Exception):
    pass


def ensure_pool_exists(group: str = "") -> None:
    """A job nobody could ever build is refused at the door rather than queued forever.

    `group` is the daemon group the job is pinned to ('' for the shared pool):
    only daemons of that very group may build it."""
    if DockerDaemon.objects.filter(enabled=True, group=group).exists():
        return
    if group:
        raise NoDaemonAvailable(
            f"no enabled Docker daemon in daemon group {group!r}, which the repository is pinned to:"
            " an operator must add or enable one in that group, or unpin the repository"
        )
    raise NoDaemonAvailable(
        "no enabled Docker daemon in the pool (the shared daemons, without a group): an operator must add or enable one"
    )


def slots_in_use(daemons) -> dict[int, int]:
    """The slots of each daemon its active builds take: one each, or all of
    them for a build that must have its daemon to itself (limits.py)."""
    capacity = {daemon.pk: daemon.capacity for daemon in daemons}
    rows = (
        BuildJob.objects.filter(status__in=BuildJob.ACTIVE, daemon__isnull=False)
        .values("daemon", "builder")
        .annotate(active=Count("id"))
    )
    load: dict[int, int] = {}
    for row in rows:
        slots = capacity.get(row["daemon"], 1) if needs_whole_daemon(row["builder"]) else 1
        load[row["daemon"]] = load.get(row["daemon"], 0) + row["active"] * slots
    return load


def _team_limits(jobs: list[BuildJob]) -> dict[int, tuple[int | None, int | None]]:
    """Per team id: its concurrency limit and (queue mode only) its hourly limit
    of started builds, as the dispatcher holds them. Teams with neither are left out."""
    limits = {}
    for job in jobs:
        team = job.team
        if team is None or team.pk in limits:
            continue
        hourly = team.max_builds_per_hour if team.over_limit_mode == Team.OverLimit.QUEUE else None
        if team.max_concurrent_builds or hourly:
            limits[team.pk] = (team.max_concurrent_builds, hourly)
    return limits


def _over_limit(job: BuildJob, per_image: dict[str, int], per_repository: dict[int, int]) -> bool:
    """One busy image or repository may not take the whole pool."""
    repository_limit = job.repository.max_concurrent_builds if job.repository else None
    if repository_limit:
        return per_repository.get(job.repository_id, 0) >= repository_limit
    limit = settings.GENERATOR_MAX_BUILDS_PER_IMAGE
    return bool(limit) and per_image.get(job.image, 0) >= limit


def helper_tags_in_use() -> dict[str, set[int]]:
    """Per multi-platform child image (its repository's helper tag for its platform,
    multiplatform.child_tag), the daemons where one of them is active. Two on one
    daemon could push each other's image under the tag they share: where
    BuildKit builds share daemons (GENERATOR_BUILDKIT_SHARED_DAEMONS) they are
    kept apart; else a BuildKit build has its daemon to itself anyway."""
    if needs_whole_daemon("buildkit"):
        return {}
    rows = BuildJob.objects.filter(status__in=BuildJob.ACTIVE, daemon__isnull=False, parent__isnull=False)
    in_use: dict[str, set[int]] = {}
    for image, daemon in rows.values_list("image", "daemon"):
        in_use.setdefault(image, set()).add(daemon)
    return in_use


def warm_daemon_for(job: BuildJob) -> int | None:
    """The daemon that last built this image repository: its layer cache is warm."""
    last = (
        BuildJob.objects.filter(untagged_image=job.image_repository, daemon__isnull=False, started_at__isnull=False)
        .exclude(pk=job.pk)
        .order_by("-started_at")
        .values_list("daemon", flat=True)
        .first()
    )
    return last


def _preferred_daemon(
    job: BuildJob, group: str, daemons, load: dict[int, int], warm: dict[str, int | None]
) -> int | None:
    """The warm daemon for the job, asked of the database only when two daemons
    of its group have room (else there is no choice to make), and once per image
    repository in a pass."""
    if sum(1 for d in daemons if d.group == group and load.get(d.pk, 0) < d.capacity) < 2:
        return None
    if job.image_repository not in warm:
        warm[job.image_repository] = warm_daemon_for(job)
    return warm[job.image_repository]


# Any constants: the PostgreSQL advisory lock that dispatchers take in turn, and
# the Redis counter of passes asked for.
DISPATCH_LOCK = 0x67656E65
PASSES_ASKED = "generator:dispatch:asked"


def dispatch() -> int:
    """Gives waiting jobs, in fair-share order, to daemons with room. Answers how many.

    One dispatcher at a time, so two never fill the same free slot twice.
    Nothing waiting (most finished builds, on a quiet farm): nothing to do.

    On PostgreSQL a dispatcher that finds another pass running does not queue
    behind it: it counts its ask in Redis and leaves, and the running one
    passes again if an ask came while it ran. The ask is counted after the
    caller's own commit, so either the running pass saw the caller's job or
    freed slot, or it sees the count change and passes again. On SQLite (and
    if Redis cannot be reached) dispatchers wait for each other's write lock.
    """
    if not BuildJob.objects.filter(WAITING).exists():
        return 0
    if connection.vendor != "postgresql":
        return _pass(wait=True)
    try:
        asked = _asks()
        asked.incr(PASSES_ASKED)
        assigned = 0
        while True:
            seen = int(asked.get(PASSES_ASKED) or 0)
            done = _pass(wait=False)
            if done is None:
                return assigned  # the running pass will pass again for this ask
            assigned += done
            if int(asked.get(PASSES_ASKED) or 0) == seen:
                return assigned
    except redis.RedisError:
        logger.warning("could not count a dispatch ask in Redis; waiting for the running pass", exc_info=True)
        return _pass(wait=True)


_asks = farm_redis


def _pass(*, wait: bool) -> int | None:
    """One pass in one transaction. None if `wait` is off and another pass holds the lock."""
    sends = []
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # An advisory lock, not the daemon rows: the health check's updates
            # of those must not wait for a pass. (SQLite's IMMEDIATE transaction
            # already holds the database's write lock.)
            with connection.cursor() as cursor:
                if wait:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK])
                else:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [DISPATCH_LOCK])
                    if not cursor.fetchone()[0]:
                        return None
        sends, passed_over = _fill(few=True)
        if passed_over:
            # A build of the few read was passed over (its image or repository at its limit, its group full, no
            # daemon for it) and the pool has room: the builds behind it may go, as far as a whole batch reads.
            sends += _fill(few=False)[0]
        for send in sends:
            transaction.on_commit(lambda send=send: send_build_task(*send))
    return len(sends)


def _fill(*, few: bool) -> tuple[list[tuple], bool]:
    """Gives waiting jobs to daemons with room, inside the pass's transaction:
    the sends to make once it commits, and whether a job read was passed over
    while the pool still had room.

    `few`: read no more of each team's queue than there are free slots (the
    first `free` of each, in the order a whole batch starts with), when that
    is fewer than a batch: a build's end frees one slot, and a pass that read
    200 jobs to start one was most of a build's cost in its worker (docs/benchmarks.md).
    Not while a multi-platform child waits: the lookahead counts the children
    of the whole batch."""
    sends: list[tuple] = []
    daemons = list(DockerDaemon.objects.filter(enabled=True, draining=False, healthy=True).only(*DAEMON_FIELDS))
    if not daemons:
        return sends, False
    active = active_load(daemons)  # one query for the four loads (builds/jobs/active_load.py)
    load = active.slots
    open_groups = groups_with_room(daemons, load)
    if not open_groups:
        return sends, False  # the pool is full
    per_image, per_repository, running = active.per_image, active.per_repository, active.running
    # Only jobs some daemon could take now: a long queue of a full group must
    # not fill the batch ahead of jobs the rest of the pool could build. Each
    # team's oldest come first (ranked inside their team), so every team with
    # jobs waiting is in the batch however long another team's queue is.
    waiting = (
        BuildJob.objects.filter(WAITING)
        .filter(_pinned_to(open_groups))
        .select_related("repository", "team")
        .only(*JOB_FIELDS)
        .annotate(team_rank=Window(RowNumber(), partition_by=[F("team_id")], order_by=[F("created_at"), F("id")]))
        .order_by("team_rank", "created_at", "id")
    )
    free = sum(max(d.capacity - load.get(d.pk, 0), 0) for d in daemons)
    if few and free < DISPATCH_BATCH and not BuildJob.objects.filter(WAITING).exclude(platform="").exists():
        waiting = waiting.filter(team_rank__lte=free)
    else:
        few = False
    batch = list(waiting[:DISPATCH_BATCH])
    limits = _team_limits(batch)
    # The sliding hour's starts, of the teams in the batch only (builds/models/jobs.py, last_starts).
    started = {team: started_this_hour(team, hourly) for team, (_, hourly) in limits.items() if hourly}
    last_start = last_starts({job.team_id or 0 for job in batch})
    warm: dict[str, int | None] = {}
    # Only multi-platform children wait for a platform, and they are BuildKit builds.
    lookahead = Lookahead(daemons, load, whole=needs_whole_daemon("buildkit"))
    tags_in_use = helper_tags_in_use()
    for job in batch:
        lookahead.add(job.daemon_group, job.platform)
    queue = FairQueue(batch, running, last_start)
    passed_over = False
    for job in queue:
        group = job.daemon_group
        if group not in open_groups:
            passed_over = True
            continue  # its group filled up during this pass
        concurrent, per_hour = limits.get(job.team_id, (None, None))
        if (concurrent and running.get(job.team_id or 0, 0) >= concurrent) or (
            per_hour and started.get(job.team_id or 0, 0) >= per_hour
        ):
            # The team has its share: its jobs wait (the rest of its queue too), others' may go.
            queue.hold_team()
            continue
        if _over_limit(job, per_image, per_repository):
            passed_over = True
            continue  # it has its share of the pool; later jobs of others may go
        prefer = _preferred_daemon(job, group, daemons, load, warm)
        whole = needs_whole_daemon(job.builder)
        elsewhere = [d for d in daemons if d.pk not in tags_in_use.get(job.image, ())] if job.platform else daemons
        able = platform_daemons(elsewhere, job.platform, load, whole=whole)  # a multi-platform child's
        spare = lookahead.without(group, job.platform)
        daemon = choose_daemon(able, load, prefer=prefer, group=group, whole=whole, spare=spare)
        if daemon is None:
            # A build that needs a whole daemon, or one of its platform, may wait while others fit.
            if not whole and not job.platform:
                open_groups.discard(group)
            if not open_groups:
                break  # the pool is full
            passed_over = True
            continue
        if transitions.assign(job.id, daemon.pk):
            queue.started()
            load[daemon.pk] = load.get(daemon.pk, 0) + (daemon.capacity if whole else 1)
            per_image[job.image] = per_image.get(job.image, 0) + 1
            if job.repository_id:
                per_repository[job.repository_id] = per_repository.get(job.repository_id, 0) + 1
            started[job.team_id or 0] = started.get(job.team_id or 0, 0) + 1
            lookahead.add(group, job.platform, -1)
            if job.platform and not whole:
                tags_in_use.setdefault(job.image, set()).add(daemon.pk)
            sends.append((job.id, job.attempt, daemon.pk, daemon.queue))
        else:
            passed_over = True
    return sends, few and passed_over and bool(open_groups)


def _pinned_to(groups: set[str]) -> Q:
    """Jobs whose daemon group is one of `groups` ('' is the shared pool: jobs
    without a repository, or whose repository is not pinned)."""
    condition = Q(repository__isnull=True) | Q(repository__daemon_group="") if "" in groups else Q()
    if named := sorted(groups - {""}):
        condition |= Q(repository__daemon_group__in=named)
    return condition


def send_build_task(job_id: str, attempt: int, daemon_id: int, queue: str) -> None:
    try:
        current_app.send_task(RUN_BUILD_TASK, args=[job_id, attempt, daemon_id], queue=queue)
    except Exception:
        # The job stays assigned with no message; rescue_stranded puts it back
        # in the farm's queue once it is stale.
        logger.warning("could not send build %s to %s; it will be dispatched again", job_id, queue, exc_info=True)


def rescue_stranded() -> int:
    """Puts back in the farm's queue the jobs given to a daemon but never claimed:
    the daemon stopped taking builds (sick, draining, disabled) or moved to
    another daemon group, or the message was lost (Redis restarted) or not sent,
    or its worker is down."""
    stale = timezone.now() - timedelta(seconds=settings.GENERATOR_DISPATCH_STALE_SECONDS)
    assigned = BuildJob.objects.filter(status=BuildJob.Status.QUEUED, daemon__isnull=False).select_related(
        "daemon", "repository"
    )
    rescued = 0
    for job in assigned:
        gone = not job.daemon.takes_builds or job.daemon.group != job.daemon_group
        stuck = job.dispatched_at is None or job.dispatched_at < stale
        if (gone or stuck) and transitions.unassign(job.id, job.attempt, job.daemon_id):
            logger.info("job %s went back to the farm queue from %s", job.id, job.daemon.name)
            rescued += 1
    return rescued
