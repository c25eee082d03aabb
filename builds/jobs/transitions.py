"""Every change of a job's state, each a compare-and-swap on what the caller expects.

A change happens only from the state the caller saw, for the attempt (and daemon)
the caller holds. So a redelivered task message, a worker of an earlier attempt
that is still alive, the reaper and an operator's cancel can race freely: the
loser's update matches no row and the loser stops. Status changes are published
to the job's watchers once the transaction commits.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from datetime import timedelta

from celery import current_app
from django.db import transaction
from django.utils import timezone

from builds import signals
from builds.live.frames import END_FIELDS, end_of
from builds.logs.writer import publish
from builds.metrics import figures as metrics
from builds.models import BuildJob, BuildSecret

logger = logging.getLogger(__name__)

Status = BuildJob.Status
RUNNING = (Status.BUILDING, Status.PUSHING)


REPORT_STATUS_TASK = "farm.report_status"


def _swap(filters: dict, to_status: str | None = None, **fields) -> bool:
    if to_status is not None:
        fields["status"] = to_status
    ends = to_status in BuildJob.TERMINAL
    event = {"type": "job.status", "status": to_status}
    # An ending job is counted (builds/metrics/figures.py) in the transaction that ends it.
    with transaction.atomic() if ends else nullcontext():
        changed = BuildJob.objects.filter(**filters).update(**fields)
        if changed and ends:
            ended = BuildJob.objects.filter(pk=filters["pk"]).values(*metrics.ENDED_FIELDS, *END_FIELDS.values()).get()
            metrics.record_end(ended)
            # A build's own secrets live only while it may still run: gone before anyone hears it ended.
            BuildSecret.objects.filter(job_id=filters["pk"]).delete()
            # The end frame's fields go with the event: a viewer that has every line sends it without a read.
            event["end"] = end_of(ended)
    if changed and to_status is not None:
        job_id = filters["pk"]
        transaction.on_commit(lambda: publish(job_id, event))
        if to_status in BuildJob.TERMINAL or to_status == Status.BUILDING:  # a check run's in_progress
            transaction.on_commit(lambda: report_on_github(job_id))
        if event_name := signals.EVENTS.get(to_status):
            signals.announce(job_id, event_name)
        if parent_id := _parent_of(job_id):
            signals.child_moves(parent_id)
    return bool(changed)


@functools.lru_cache(maxsize=4096)
def _parent_of(job_id: str) -> str | None:
    """A job's multi-platform build, if it is a platform's part: set when the job is made, never changed,
    so read once per job and process (a worker's claim, push and end each asked the database)."""
    return BuildJob.objects.filter(pk=job_id).values_list("parent_id", flat=True).first()


def report_on_github(job_id: str) -> None:
    """Queues the check run or commit status of a job built from a push (others have none)."""
    # A platform's child is not reported: its multi-platform build is.
    reported = BuildJob.objects.filter(pk=job_id, repository__isnull=False, parent__isnull=True)
    if reported.exclude(commit_sha="").exists():
        try:
            current_app.send_task(REPORT_STATUS_TASK, args=[job_id])
        except Exception:
            logger.warning("could not queue the GitHub status of job %s", job_id, exc_info=True)


def _lease(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def assign(job_id: str, daemon_id: int) -> bool:
    """A waiting job gets a daemon; its task is sent after commit. A job that no
    worker claims long after `dispatched_at` goes back to the farm's queue."""
    filters = {"pk": job_id, "status": Status.QUEUED, "daemon__isnull": True}
    return _swap(filters, daemon_id=daemon_id, dispatched_at=timezone.now())


def unassign(job_id: str, attempt: int, daemon_id: int) -> bool:
    """Back to the farm's queue, if no worker has claimed it yet."""
    filters = {"pk": job_id, "attempt": attempt, "status": Status.QUEUED, "daemon_id": daemon_id}
    return _swap(filters, daemon=None, dispatched_at=None)


def claim(job_id: str, attempt: int, daemon_id: int, worker: str, lease_seconds: float) -> bool:
    """queued -> building, for the worker of the daemon the job was given to."""
    filters = {"pk": job_id, "attempt": attempt, "status": Status.QUEUED, "daemon_id": daemon_id}
    return _swap(
        filters, Status.BUILDING, worker=worker, started_at=timezone.now(), lease_expires_at=_lease(lease_seconds)
    )


def renew_lease(job_id: str, attempt: int, lease_seconds: float) -> bool:
    """The heartbeat. False when the attempt is no longer this worker's to run:
    cancelled, reaped, or finished by someone else."""
    filters = {"pk": job_id, "attempt": attempt, "status__in": RUNNING, "cancel_requested_at__isnull": True}
    filters["preempt_requested_at__isnull"] = True
    return _swap(filters, lease_expires_at=_lease(lease_seconds))


def start_push(job_id: str, attempt: int, image_id: str) -> bool:
    """building -> pushing, once the image exists on the daemon."""
    filters = {"pk": job_id, "attempt": attempt, "status": Status.BUILDING}
    # Built before its worker saw a pre-emption: it pushes, the fair share's ask withdrawn.
    fields = {"preempt_requested_at": None, "error": ""}
    return _swap(filters, Status.PUSHING, image_id=image_id, push_started_at=timezone.now(), **fields)


def succeed(job_id: str, attempt: int, digest: str) -> bool:
    filters = {"pk": job_id, "attempt": attempt, "status": Status.PUSHING}
    now = timezone.now()
    return _swap(filters, Status.SUCCEEDED, digest=digest, error="", finished_at=now, lease_expires_at=None)


def succeed_unpushed(job_id: str, attempt: int, image_id: str) -> bool:
    """building -> succeeded for a build that is not pushed (its `not_pushed` says
    why): the image was built, and that is all it was for. No digest: nothing
    is in a registry."""
    filters = {"pk": job_id, "attempt": attempt, "status": Status.BUILDING, "not_pushed__gt": ""}
    now = timezone.now()
    return _swap(filters, Status.SUCCEEDED, image_id=image_id, error="", finished_at=now, lease_expires_at=None)


def fail(job_id: str, attempt: int, reason: str) -> bool:
    """Any active status -> failed, with the reason a person reads."""
    filters = {"pk": job_id, "attempt": attempt, "status__in": BuildJob.ACTIVE}
    return _swap(filters, Status.FAILED, error=reason, finished_at=timezone.now(), lease_expires_at=None)


def requeue(job_id: str, attempt: int, reason: str) -> bool:
    """A running attempt that cannot finish (its worker or daemon was lost) ->
    queued again as the next attempt, with no daemon: the dispatcher chooses anew."""
    filters = {"pk": job_id, "attempt": attempt, "status__in": RUNNING}
    return _swap(
        filters,
        Status.QUEUED,
        attempt=attempt + 1,
        daemon=None,
        worker="",
        dispatched_at=None,
        lease_expires_at=None,
        preempt_requested_at=None,
        error=reason,
    )


def request_preempt(job_id: str, attempt: int, reason: str) -> bool:
    """Asks the worker of a building attempt to give its slot back (the fair
    share, builds/jobs/preemption.py): at its next heartbeat it puts the build back in
    the farm's queue as the next attempt, writing its own last line, so no two
    writers share the log. Not a build that is pushing, cancelled or asked already."""
    filters = {"pk": job_id, "attempt": attempt, "status": Status.BUILDING, "cancel_requested_at__isnull": True}
    filters["preempt_requested_at__isnull"] = True
    return _swap(filters, preempt_requested_at=timezone.now(), error=reason)


def cancel_waiting(job_id: str, user, superseded_by: str | None = None) -> bool:
    """queued -> cancelled at once: no worker has it."""
    now = timezone.now()
    filters = {"pk": job_id, "status": Status.QUEUED}
    return _swap(
        filters,
        Status.CANCELLED,
        cancel_requested_at=now,
        cancelled_by=user,
        superseded_by_id=superseded_by,
        finished_at=now,
    )


def request_cancel(job_id: str, user, superseded_by: str | None = None) -> bool:
    """Asks the worker of a running job to stop; it sees this at its next heartbeat."""
    filters = {"pk": job_id, "status__in": RUNNING, "cancel_requested_at__isnull": True}
    return _swap(filters, cancel_requested_at=timezone.now(), cancelled_by=user, superseded_by_id=superseded_by)


def finish_cancelled(job_id: str, attempt: int) -> bool:
    filters = {"pk": job_id, "attempt": attempt, "status__in": RUNNING, "cancel_requested_at__isnull": False}
    return _swap(filters, Status.CANCELLED, finished_at=timezone.now(), lease_expires_at=None)


def parent_moves(job_id: str, from_status: str, to_status: str) -> bool:
    """A multi-platform build's own progress, which its children make: queued ->
    building when one starts, building -> pushing while the index is written."""
    fields = {"started_at": timezone.now()} if to_status == Status.BUILDING else {"push_started_at": timezone.now()}
    return _swap({"pk": job_id, "status": from_status, "parent__isnull": True}, to_status, **fields)


def parent_ends(job_id: str, to_status: str, *, digest: str = "", error: str = "") -> bool:
    """A multi-platform build ends, once, whatever state it was in."""
    filters = {"pk": job_id, "status__in": BuildJob.ACTIVE, "parent__isnull": True}
    return _swap(filters, to_status, digest=digest, error=error, finished_at=timezone.now())
