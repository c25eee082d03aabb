"""Celery tasks. Thin: they take primary keys and call domain functions.

`builds.run_build` goes to the queue of the job's daemon (sent by name from
dispatch.py); the `farm.*` tasks run from beat on the "farm" queue, each with
time limits and, on PostgreSQL, lock and statement timeouts
(lib/control_tasks.py): quick ones GENERATOR_CONTROL_TASK_SECONDS,
housekeeping GENERATOR_HOUSEKEEPING_TASK_SECONDS.
"""

from __future__ import annotations

from celery import shared_task, signals
from django.conf import settings

from builds.github import check_runs, statuses
from builds.jobs import build_secrets as secrets
from builds.jobs import dispatch, multiplatform, preemption, reaper
from builds.jobs import retention as job_retention
from builds.logs import archive as log_archive
from builds.registry import usage as registry_usage
from builds.triggers import base_images, schedule_firing
from builds.uploads import store as context_store
from builds.worker import builders, phase_times, prepull, runner
from lib import db_sessions
from lib.control_tasks import control_task
from lib.structured_logs import log_fields
from pool import disk_prune, disks, health, workers
from pool.models import DockerDaemon, queue_for

QUEUE_PREFIX = queue_for("")  # "build.": a daemon's queue is its name after it
QUICK = settings.GENERATOR_CONTROL_TASK_SECONDS
HOUSEKEEPING = settings.GENERATOR_HOUSEKEEPING_TASK_SECONDS


@shared_task(
    name="builds.run_build",
    acks_late=True,
    ignore_result=True,
    # The runner keeps its own deadline (GENERATOR_BUILD_TIMEOUT) and stops the
    # build cleanly; this hard limit only catches a worker stuck beyond it.
    time_limit=int(settings.GENERATOR_BUILD_TIMEOUT * 1.5) + 300,
)
def run_build(job_id: str, attempt: int, daemon_id: int) -> None:
    # Every record logged during this run names the job, the attempt and the daemon.
    name = DockerDaemon.objects.filter(pk=daemon_id).values_list("name", flat=True).first
    daemon = db_sessions.retrying(name, f"read daemon {daemon_id}") or daemon_id
    with log_fields(job=job_id, daemon=daemon, attempt=attempt), phase_times.timed(job_id):
        runner.run_build(job_id, attempt, daemon_id, worker=run_build.request.hostname or "")


@shared_task(name=prepull.PREPULL_TASK, acks_late=True, ignore_result=True, soft_time_limit=1800, time_limit=1830)
def prepull_image(
    daemon_id: int, repository: str, digest: str, team_id: int | None, tries: int = 0, tags: list[str] | None = None
) -> None:
    # A warm of a daemon after a push elsewhere, on that daemon's queue at a low priority (builds/worker/prepull.py).
    with log_fields(daemon=daemon_id):
        prepull.warm(daemon_id, repository, digest, team_id, tries, tags)


@control_task("farm.dispatch", seconds=QUICK)
def dispatch_waiting() -> None:
    dispatch.rescue_stranded()
    multiplatform.fail_unbuildable()
    dispatch.dispatch()


@control_task("farm.fire_schedules", seconds=QUICK)
def fire_schedules() -> None:
    # Rules whose cron tick has come build their branch (builds/triggers/schedules.py).
    schedule_firing.fire_due()


@control_task("farm.check_base_images", seconds=QUICK)
def check_base_images() -> None:
    # Repositories rebuilt when an image they build FROM changes (builds/triggers/base_images.py).
    base_images.check_due()


@control_task("farm.fair_share", seconds=QUICK)
def keep_fair_share() -> None:
    # A team beyond its share of the pool while others wait gives a slot back.
    preemption.preempt()


@control_task("farm.reap", seconds=QUICK)
def reap_lost_workers() -> None:
    if reaper.reap():
        dispatch.dispatch()


@control_task("farm.prune_contexts", seconds=HOUSEKEEPING)
def prune_contexts() -> None:
    # Uploaded contexts of jobs that ended more than GENERATOR_CONTEXT_RETENTION_HOURS ago.
    context_store.prune()
    # And the secrets of builds that have ended (normally gone as the build ends).
    secrets.forget_ended()


@control_task("farm.prune_daemons", seconds=HOUSEKEEPING)
def prune_daemons(daemon_ids: list[int] | None = None) -> None:
    # Each daemon's images and build cache down to its disk policy (or only those
    # named: a worker whose daemon's disk filled asks for it at once); a daemon
    # that was full and is under it now takes builds again.
    disk_prune.prune_daemons(None if daemon_ids is None else DockerDaemon.objects.filter(pk__in=daemon_ids))
    dispatch.dispatch()


@control_task("farm.archive_logs", seconds=HOUSEKEEPING)
def archive_logs() -> None:
    # Logs of jobs that ended more than GENERATOR_LOG_RETENTION_DAYS ago, a bounded batch per run.
    log_archive.archive_due()


@control_task("farm.prune_log_store", seconds=HOUSEKEEPING)
def prune_log_store() -> None:
    # Objects of the log store no archive row names (crashed runs, deleted jobs), past a grace time.
    log_archive.prune_orphans()


@control_task("farm.prune_jobs", seconds=HOUSEKEEPING)
def prune_jobs() -> None:
    # Finished jobs past GENERATOR_JOB_RETENTION_DAYS (0: none), a bounded batch per run.
    job_retention.prune_due()


@control_task("farm.check_health", seconds=QUICK)
def check_health() -> None:
    health.check_pool(
        api_version=settings.GENERATOR_DOCKER_API_VERSION,
        timeout=settings.GENERATOR_HEALTH_TIMEOUT,
        unhealthy_after=settings.GENERATOR_UNHEALTHY_AFTER,
    )
    # The workers' own heartbeats say which queues have a live worker (one Redis read).
    health.record_workers(workers.live_queues())
    # Jobs given to a daemon that just fell sick go to another.
    dispatch.rescue_stranded()
    dispatch.dispatch()


@control_task(
    "farm.report_status",
    seconds=QUICK,
    autoretry_for=(statuses.ReportFailed,),
    retry_backoff=2,
    retry_backoff_max=300,
    max_retries=8,
)
def report_status(job_id: str) -> None:
    # A check run where the farm's GitHub App is installed, else a commit status.
    check_runs.report(job_id)


_heartbeat: workers.Heartbeat | None = None


@signals.worker_ready.connect
def start_heartbeat(sender, **kwargs) -> None:
    """Every worker says which queues it consumes, until it stops (pool/workers.py)."""
    global _heartbeat
    queues = [queue.name for queue in sender.task_consumer.queues]
    _heartbeat = workers.Heartbeat(queues, sender.hostname).start()


@signals.worker_shutdown.connect
def stop_heartbeat(sender, **kwargs) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_ready.connect
def report_buildkit_client(sender, **kwargs) -> None:
    """A build worker says which docker CLI it drives BuildKit with, for its daemons."""
    queues = [queue.name for queue in sender.task_consumer.queues]
    daemons = [name.removeprefix(QUEUE_PREFIX) for name in queues if name.startswith(QUEUE_PREFIX)]
    if daemons:
        builders.report_client(daemons)
        # The size of each daemon's data root filesystem, which its disk policy stays within.
        disks.report(
            daemons, api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=settings.GENERATOR_DOCKER_TIMEOUT
        )


@control_task("farm.recount_registry_usage", seconds=HOUSEKEEPING)
def recount_registry_usage() -> None:
    # Each team's use of the farm's registry, read again from the registry (tags
    # deleted or garbage-collected without the farm), bounded per team.
    registry_usage.recount()
