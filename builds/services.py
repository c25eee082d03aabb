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
    ensure_pool_exists_or_raise()
    with transaction.atomic():
        job = BuildJob.objects.create(image=str(target), dockerfile=dockerfile, submitted_by=submitted_by)
        # The job waits in the farm's queue until a daemon has room.
        transaction.on_commit(dispatch)
    return job


def submit_push_build(*, repository, ref: str, sha: str, tags: list[str]) -> BuildJob:
    """A build of a pushed commit, tagged with every tag its rules gave.

    Builds of the same ref still waiting are superseded by it (and running ones
    too, if the repository says so): only the newest commit of a ref matters.
    """
    ensure_pool_exists_or_raise()
    with transaction.atomic():
        job = BuildJob.objects.create(
            image=f"{repository.image}:{tags[0]}",
            extra_tags=tags[1:],
            repository=repository,
            ref=ref,
            commit_sha=sha,
        )
        _supersede(job)
        transaction.on_commit(lambda: transitions.report_on_github(job.id))
        transaction.on_commit(dispatch)
    return job


def _supersede(job: BuildJob) -> None:
    older = BuildJob.objects.filter(
        repository=job.repository, ref=job.ref, status__in=BuildJob.ACTIVE, created_at__lte=job.created_at
    ).exclude(pk=job.pk)
    for previous in older:
        if transitions.cancel_waiting(previous.id, None, superseded_by=job.id):
            append_line(previous.id, f"[generator] Superseded by {job.id} ({job.commit_sha[:12]}) before it started")
        elif job.repository.cancel_superseded_running:
            transitions.request_cancel(previous.id, None, superseded_by=job.id)


def ensure_pool_exists_or_raise() -> None:
    try:
        ensure_pool_exists()
    except NoDaemonAvailable as exc:
        raise PoolUnavailable(str(exc)) from None


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
