"""Submitting builds: the one entry every front door goes through.

The `/b1` seed API, and later webhooks, the REST API, admin actions and the CLI,
all call `submit_build`. It validates, creates the row and dispatches; nothing
else creates jobs.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from . import transitions
from .dispatch import NoDaemonAvailable, dispatch, ensure_pool_exists
from .logs import append_line
from .models import BuildJob
from .references import InvalidReference, parse_build_target


class SubmissionError(ValueError):
    """A request the farm will not build; str() is the reason, `status` the HTTP code."""

    status = 400


class TooLarge(SubmissionError):
    status = 413


class PoolUnavailable(SubmissionError):
    status = 503


def submit_build(*, image: str, dockerfile: str, submitted_by=None) -> BuildJob:
    target = _build_target(image)
    check_dockerfile(dockerfile)
    try:
        ensure_pool_exists()
    except NoDaemonAvailable as exc:
        raise PoolUnavailable(str(exc)) from None
    with transaction.atomic():
        job = BuildJob.objects.create(image=str(target), dockerfile=dockerfile, submitted_by=submitted_by)
        # The job waits in the farm's queue until a daemon has room.
        transaction.on_commit(dispatch)
    return job


def cancel_build(job: BuildJob, user) -> str:
    """Cancels a waiting job at once, or asks the worker of a running one to stop
    it (within a heartbeat). Answers what happened, for a person to read."""
    with transaction.atomic():
        if transitions.cancel_waiting(job.id, user):
            append_line(job.id, f"[generator] Cancelled by {user} before it started")
            return "cancelled"
    if transitions.request_cancel(job.id, user):
        return "stopping"
    job.refresh_from_db(fields=["status"])
    return f"already {job.status}"


def _build_target(image: str):
    if not image:
        raise SubmissionError("imagename is required: the repository:tag to push, e.g. localhost:5000/team/app")
    try:
        return parse_build_target(image)
    except InvalidReference as exc:
        raise SubmissionError(f"invalid image reference {image!r}: {exc}") from None


def check_dockerfile(dockerfile: str) -> None:
    limit = settings.GENERATOR_MAX_DOCKERFILE_BYTES
    size = len(dockerfile.encode())
    if size > limit:
        raise TooLarge(f"the Dockerfile is {size} bytes; the limit is {limit} bytes")
    if not dockerfile.strip():
        raise SubmissionError("the Dockerfile is empty")
    if "\x00" in dockerfile:
        raise SubmissionError("the Dockerfile contains a NUL byte: it must be text")
