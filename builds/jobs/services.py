"""Submitting builds: the one entry every front door goes through.

The `/b1` seed API, webhooks, the REST API, admin actions and the CLI all come
in here (`submit_build`, `submit`, `retry_build`, `submit_push_build`). It
validates, creates the row and dispatches; nothing else creates jobs.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO

from django.conf import settings
from django.db import transaction

from audit.log import record as audit
from builds import signals
from builds.engine.buildkit import unsupported_features
from builds.jobs import build_secrets, multiplatform, ownership, quotas, transitions
from builds.jobs.dispatch import NoDaemonAvailable, ensure_pool_exists
from builds.jobs.dispatch_soon import dispatch_soon
from builds.logs.writer import append_line
from builds.models import BuildContext, BuildJob, Registry, Repository, new_job_id
from builds.registry import usage as registry_usage
from builds.sources import deploy_keys
from builds.triggers.schedules import scheduled_tags
from builds.uploads import store as context_store
from lib import secret_values
from lib.errors import (
    Conflict,
    Forbidden,
    PoolUnavailable,
    RegistryNotAllowed,
    SubmissionError,
    TooLarge,
    TooManyBuilds,
)
from lib.references import InvalidReference, parse_build_target, registry_host
from pool.platforms import split as split_platforms

__all__ = [
    "Conflict",
    "Forbidden",
    "PoolUnavailable",
    "RegistryNotAllowed",
    "SubmissionError",
    "TooLarge",
    "TooManyBuilds",
    "submit",
    "submit_build",
]


_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# No leading '-': a ref reaches git's command line.
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}")
# A Dockerfile stage name, as BuildKit and the classic builder accept it.
_STAGE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")


def submit_build(*, image: str, dockerfile: str, submitted_by=None, team: str = "") -> BuildJob:
    return submit(BuildRequest(image=image, dockerfile=dockerfile, team=team), submitted_by=submitted_by)


@dataclass
class BuildRequest:
    """What a build is made from: exactly one of a Dockerfile's text, an uploaded
    context (tar or tar.gz, a file read as a stream), or a registered repository and a ref."""

    image: str
    dockerfile: str = ""
    context: BinaryIO | None = None
    dockerfile_path: str = "Dockerfile"
    repository: Repository | None = None
    ref: str = ""
    extra_tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    builder: str = ""  # empty: the repository's, else the farm's default
    target: str = ""
    secrets: dict[str, str] = field(default_factory=dict)  # this build's own, kept until it ends
    team: str = ""  # a team's slug; empty: the one builds/jobs/ownership.py picks
    # Several: one image index with an image per platform (builds/jobs/multiplatform.py); empty: the daemon's own.
    platforms: list[str] = field(default_factory=list)


def submit(request: BuildRequest, *, submitted_by=None, retry_of: BuildJob | None = None) -> BuildJob:
    target = _build_target(request.image)
    sources = [bool(request.dockerfile), request.context is not None, request.repository is not None]
    if sum(sources) != 1:
        raise SubmissionError("give exactly one source: a Dockerfile, an uploaded context, or a repository and a ref")
    if request.dockerfile:
        check_dockerfile(request.dockerfile)
    with ExitStack() as stack:  # a checked context's temporary file goes whatever happens
        checked = None
        if request.context is not None:
            checked = stack.enter_context(context_store.checked(request.context, dockerfile=request.dockerfile_path))
        _check_options(request, target.tag)
        _check_for_builder(request, checked.dockerfile if checked else request.dockerfile)
        check_registry_allowed(target.repository)
        team = ownership.team_for_build(submitted_by, request.team, target.repository, request.repository)
        quotas.check_submit(team)
        registry_usage.check_submit(team, target.repository)
        group = request.repository.daemon_group if request.repository else ""
        ensure_pool_exists_or_raise(group)
        if request.platforms:
            request.platforms = multiplatform.checked_platforms(request.platforms, group)
        job_id = new_job_id()
        stored = stack.enter_context(context_store.kept_for(job_id, checked)) if checked else None
        return _create(job_id, target, request, stored, submitted_by, retry_of, team)


def _check_options(request: BuildRequest, tag: str) -> None:
    if request.repository is not None and not _REF.fullmatch(request.ref):
        raise SubmissionError(f"{request.ref!r} is not a branch, tag or commit name")
    for extra in request.extra_tags:
        if not _TAG.fullmatch(extra):
            raise SubmissionError(f"{extra!r} is not a valid tag")
    if reserved := [t for t in [tag, *request.extra_tags] if t.startswith(multiplatform.CHILD_TAG_PREFIX)]:
        prefix = multiplatform.CHILD_TAG_PREFIX
        raise SubmissionError(f"{reserved[0]!r}: tags beginning {prefix} are the farm's, for multi-platform builds")
    for name, mapping in (("build args", request.build_args), ("labels", request.labels)):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
            raise SubmissionError(f"{name} must map strings to strings")
    if request.target and not _STAGE.fullmatch(request.target):
        raise SubmissionError(f"{request.target!r} is not a build stage name")
    builder = builder_for(request)
    if request.secrets:
        try:
            secret_values.check(request.secrets)
        except secret_values.SecretError as exc:
            raise SubmissionError(str(exc)) from None
        if builder != "buildkit":
            raise SubmissionError("build secrets are mounted by BuildKit only: ask for builder buildkit")
    if request.platforms and builder != "buildkit":
        raise SubmissionError("multi-platform builds are BuildKit's: ask for builder buildkit, or no platforms")
    if builder not in settings.GENERATOR_BUILDERS:
        raise SubmissionError(
            f"the {builder} builder is not enabled on this farm (it has {', '.join(settings.GENERATOR_BUILDERS)}): "
            "an operator enables it with GENERATOR_BUILDERS"
        )


def _check_for_builder(request: BuildRequest, dockerfile: str | bytes) -> None:
    """What BuildKit would run that the farm does not allow (another frontend,
    BUILDKIT_* args, an SSH agent no repository forwards), refused at submission
    when the Dockerfile is known by then: its text, or read from the uploaded
    context as the engine will read it. A repository's build is checked by the
    worker once its commit is checked out (builds/worker/builders.py)."""
    if builder_for(request) != "buildkit" or request.repository is not None:
        return
    reason = unsupported_features(dockerfile, request.build_args) or deploy_keys.ssh_mount_refusal(
        dockerfile, None, forwarded=False
    )
    if reason:
        raise SubmissionError(reason)


def builder_for(request: BuildRequest) -> str:
    """The build's own choice, else its repository's, else the farm's default."""
    repository = request.repository.builder if request.repository else ""
    if request.platforms and not request.builder:
        repository = "buildkit"  # only BuildKit builds for another platform
    return request.builder or repository or settings.GENERATOR_DEFAULT_BUILDER


