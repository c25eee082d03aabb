"""Which files a push changed, for the rules' path filters (builds/triggers/path_filters.py).

GitHub's payload lists them when it can be trusted to (path_filters.from_payload);
otherwise the web tier asks git in a mirror of its own (GENERATOR_GIT_CACHE_DIR),
`git diff --name-only before after`, within GENERATOR_CHANGED_FILES_TIMEOUT
seconds, so that the webhook still answers well inside GitHub's 10 s. When git
cannot say in time, the push builds, and the webhook's answer says why: a build
too many is better than a change never built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings

from builds.sources import deploy_keys
from builds.sources.git import GIT_TIMEOUT, GitSource, SourceError
from builds.triggers.path_filters import from_payload, has_filters, refusal

logger = logging.getLogger(__name__)
_NO_COMMIT = "0" * 40


@dataclass(frozen=True)
class Changes:
    files: list[str] | None  # None: unknown, so every rule builds
    note: str = ""  # how they were found, when not from the payload; why unknown


def git_source(repository, *, timeout: float = GIT_TIMEOUT) -> GitSource:
    """The repository's git, as the farm reaches it (never the payload's URL)."""
    return GitSource(
        repository.clone_url,
        token=repository.access_token,
        cache_dir=settings.GENERATOR_GIT_CACHE_DIR,
        allow_local=settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES,
        ssh_key=deploy_keys.private_key(repository),
        known_hosts=deploy_keys.known_hosts_for(repository),
        timeout=timeout,
    )


def of_push(repository, payload: dict, sha: str) -> Changes:
    listed = from_payload(payload)
    if listed.files is not None:
        return Changes(listed.files)
    before = str(payload.get("before", ""))
    if payload.get("created") or before == _NO_COMMIT or not before:
        if not repository.default_branch:
            return Changes(None, f"changed files unknown ({listed.why_not}, no default branch known yet)")
        before = f"refs/heads/{repository.default_branch}"  # what it changed since it left that branch
    timeout = settings.GENERATOR_CHANGED_FILES_TIMEOUT
    try:
        files = git_source(repository, timeout=timeout).changed_files(before, sha)
    except SourceError as exc:
        logger.warning("changed files of %s at %s: %s", repository.full_name, sha[:12], exc)
        return Changes(None, f"changed files unknown ({listed.why_not}; git could not say: {exc})")
    return Changes(files, f"changed files from git ({listed.why_not})")


@dataclass(frozen=True)
class Filtered:
    rules: list  # those that build
    why_none: str  # when none does: what each filter said
    note: str  # how the changed files were found, when not from the payload


def filter_rules(repository, rules: list, payload: dict, sha: str) -> Filtered:
    """The rules whose path filters let this push build. Git is asked only when
    a rule has filters and the payload cannot say."""
    if not any(has_filters(rule) for rule in rules):
        return Filtered(rules, "", "")
    changes = of_push(repository, payload, sha)
    if changes.files is None:
        return Filtered(rules, "", f"{changes.note}: building")
    kept, reasons = [], []
    for rule in rules:
        if why := refusal(rule, changes.files):
            reasons.append(why)
        else:
            kept.append(rule)
    return Filtered(kept, "; ".join(dict.fromkeys(reasons)), changes.note)
