"""Finding builds whose worker is gone, and deciding what becomes of them.

A running attempt's worker renews its lease every few seconds (runner.Watch).
A lease long expired means the worker died (killed, out of memory, its host
lost): the broker's own redelivery is no guide, since with late acks a message
can wait an hour or come back while the first worker still runs. The daemon
stops a build whose client connection closed, so the dead worker's build is not
still running there.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from builds.jobs import transitions
from builds.logs.writer import append_line
from builds.models import BuildJob
from lib.control_tasks import gave_up_waiting

logger = logging.getLogger(__name__)


def reap() -> int:
    """Re-queues (attempt + 1) or fails every running job whose lease has expired.

    A job whose rows are still locked (its worker vanished inside a transaction,
    and PostgreSQL has not ended that session yet: GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS)
    is left for the next pass once the lock timeout of the control tasks runs out
    (lib/control_tasks.py): the others are reaped meanwhile.
    """
    expired = BuildJob.objects.filter(status__in=transitions.RUNNING, lease_expires_at__lt=timezone.now())
    reaped = 0
    for job in expired.only("id", "attempt", "worker", "cancel_requested_at", "lease_expires_at"):
        try:
            with transaction.atomic():
                line = _settle(job)
                if line:
                    append_line(job.id, f"[generator] {line}")
        except OperationalError as exc:
            if not gave_up_waiting(exc):
                raise
            logger.warning("job %s: its rows are locked by another session (%s); next pass", job.id, exc)
            continue
        if line:
            reaped += 1
            logger.warning("job %s: %s", job.id, line)
    return reaped


def _settle(job: BuildJob) -> str | None:
    """Moves the job on; answers its last log line, or None if someone else already did."""
    who = job.worker or "its worker"
    if job.cancel_requested_at:
        return "Cancelled (its worker was gone)" if transitions.finish_cancelled(job.id, job.attempt) else None
    lost = f"worker lost: {who} stopped sending heartbeats during attempt {job.attempt}"
    maximum = settings.GENERATOR_MAX_ATTEMPTS
    if job.attempt < maximum:
        if transitions.requeue(job.id, job.attempt, lost):
            return f"{lost}; trying again (attempt {job.attempt + 1} of {maximum})"
        return None
    reason = f"{lost} (gave up after {maximum} attempts)"
    return f"Build failed: {reason}" if transitions.fail(job.id, job.attempt, reason) else None
