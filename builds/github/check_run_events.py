"""The GitHub App's webhook events, for the webhook (builds/github/webhooks.py):

- `check_run` `rerequested` (someone pressed "Re-run" on the farm's check run)
  and `check_suite` `rerequested` ("Re-run all checks") build that commit
  again: a new job like the one that ran (its ref, tags, pull request), linked
  to it as a retry, with its own check run. Only the farm's own check runs and
  suites count (their `app.id` is GENERATOR_GITHUB_APP_ID): another App's
  re-run builds nothing.
- `installation` and `installation_repositories` say which registered
  repositories the App is on: recorded as each repository's installation
  (builds/github/app.py), cleared when it is removed, suspended or deleted.
"""

from __future__ import annotations

from django.conf import settings

from builds.github.pull_requests import FORK_NOT_PUSHED
from builds.jobs.services import SubmissionError, submit_push_build
from builds.models import BuildJob, CheckRun, Repository

REREQUEST_EVENTS = ("check_run", "check_suite")
INSTALLATION_EVENTS = ("installation", "installation_repositories")
_KEEPS = ("created", "new_permissions_accepted", "unsuspend")
_DROPS = ("deleted", "suspend")
MAX_NAMES = 1000  # repositories read from one event: GitHub sends at most a few hundred


def rerequest(event: str, repository: Repository, payload: dict) -> tuple[int, str, list[str]]:
    """The webhook's answer to a check_run or check_suite event: (status, result, jobs)."""
    action = payload.get("action")
    subject = payload.get(event)
    if not isinstance(subject, dict) or not isinstance(action, str):
        return 400, f"the payload has no action or no {event}", []
    if action != "rerequested":
        return 202, f"ignored: a {event}'s {action} action does not build", []
    app = subject.get("app")
    app_id = str(app.get("id")) if isinstance(app, dict) else ""
    if not settings.GENERATOR_GITHUB_APP_ID or app_id != settings.GENERATOR_GITHUB_APP_ID:
        return 202, f"ignored: the {event} is not the farm's (another App's)", []
    job = _job_of(event, repository, subject)
    if job is None:
        return 202, f"ignored: the farm has no build of {str(subject.get('head_sha'))[:40]!r} to run again", []
    if not job.is_terminal:
        return 202, f"ignored: build {job.id} of {job.commit_sha[:12]} is still {job.status}", []
    return _build_again(repository, job)


def _job_of(event: str, repository: Repository, subject: dict) -> BuildJob | None:
    """The job the check run stands for (its external_id is the job's id, its
    id the CheckRun's), or the newest build of the suite's commit."""
    jobs = BuildJob.objects.filter(repository=repository, parent__isnull=True)
    if event == "check_run":
        external_id, run_id = subject.get("external_id"), subject.get("id")
        if isinstance(external_id, str) and external_id and (job := jobs.filter(pk=external_id[:32]).first()):
            return job
        if isinstance(run_id, int) and (row := CheckRun.objects.filter(run_id=run_id, job__in=jobs).first()):
            return row.job
    sha = subject.get("head_sha")
    if not isinstance(sha, str) or len(sha) != 40:
        return None
    return jobs.filter(commit_sha=sha).order_by("-created_at").first()


def _build_again(repository: Repository, job: BuildJob) -> tuple[int, str, list[str]]:
    if job.fork and repository.pull_requests != Repository.PullRequests.ALL:
        return 202, f"ignored: {repository.full_name} no longer builds forks' pull requests", []
    tags = [job.image.rsplit(":", 1)[1], *job.extra_tags]
    try:
        again = submit_push_build(
            repository=repository,
            ref=job.ref,
            sha=job.commit_sha,
            tags=tags,
            pusher_email=job.pusher_email,
            pull_request=job.pull_request,
            pull_request_url=job.pull_request_url,
            fork=job.fork,
            not_pushed=FORK_NOT_PUSHED if job.fork else job.not_pushed,
            retry_of=job,
        )
    except SubmissionError as exc:
        return exc.status, str(exc), []
    return 202, f"building {job.commit_sha[:12]} again (re-run of build {job.id})", [again.id]


def note_installation(repository: Repository, payload: dict) -> None:
    """An App delivery names the installation it came through: kept for the repository."""
    installation = _installation_id(payload)
    if installation is not None and installation != repository.github_installation_id:
        Repository.objects.filter(pk=repository.pk).update(github_installation_id=installation)
        repository.github_installation_id = installation


def installation_changed(event: str, payload: dict) -> tuple[int, str]:
    """The webhook's answer to an installation or installation_repositories event."""
    installation, action = _installation_id(payload), payload.get("action")
    if installation is None or not isinstance(action, str):
        return 400, f"the {event} payload has no installation id or no action"
    if event == "installation_repositories":
        added = _set(_names(payload.get("repositories_added")), installation)
        removed = _clear(_names(payload.get("repositories_removed")), installation)
        return 200, f"installation {installation}: added to {_list(added)}; removed from {_list(removed)}"
    if action in _KEEPS:
        recorded = _set(_names(payload.get("repositories")), installation)
        return 200, f"installation {installation} {action}: recorded for {_list(recorded)}"
    if action in _DROPS:
        cleared = Repository.objects.filter(github_installation_id=installation)
        names = list(cleared.values_list("full_name", flat=True))
        cleared.update(github_installation_id=None)
        return 200, f"installation {installation} {action}: forgotten for {_list(names)}"
    return 202, f"ignored: an installation's {action} action changes nothing here"


def _installation_id(payload: dict) -> int | None:
    field = payload.get("installation")
    value = field.get("id") if isinstance(field, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None


def _names(repositories: object) -> list[str]:
    if not isinstance(repositories, list):
        return []
    names = (item.get("full_name") for item in repositories if isinstance(item, dict))
    valid = [name for name in names if isinstance(name, str) and 0 < len(name) <= 200 and "\x00" not in name]
    return valid[:MAX_NAMES]


def _set(names: list[str], installation: int) -> list[str]:
    rows = Repository.objects.filter(full_name__in=names)
    found = sorted(rows.values_list("full_name", flat=True))
    rows.update(github_installation_id=installation)
    return found


def _clear(names: list[str], installation: int) -> list[str]:
    rows = Repository.objects.filter(full_name__in=names, github_installation_id=installation)
    found = sorted(rows.values_list("full_name", flat=True))
    rows.update(github_installation_id=None)
    return found


def _list(names: list[str]) -> str:
    return ", ".join(names) if names else "no registered repository"