def _create(job_id: str, target, request: BuildRequest, stored: dict | None, submitted_by, retry_of, team) -> BuildJob:
    with transaction.atomic():
        quotas.check_submit(team)  # again, now with the team's row locked until the job is in
        job = BuildJob.objects.create(
            id=job_id,
            image=str(target),
            extra_tags=[t for t in request.extra_tags if t != target.tag],
            dockerfile=request.dockerfile,
            dockerfile_path=request.dockerfile_path,
            repository=request.repository,
            ref=request.ref if request.repository else "",
            build_args=request.build_args,
            labels=request.labels,
            no_cache=request.no_cache,
            builder=builder_for(request),
            target=request.target,
            submitted_by=submitted_by,
            team=team,
            retry_of=retry_of,
            platforms=request.platforms,
        )
        if stored is not None:
            BuildContext.objects.create(job=job, **stored)
        children = multiplatform.create_children(job) if request.platforms else []
        for owner in children or [job]:  # the builds that mount them
            if request.secrets:
                build_secrets.store({"job": owner}, request.secrets)
        signals.announce(job.id, "queued")
        details = {"image": job.image, "retry_of": retry_of.id} if retry_of else {"image": job.image}
        if request.secrets:
            details["secrets"] = sorted(request.secrets)  # names only
        audit("retry" if retry_of else "submit", "build", job, actor=submitted_by, team=team, details=details)
        # The job waits in the farm's queue until a daemon has room (in daphne: after the answer).
        transaction.on_commit(dispatch_soon)
    return job


