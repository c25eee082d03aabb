"""Every change of a job's status, each a compare-and-swap on (id, attempt, status).

A status changes only from the state the caller expects, for the attempt the
caller holds. So a redelivered task message, a late worker of an earlier attempt
or an operator's cancel racing a build cannot move a job backwards or record a
result for the wrong attempt: the update matches no row and the caller stops.
Each successful change is published to the job's watchers.
"""

from __future__ import annotations

from django.utils import timezone

from .logs import publish
from .models import BuildJob

Status = BuildJob.Status


def _swap(job_id: str, attempt: int, from_statuses, to_status: str, **fields) -> bool:
    changed = BuildJob.objects.filter(pk=job_id, attempt=attempt, status__in=from_statuses).update(
        status=to_status, **fields
    )
    if changed:
        publish(job_id, {"type": "job.status", "status": to_status})
    return bool(changed)


def claim(job_id: str, attempt: int, worker: str) -> bool:
    """queued -> building, for the worker that will run this attempt."""
    return _swap(job_id, attempt, [Status.QUEUED], Status.BUILDING, worker=worker, started_at=timezone.now())


def start_push(job_id: str, attempt: int, image_id: str) -> bool:
    """building -> pushing, once the image exists on the daemon."""
    return _swap(job_id, attempt, [Status.BUILDING], Status.PUSHING, image_id=image_id)


def succeed(job_id: str, attempt: int, digest: str) -> bool:
    return _swap(job_id, attempt, [Status.PUSHING], Status.SUCCEEDED, digest=digest, finished_at=timezone.now())


def fail(job_id: str, attempt: int, reason: str) -> bool:
    """Any active status -> failed, with the reason a person reads."""
    return _swap(job_id, attempt, BuildJob.ACTIVE, Status.FAILED, error=reason, finished_at=timezone.now())
