"""Choosing a daemon for a job and sending its task, by name, after commit."""

from __future__ import annotations

import logging
from functools import partial

from celery import current_app
from django.db import transaction
from django.db.models import Count

from pool.models import DockerDaemon
from pool.scheduler import least_loaded

from . import transitions
from .models import BuildJob

logger = logging.getLogger(__name__)

RUN_BUILD_TASK = "builds.run_build"


class NoDaemonAvailable(Exception):
    pass


def active_builds_by_daemon() -> dict[int, int]:
    rows = (
        BuildJob.objects.filter(status__in=BuildJob.ACTIVE, daemon__isnull=False)
        .values("daemon")
        .annotate(active=Count("id"))
    )
    return {row["daemon"]: row["active"] for row in rows}


def dispatch(job: BuildJob) -> None:
    """Assigns the job to the least loaded daemon and queues its build there.

    Call inside the transaction that saved the job: the message is sent only once
    that transaction commits, so a worker never looks for a row it cannot see.
    """
    daemon = least_loaded(DockerDaemon.objects.filter(enabled=True), active_builds_by_daemon())
    if daemon is None:
        raise NoDaemonAvailable("no enabled Docker daemon in the pool: an operator must add or enable one")
    job.daemon = daemon
    job.save(update_fields=["daemon"])
    transaction.on_commit(partial(send_build_task, job.id, job.attempt, daemon.queue))


def send_build_task(job_id: str, attempt: int, queue: str) -> None:
    try:
        current_app.send_task(RUN_BUILD_TASK, args=[job_id, attempt], queue=queue)
    except Exception as exc:
        # The row exists but nothing will run it: say so on the job rather than
        # leave it queued forever.
        logger.exception("could not queue build %s on %s", job_id, queue)
        transitions.fail(job_id, attempt, f"could not queue the build: the message broker refused it ({exc})")