def retry_build(job: BuildJob, user) -> BuildJob:
    """A new job from the same source and options, linked to the old one: a
    submit by `user` for the old build's team, with every check of a submit."""
    if not job.is_terminal:
        raise Conflict(f"the build is {job.status}: only a finished build can be retried")
    if job.parent_id:
        raise Conflict(f"this is the {job.platform} part of build {job.parent_id}: retry that build")
    uploaded = not job.dockerfile and not job.ref  # its source was an uploaded context
    with ExitStack() as stack:
        context = None
        if uploaded:
            try:
                context = stack.enter_context(context_store.opened(BuildContext.objects.filter(job=job).first()))
            except context_store.ContextGone as exc:
                raise Conflict(f"the build cannot be retried: {exc}") from None
        request = BuildRequest(
            image=job.image,
            dockerfile=job.dockerfile,
            context=context,
            dockerfile_path=job.dockerfile_path,
            repository=job.repository if job.ref else None,
            ref=job.commit_sha or job.ref,
            extra_tags=list(job.extra_tags),
            build_args=dict(job.build_args),
            labels=dict(job.labels),
            no_cache=job.no_cache,
            builder=job.builder,
            target=job.target,
            team=job.team.slug if job.team_id else "",
            platforms=list(job.platforms),
        )
        return submit(request, submitted_by=user, retry_of=job)


def submit_push_build(
    *,
    repository,
    ref: str,
    sha: str,
    tags: list[str],
    pusher_email: str = "",
    pull_request: int | None = None,
    pull_request_url: str = "",
    fork: bool = False,
    not_pushed: str = "",
    retry_of: BuildJob | None = None,
) -> BuildJob:
    """A build of a pushed commit, tagged with every tag its rules gave; or of a
    pull request's head (builds/github/pull_requests.py), which `not_pushed` says is
    only built, and why (for the daemon's own platform: a check, not an image).

    Builds of the same ref still waiting are superseded by it (and running ones
    too, if the repository says so): only the newest commit of a ref matters.
    """
    details = {"webhook": ref, "commit": sha}
    if pull_request is not None:
        details.update(pull_request=pull_request, fork=fork, pushed=not not_pushed)
    job = _repository_build(
        repository,
        tags,
        details,
        supersede=True,
        ref=ref,
        commit_sha=sha,
        pusher_email=pusher_email,
        pull_request=pull_request,
        pull_request_url=pull_request_url,
        fork=fork,
        not_pushed=not_pushed,
        retry_of=retry_of,
    )
    transaction.on_commit(lambda: transitions.report_on_github(job.id))
    return job


def submit_scheduled_build(rule, tick) -> BuildJob:
    """A build of the head of a scheduled rule's branch (builds/triggers/schedules.py),
    resolved by the worker when it fetches; tagged with the rule's tags that
    need no commit. It supersedes nothing: a push's build of the branch goes on."""
    tags = scheduled_tags(rule.tags, rule.pattern)
    if not tags:
        raise SubmissionError(f"rule {rule.pk} gives no tag without a commit")
    details = {"schedule": rule.schedule, "timezone": rule.schedule_timezone, "tick": tick.isoformat()}
    return _repository_build(
        rule.repository, tags, details, supersede=False, ref=f"refs/heads/{rule.pattern}", schedule_rule=rule
    )


def submit_base_image_build(repository, tags: list[str], reason: str) -> BuildJob:
    """A build of the head of the repository's default branch because a base
    image has a new digest (builds/triggers/base_images.py), `reason` saying which. It
    pulls its base images afresh and supersedes nothing."""
    ref = f"refs/heads/{repository.default_branch}"
    return _repository_build(repository, tags, {"reason": reason}, supersede=False, ref=ref, reason=reason, pull=True)


