"""Pages for people: the build list, a build's live log, the pool. Server-rendered,
with a little plain JavaScript (builds/static/builds/). They need a login unless
an operator makes logs public (GENERATOR_PUBLIC_LOGS); a public repository's
build pages are anyone's. Each person sees the builds of their teams
(builds/ownership.py): another team's build is a 404."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from generator_site.access import can_read_logs
from pool.models import DockerDaemon

from .models import BuildJob
from .ownership import readable_jobs

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
    return render(request, "builds/job.html", {"job": job, "position": job.queue_position()})


@readers_only
def pool_page(request: HttpRequest) -> HttpResponse:
    active = Q(jobs__status__in=BuildJob.ACTIVE)
    daemons = DockerDaemon.objects.annotate(active_builds=Count("jobs", filter=active)).order_by("name")
    return render(request, "builds/pool.html", {"daemons": daemons})
