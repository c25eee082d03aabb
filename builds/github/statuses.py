"""Commit statuses on GitHub: pending when a push's build is queued, then
success, failure or error. Sent by the control worker (task farm.report_status),
retried when GitHub is unreachable or answers 5xx, and never able to fail a build.

The API base (GENERATOR_GITHUB_API_URL) gets each repository's token, so it is
held to the builds' egress rules: one on a loopback, link-local or private
address is refused at each use (logged, nothing sent) unless
GENERATOR_ALLOW_LOCAL_REPOSITORIES allows local addresses.
"""

from __future__ import annotations

import functools
import logging

import requests
from django.conf import settings

from builds.models import BuildJob
from lib.outbound import RefusedURL, check_url

logger = logging.getLogger(__name__)

CONTEXT = "generator"
_STATE = {
    BuildJob.Status.QUEUED: "pending",
    BuildJob.Status.BUILDING: "pending",
    BuildJob.Status.PUSHING: "pending",
    BuildJob.Status.SUCCEEDED: "success",
    BuildJob.Status.FAILED: "failure",
    BuildJob.Status.CANCELLED: "error",
}


class ReportFailed(Exception):
    """GitHub could not be reached or failed (5xx, 429): worth trying again."""


def api_base() -> str:
    """GENERATOR_GITHUB_API_URL, or RefusedURL if the farm may not send tokens there."""
    base = settings.GENERATOR_GITHUB_API_URL
    if not base.startswith(("https://", "http://")):
        raise RefusedURL(f"GENERATOR_GITHUB_API_URL {base!r} is not an http(s) URL")
    check_url(base, allow_local=settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES, what="GENERATOR_GITHUB_API_URL")
    return base


@functools.lru_cache(maxsize=16)
def _log_refused(reason: str) -> None:
    # Once per process and reason: every job would say the same.
    logger.error("commit statuses are not sent: %s", reason)


def status_for(job: BuildJob) -> dict:
    if job.status == BuildJob.Status.SUCCEEDED and job.not_pushed:
        description = f"Built, not pushed: {job.not_pushed}"
    elif job.status == BuildJob.Status.SUCCEEDED:
        description = f"Pushed {job.image}"
    elif job.status == BuildJob.Status.FAILED:
        description = f"Failed: {job.error}"
    elif job.status == BuildJob.Status.CANCELLED:
        description = f"Superseded by {job.superseded_by_id[:8]}" if job.superseded_by_id else "Cancelled"
    else:
        description = f"Building {job.image}"
    return {
        "state": _STATE[job.status],
        "target_url": f"{settings.GENERATOR_SITE_URL}/builds/{job.id}/",
        "description": description[:140],  # GitHub's limit
        "context": CONTEXT,
    }


def report(job_id: str) -> None:
    """Posts the job's current state on its commit. Raises ReportFailed to be retried."""
    job = BuildJob.objects.select_related("repository").filter(pk=job_id).first()
    if job is None or job.repository is None or not job.commit_sha:
        return
    try:
        base = api_base()
    except RefusedURL as exc:
        _log_refused(str(exc))  # a setting to fix, not worth retrying
        return
    url = f"{base}/repos/{job.repository.full_name}/statuses/{job.commit_sha}"
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if job.repository.access_token:
        headers["Authorization"] = f"Bearer {job.repository.access_token}"
    try:
        response = requests.post(url, json=status_for(job), headers=headers, timeout=10)
    except requests.RequestException as exc:
        raise ReportFailed(f"GitHub did not answer: {exc.__class__.__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise ReportFailed(f"GitHub answered {response.status_code}")
    if response.status_code >= 400:
        # Wrong token or permissions: retrying will not help. Say so, once.
        logger.warning("GitHub refused the status of job %s: %s", job.id, response.status_code)
