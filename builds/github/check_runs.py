"""Check runs on GitHub, through the farm's GitHub App (builds/github/app.py):
queued when a push's or pull request's job is made, in_progress when it starts,
completed with a conclusion, a summary, the failing step's lines and a link to
the job page. A repository the App is not installed on gets commit statuses
(builds/github/statuses.py) instead, as before.

Sent by the control worker (task farm.report_status, retried with backoff when
GitHub is unreachable, never able to fail a build). Each report sends the job's
state as it is when the report runs, so reports may run late or twice:

1. A report first takes the job's CheckRun lease (a compare-and-swap on
   `sending_until`): one report at a time sends for a job. Another report meets
   the lease, raises ReportFailed and is retried a little later.
2. Holding it, it reads the job again and sends that state: the first report
   creates the check run (POST), later ones update it (PATCH).
3. Once `completed` is sent nothing more is: a job's end is final.
A report that dies holding the lease loses it after LEASE.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from builds.github import app as github_app
from builds.github import statuses
from builds.logs import failing_step
from builds.models import BuildJob, BuildLogLine, CheckRun, Repository
from lib.outbound import RefusedURL

logger = logging.getLogger(__name__)

NAME = "generator"
LEASE = timedelta(seconds=3 * github_app.TIMEOUT + 5)  # a token, a lookup and the call itself
TAIL_LINES = 300  # of the log, read for the failing step
MAX_TEXT = 65_000  # GitHub's limit for output.summary/text and an annotation's message is 65,535
Status = BuildJob.Status


class Busy(statuses.ReportFailed):
    """Another report of this job is sending: this one is retried after it."""


def github_status(job: BuildJob) -> str:
    if job.status == Status.QUEUED:
        return "queued"
    return "completed" if job.is_terminal else "in_progress"


def conclusion(job: BuildJob) -> str:
    """GitHub's conclusion for a job that has ended."""
    if job.status == Status.SUCCEEDED:
        return "success"
    if job.status == Status.CANCELLED:
        return "cancelled"
    # The runner words a build past its deadline so (builds/worker/runner.py).
    return "timed_out" if job.error.startswith("timed out after") else "failure"


def report(job_id: str) -> None:
    """The job's state on its commit: a check run where the App is installed, else
    a commit status. Raises ReportFailed to be retried."""
    job = BuildJob.objects.select_related("repository").filter(pk=job_id).first()
    if job is None or job.repository is None or not job.commit_sha:
        return
    if not github_app.configured():
        statuses.report(job_id)
        return
    try:
        statuses.api_base()
        _send(job, _installation(job.repository))
    except github_app.Misconfigured as exc:
        _log_misconfigured(str(exc))
        statuses.report(job_id)
    except RefusedURL:
        statuses.report(job_id)  # logged once there, nothing sent
    except github_app.NotInstalled as exc:
        if job.repository.github_installation_id is None:  # GitHub says it is not there: a status
            statuses.report(job_id)
            return
        # Uninstalled since it was recorded: forgotten, and the retry asks GitHub again.
        Repository.objects.filter(pk=job.repository_id).update(github_installation_id=None)
        raise github_app.AppUnavailable(str(exc)) from None


@functools.lru_cache(maxsize=16)
def _log_misconfigured(reason: str) -> None:
    # Once per process and reason: every job would say the same.
    logger.error("check runs are not sent (commit statuses instead): %s", reason)


def _installation(repository: Repository) -> int:
    if repository.github_installation_id:
        return repository.github_installation_id
    installation = github_app.installation_of(repository.full_name)
    Repository.objects.filter(pk=repository.pk).update(github_installation_id=installation)
    repository.github_installation_id = installation
    return installation


