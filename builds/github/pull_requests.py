"""GitHub's `pull_request` events: what a pull request builds, for the webhook.

opened, synchronize and reopened build the pull request's head commit (the
ref `refs/pull/N/head`, which GitHub keeps in the base repository, forks'
included); closed cancels its builds still waiting or running. Other actions
(labeled, edited, ...) build nothing.

Like Docker Hub's autotest and GitHub Actions, a pull request is only checked
by default: its image is built and not pushed. A `pull_request` rule naming
the base branch pushes it under its tags (`pr-{number}`).

A fork's pull request runs code nobody with a say over the repository has
read: it gets none of the repository's build secrets, no SSH agent with the
deploy key, no registry account (it is never pushed), and a step cache of its
own, so it cannot leave layers or cache mounts for the repository's builds.
The repository's `pull_requests` setting says whether forks build at all
(off, internal, all); by default only its own branches' pull requests do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from builds.jobs.services import SubmissionError, cancel_pull_request_builds, submit_push_build
from builds.models import Repository
from builds.triggers.rules import PULL_REQUEST, PushedRef, RuleError, is_ref_text, tags_for

BUILDING_ACTIONS = ("opened", "synchronize", "reopened")
_SHA = re.compile(r"[0-9a-f]{40}")
_FULL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")
FORK_NOT_PUSHED = "a fork's pull request is never pushed: no registry credentials reach its build"


class NotAPullRequest(ValueError):
    """The payload lacks what a pull_request event has; str() says what."""


@dataclass(frozen=True)
class PullRequest:
    action: str
    number: int
    head_sha: str
    head_repository: str  # owner/name; '' when the fork was deleted
    base_branch: str
    url: str

    @property
    def ref(self) -> str:
        """Where GitHub keeps its head in the base repository, forks' included."""
        return f"refs/pull/{self.number}/head"

    def is_fork_of(self, repository: Repository) -> bool:
        return self.head_repository.lower() != repository.full_name.lower()


def parse(payload: dict) -> PullRequest:
    """The fields the farm uses, checked; NotAPullRequest if one is missing or odd."""
    action, pull = payload.get("action"), payload.get("pull_request")
    if not isinstance(action, str) or not isinstance(pull, dict):
        raise NotAPullRequest("the payload has no action or no pull_request")
    number = pull.get("number", payload.get("number"))
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 2**31:
        raise NotAPullRequest("the pull request's number is not a positive integer")
    head, base = pull.get("head"), pull.get("base")
    if not isinstance(head, dict) or not isinstance(base, dict):
        raise NotAPullRequest("the pull request has no head or no base")
    sha, branch = head.get("sha"), base.get("ref")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise NotAPullRequest("the pull request's head sha is not a commit SHA")
    if not isinstance(branch, str) or not branch or not is_ref_text(f"refs/heads/{branch}"):
        raise NotAPullRequest("the pull request's base ref is not a branch name")
    head_repo = head.get("repo")
    full_name = head_repo.get("full_name") if isinstance(head_repo, dict) else None
    full_name = full_name if isinstance(full_name, str) and _FULL_NAME.fullmatch(full_name) else ""
    return PullRequest(action, number, sha, full_name, branch, _page(pull.get("html_url")))


def _page(url: object) -> str:
    """The pull request's page, if it is an http(s) URL that fits the column; else ''."""
    if not isinstance(url, str) or len(url) > 300:
        return ""
    try:
        URLValidator(schemes=["https", "http"])(url)
    except ValidationError:
        return ""
    return url


def handle(repository: Repository, payload: dict) -> tuple[int, str, list[str]]:
    """The webhook's answer to a pull_request event: (status, result, jobs)."""
    try:
        pull = parse(payload)
    except NotAPullRequest as exc:
        return 400, str(exc), []
    if pull.action == "closed":
        cancelled = cancel_pull_request_builds(repository, pull.number)
        return 202, f"pull request #{pull.number} closed: {cancelled} of its builds cancelled", []
    if pull.action not in BUILDING_ACTIONS:
        return 202, f"ignored: a pull request's {pull.action} action does not build", []
    if refusal := _refusal(repository, pull):
        return 202, refusal, []
    fork = pull.is_fork_of(repository)
    try:
        tags = tags_for(repository.rules.all(), PushedRef(PULL_REQUEST, pull.base_branch, pull.number), pull.head_sha)
    except RuleError as exc:
        return 400, f"a build rule of {repository.full_name} cannot be applied: {exc} (fix it in admin)", []
    not_pushed = ""
    if fork:
        not_pushed = FORK_NOT_PUSHED
    elif not tags:
        not_pushed = f"no pull_request rule of {repository.full_name} pushes pull requests into {pull.base_branch}"
    try:
        job = submit_push_build(
            repository=repository,
            ref=pull.ref,
            sha=pull.head_sha,
            tags=tags if not not_pushed else [f"pr-{pull.number}"],
            pull_request=pull.number,
            pull_request_url=pull.url,
            fork=fork,
            not_pushed=not_pushed,
        )
    except SubmissionError as exc:
        return exc.status, str(exc), []
    what = f"pull request #{pull.number}" + (f" from the fork {pull.head_repository or '(deleted)'}" if fork else "")
    outcome = f"not pushed: {not_pushed}" if not_pushed else f"as {', '.join(tags)}"
    return 202, f"building {what} at {pull.head_sha[:12]}, {outcome}", [job.id]


def _refusal(repository: Repository, pull: PullRequest) -> str:
    """Why the repository's setting builds no such pull request, or ''."""
    setting = repository.pull_requests
    if setting == Repository.PullRequests.OFF:
        return f"ignored: {repository.full_name} does not build pull requests (pull_requests: off)"
    if setting == Repository.PullRequests.INTERNAL and pull.is_fork_of(repository):
        source = pull.head_repository or "a deleted fork"
        return (
            f"ignored: pull request #{pull.number} comes from {source}, a fork; {repository.full_name} builds"
            " pull requests from its own branches only (pull_requests: internal; all builds forks' too)"
        )
    return ""
