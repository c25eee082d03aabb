"""Pages for people: the build list, a build's live log, the pool and each daemon. Server-rendered,
with a little plain JavaScript (builds/static/builds/). They need a login unless
an operator makes logs public (GENERATOR_PUBLIC_LOGS); a public repository's
build pages are anyone's. Each person sees the builds of their teams
(builds/jobs/ownership.py): another team's build is a 404."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.defaultfilters import pluralize

from builds.jobs.dispatch import slots_in_use
from builds.jobs.limits import builds_at_once, needs_whole_daemon
from builds.jobs.ownership import readable_jobs
from builds.models import BuildJob
from builds.provenance.cosign_layout import KINDS as ATTESTATION_KINDS
from lib.http_errors import error_response
from pool.models import DockerDaemon
from teams.access import can_read_logs

LIST_SIZE = 100


def readers_only(view):
    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not can_read_logs(request.user):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return guarded


@readers_only
def job_list(request: HttpRequest) -> HttpResponse:
    filters = {name: request.GET.get(name, "").strip() for name in ("status", "repository", "image")}
    jobs = readable_jobs(request.user).select_related("daemon", "repository", "team").order_by("-created_at")
    if filters["status"]:
        jobs = jobs.filter(status=filters["status"])
    if filters["repository"]:
        jobs = jobs.filter(repository__full_name=filters["repository"])
    if filters["image"]:
        jobs = jobs.filter(image__contains=filters["image"])
    jobs = list(jobs[:LIST_SIZE])
    for job in jobs:
        job.position = job.queue_position()
        end = job.finished_at
        job.duration = (end - job.started_at).total_seconds() if end and job.started_at else None
    any_active = any(job.status in BuildJob.ACTIVE for job in jobs)
    context = {"jobs": jobs, "filters": filters, "statuses": BuildJob.Status.choices, "any_active": any_active}
    template = "builds/list_rows.html" if request.GET.get("rows") else "builds/list.html"
    response = render(request, template, context)
    response["X-Any-Active"] = "1" if any_active else ""
    return response


def job_page(request: HttpRequest, job_id: str) -> HttpResponse:
    job = readable_jobs(request.user).select_related("daemon", "repository", "team").filter(pk=job_id).first()
    if job is None:
        if not can_read_logs(request.user):
            return redirect_to_login(request.get_full_path())
        raise Http404(f"no build job with id {job_id!r}")
    signed = job.attestations.filter(digest=job.digest) if job.digest else job.attestations.none()
    kinds = set(signed.values_list("predicate_type", flat=True))
    attested = [kind for kind, predicate in ATTESTATION_KINDS.items() if predicate in kinds]
    return render(request, "builds/job.html", {"job": job, "position": job.queue_position(), "attested": attested})


@readers_only
def pool_page(request: HttpRequest) -> HttpResponse:
    daemons = _with_load(DockerDaemon.objects.order_by("name"))
    return render(request, "builds/pool.html", {"daemons": daemons, "whole_daemon": _buildkit_takes_whole_daemons()})


@readers_only
def daemon_page(request: HttpRequest, name: str) -> HttpResponse:
    daemon = DockerDaemon.objects.filter(name=name).first()
    if daemon is None:
        return error_response(request, 404, f"no Docker daemon named {name!r} in the pool")
    [daemon] = _with_load([daemon])
    running = daemon.jobs.filter(status__in=BuildJob.ACTIVE)
    readable = list(readable_jobs(request.user).filter(pk__in=running.values("pk")).order_by("created_at"))
    context = {
        "daemon": daemon,
        "jobs": readable,
        "others": daemon.active_builds - len(readable),  # /pool/ shows everyone the count anyway
        "whole_daemon": _buildkit_takes_whole_daemons(),
    }
    return render(request, "builds/pool_daemon.html", context)


BUILDER_NAMES = {"buildkit": "BuildKit", "classic": "classic"}


def _with_load(daemons) -> list[DockerDaemon]:
    """The daemons, each with its active builds, the slots they take of its
    capacity as the dispatcher counts them, and the builds it takes at once."""
    daemons = list(daemons)
    slots = slots_in_use(daemons)
    counts = dict(
        BuildJob.objects.filter(status__in=BuildJob.ACTIVE, daemon__in=daemons)
        .values_list("daemon")
        .annotate(n=Count("id"))
    )
    for daemon in daemons:
        daemon.active_builds = counts.get(daemon.pk, 0)
        daemon.slots_taken = slots.get(daemon.pk, 0)
        at_once = builds_at_once(daemon.capacity)
        if len(set(at_once.values())) == 1:
            n = next(iter(at_once.values()))
            daemon.at_once = f"{n} build{pluralize(n)} at once"
        else:
            daemon.at_once = " or ".join(f"{n} {BUILDER_NAMES[b]}" for b, n in at_once.items()) + " builds at once"
    return daemons


def _buildkit_takes_whole_daemons() -> bool:
    return "buildkit" in settings.GENERATOR_BUILDERS and needs_whole_daemon("buildkit")