def _send(job: BuildJob, installation: int) -> None:
    with contextlib.suppress(IntegrityError):  # made by the report beside this one
        CheckRun.objects.get_or_create(job=job)
    now = timezone.now()
    free = Q(sending_until__isnull=True) | Q(sending_until__lt=now)
    if not CheckRun.objects.filter(free, pk=job.pk).update(sending_until=now + LEASE):
        raise Busy(f"another report of job {job.id} is sending")
    sent = {}
    try:
        row = CheckRun.objects.get(pk=job.pk)
        job.refresh_from_db()
        if row.sent_status == "completed":
            return
        body = body_for(job)
        path = f"/repos/{job.repository.full_name}/check-runs"
        if row.run_id is None:
            created = {"name": NAME, "head_sha": job.commit_sha, **body}
            response = github_app.request("POST", path, installation, created)
        else:
            response = github_app.request("PATCH", f"{path}/{row.run_id}", installation, body)
        if response.status_code >= 400:
            # A missing permission or a commit GitHub does not know: retrying will not help.
            logger.warning("GitHub refused the check run of job %s: %s", job.id, response.status_code)
            return
        run_id = row.run_id or response.json().get("id")
        sent = {"run_id": run_id, "sent_status": body["status"], "installation_id": installation}
    finally:
        CheckRun.objects.filter(pk=job.pk).update(sending_until=None, **sent)


def body_for(job: BuildJob) -> dict:
    """The check run's fields for the job's current state (name and head_sha aside)."""
    status = github_status(job)
    body: dict = {
        "status": status,
        "external_id": job.id,
        "details_url": f"{settings.GENERATOR_SITE_URL}/builds/{job.id}/",
    }
    if status == "queued":
        body["output"] = {"title": "Queued", "summary": f"{job.image} waits for a build slot."}
    elif status == "in_progress":
        body["started_at"] = _iso(job.started_at or timezone.now())
        body["output"] = {"title": "Building", "summary": f"Building {job.image}."}
    else:
        body["conclusion"] = conclusion(job)
        body["completed_at"] = _iso(job.finished_at or timezone.now())
        body["output"] = _completed_output(job, body["conclusion"])
    return body


def _completed_output(job: BuildJob, outcome: str) -> dict:
    if outcome == "success":
        tags = ", ".join([job.image, *(f"{job.image.rsplit(':', 1)[0]}:{tag}" for tag in job.extra_tags)])
        if job.not_pushed:
            return {"title": "Built, not pushed", "summary": f"Built, not pushed: {job.not_pushed}."}
        return {"title": f"Pushed {job.image}"[:200], "summary": f"Pushed {tags}\n\nDigest: `{job.digest}`"}
    if outcome == "cancelled":
        why = f"superseded by build {job.superseded_by_id}" if job.superseded_by_id else "cancelled"
        return {"title": why.capitalize()[:200], "summary": f"The build was {why}."}
    output = {"title": ("Timed out" if outcome == "timed_out" else "Failed")[:200], "summary": job.error[:MAX_TEXT]}
    step = failing_step.find(_last_lines(job))
    if step is None:
        return output
    shown = "\n".join(step.lines)[-MAX_TEXT:]
    if step.dockerfile_line is not None:
        # BuildKit named the Dockerfile's line: GitHub shows the lines on that line of the file.
        output["annotations"] = [
            {
                "path": _dockerfile_path(job.repository),
                "start_line": step.dockerfile_line,
                "end_line": step.dockerfile_line,
                "annotation_level": "failure",
                "title": step.title[:255],
                "message": shown,
            }
        ]
        output["summary"] += f"\n\nThe failing step, `{step.title}`, is annotated on its Dockerfile line."
    else:
        # The classic builder names no Dockerfile line: the lines go in the text.
        output["summary"] += f"\n\nThe failing step, `{step.title}`, is below (the builder named no Dockerfile line)."
        output["text"] = f"```\n{shown}\n```"
    output["summary"] = output["summary"][:MAX_TEXT]
    return output


def _last_lines(job: BuildJob) -> list[str]:
    """The log's last lines; a multi-platform build's from its failed platform."""
    source = job.children.filter(status=Status.FAILED).first() if job.is_parent else job
    if source is None:
        return []
    rows = BuildLogLine.objects.filter(job_id=source.id).order_by("-seq").values_list("text", flat=True)
    return list(reversed(rows[:TAIL_LINES]))


def _dockerfile_path(repository: Repository) -> str:
    return posixpath.normpath(posixpath.join(repository.context_dir or ".", repository.dockerfile_path))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
