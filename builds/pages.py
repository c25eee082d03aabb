"""Pages for people. For now the job page that commit statuses link to: the job
and its stored log (the live viewer over the WebSocket is issue 5)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from generator_site.access import can_read_logs

from .models import BuildJob

MAX_PAGE_LINES = 20_000


def job_page(request: HttpRequest, job_id: str) -> HttpResponse:
    if not can_read_logs(request.user):
        return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
    job = BuildJob.objects.select_related("daemon", "repository").filter(pk=job_id).first()
    if job is None:
        raise Http404(f"no build job with id {job_id!r}")
    lines = list(job.log_lines.order_by("seq").values_list("text", flat=True)[:MAX_PAGE_LINES])
    return render(request, "builds/job.html", {"job": job, "lines": lines, "position": job.queue_position()})