def _repository_build(repository, tags: list[str], details: dict, *, supersede: bool, **fields) -> BuildJob:
    """A registered repository's build without a user (a webhook's, a schedule's):
    every check of a submit, the job, its children, its audit event."""
    check_registry_allowed(repository.image)  # the row may have gone since the repository was saved
    ownership.check_push_build(repository, repository.image)  # so may its team's namespace
    quotas.check_submit(repository.team)
    if not fields.get("not_pushed"):  # a pull request's check pushes nothing: its quota does not matter
        registry_usage.check_submit(repository.team, repository.image)
    ensure_pool_exists_or_raise(repository.daemon_group)
    platforms = [] if fields.get("not_pushed") else split_platforms(repository.platforms)
    if platforms:
        platforms = multiplatform.checked_platforms(platforms, repository.daemon_group)
    with transaction.atomic():
        quotas.check_submit(repository.team)  # again, with the team's row locked (builds/jobs/quotas.py)
        job = BuildJob.objects.create(
            image=f"{repository.image}:{tags[0]}",
            extra_tags=tags[1:],
            repository=repository,
            team_id=repository.team_id,
            platforms=platforms,
            # The repository's builder, else the farm's default (BuildKit for several platforms).
            builder=builder_for(BuildRequest(image="", repository=repository, platforms=platforms)),
            **fields,
        )
        if supersede:
            _supersede(job)
        if platforms:
            multiplatform.create_children(job)
        signals.announce(job.id, "queued")
        audit("submit", "build", job, actor=None, details={"image": job.image, **details})
        transaction.on_commit(dispatch_soon)
    return job


def cancel_pull_request_builds(repository, number: int) -> int:
    """A closed pull request's builds stop: waiting ones at once, running ones at
    their worker's next heartbeat, whatever cancel_superseded_running says.
    Answers how many were stopped."""
    stopped = 0
    active = BuildJob.objects.filter(
        repository=repository, pull_request=number, status__in=BuildJob.ACTIVE, parent__isnull=True
    )
    for job in active:
        if job.is_parent:
            outcome = multiplatform.cancel(job, None)
        elif transitions.cancel_waiting(job.id, None):
            append_line(job.id, f"[generator] Cancelled before it started: pull request #{number} was closed")
            outcome = "cancelled"
        else:
            outcome = "stopping" if transitions.request_cancel(job.id, None) else "already ended"
        stopped += outcome in ("cancelled", "stopping")
        audit("cancel", "build", job, actor=None, details={"outcome": outcome, "pull_request": number})
    return stopped


def _supersede(job: BuildJob) -> None:
    older = BuildJob.objects.filter(
        repository=job.repository, ref=job.ref, status__in=BuildJob.ACTIVE, created_at__lte=job.created_at
    ).exclude(pk=job.pk)
    for previous in older:
        if transitions.cancel_waiting(previous.id, None, superseded_by=job.id):
            append_line(previous.id, f"[generator] Superseded by {job.id} ({job.commit_sha[:12]}) before it started")
        elif job.repository.cancel_superseded_running:
            transitions.request_cancel(previous.id, None, superseded_by=job.id)


def check_registry_allowed(image_repository: str) -> None:
    """Builds push only to registries an operator allowed (a Registry row). Extra
    tags are tags of the same repository, so they go to the same registry."""
    host = registry_host(image_repository)
    if not Registry.objects.allowing(host).exists():
        raise RegistryNotAllowed(host)


def ensure_pool_exists_or_raise(group: str = "") -> None:
    try:
        ensure_pool_exists(group)
    except NoDaemonAvailable as exc:
        raise PoolUnavailable(str(exc)) from None


def cancel_build(job: BuildJob, user) -> str:
    """Cancels a waiting job at once, or asks the worker of a running one to stop
    it (within a heartbeat). Answers what happened, for a person to read."""
    if job.is_parent:
        return multiplatform.cancel(job, user)
    outcome = None
    with transaction.atomic():
        if transitions.cancel_waiting(job.id, user):
            append_line(job.id, f"[generator] Cancelled by {user} before it started")
            outcome = "cancelled"
    if outcome is None:
        if transitions.request_cancel(job.id, user):
            outcome = "stopping"
        else:
            job.refresh_from_db(fields=["status"])
            outcome = f"already {job.status}"
    audit("cancel", "build", job, actor=user, details={"outcome": outcome})
    return outcome


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
