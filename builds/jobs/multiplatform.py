"""Multi-platform builds: one parent job, one child job per platform.

The parent holds what the user asked for (its image and tags, `platforms`) and
is never dispatched (models.WAITING leaves it out). Each child is an ordinary
BuildJob with its `platform`: dispatched like any job to a daemon that builds
that platform (pool/scheduler.py `platform_daemons`, native preferred), built
with BuildKit `--platform`, and pushed under its platform's helper tag of the
parent's image repository (`child_tag`), which gives its manifest a digest in
that repository. Its attempts, lease, reaper and retries are its own: a lost
worker retries only its child.

The helper tags are one per platform and repository, reused by every build, so
a repository holds its own tags plus at most one helper tag per platform it was
ever built for. Concurrent builds of one repository moving the same helper tag
do not mix their images: the index names each child's manifest by the digest
the registry answered to that child's own push (a manifest stays addressable by
digest after its tag moves), and no two children of one repository and
platform build on one daemon at once (a BuildKit build has its daemon to
itself, and where daemons are shared the dispatcher keeps them apart), so none
retags the other's local image between its build and its push; no build may
use a helper tag as its own (the submit refuses it). Tags are never deleted:
distribution 2.x cannot delete a tag without its manifest, and a registry that
deletes the manifest with the tag would break the index.

Each change of a child's state settles the parent (`settle`, called by
builds/jobs/transitions.py after commit):

1. a child failed: the parent fails with that platform's reason, the other
   children are cancelled, nothing is tagged;
2. a child was cancelled (the parent's cancel, a newer push): the parent is
   cancelled, and so are the rest;
3. every child pushed (each signed, with its provenance and SBOM attached:
   builds/worker/attestations.py): the one caller whose building -> pushing swap wins
   writes the image index (a Docker manifest list of the children's manifests,
   with their platforms and sizes) under every tag of the build, through the
   registry's HTTP API, signs it and attaches its provenance (naming each
   child by digest), and the parent succeeds with the index's digest;
4. otherwise, once a child runs, the parent is building.

The swaps make two children finishing at once harmless: one writes the index.

Logs: each child writes its own log, and every batch of it also into the
parent's, each line prefixed with `[os/arch] ` (logs.append_shared takes the
parent's sequence numbers under a row lock, since children write at once). So
`/b1/build/log/ws/ID` and the REST log carry all platforms as text; the
WebSocket's frames add each line's `platform`, read from that prefix
(builds/live/frames.py), and the page draws a section per platform (steps.js).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from builds.jobs import transitions
from builds.logs.writer import append_shared
from builds.models import WAITING, BuildJob
from builds.registry import usage as registry_usage
from builds.registry.accounts import registry_login
from builds.registry.client import IndexEntry, RegistryAPI, RegistryError, repository_path
from builds.worker import attestations
from lib.errors import SubmissionError
from lib.references import parse_reference
from pool.models import DockerDaemon
from pool.platforms import check as check_platform

logger = logging.getLogger(__name__)

Status = BuildJob.Status
CHILD_TAG_PREFIX = "generator-platform-"


class PlatformUnavailable(SubmissionError):
    pass


def child_tag(platform: str) -> str:
    """The helper tag a child pushes its platform's image under (linux/arm/v7 ->
    generator-platform-linux-arm-v7): the same for every build of the repository."""
    return CHILD_TAG_PREFIX + platform.replace("/", "-")


def checked_platforms(platforms: list[str], group: str) -> list[str]:
    """The platforms as the farm spells them, each one that some enabled daemon of
    `group` builds (natively or emulated); SubmissionError naming any other."""
    if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
        raise SubmissionError("platforms is a list of os/arch strings, e.g. ['linux/amd64', 'linux/arm64']")
    try:
        wanted = list(dict.fromkeys(check_platform(p) for p in platforms))
    except ValueError as exc:
        raise SubmissionError(str(exc)) from None
    if len(wanted) > 8:
        raise SubmissionError("at most 8 platforms in one build")
    able: set[str] = set()
    for daemon in DockerDaemon.objects.filter(enabled=True, group=group):
        able.update(daemon.builds_platforms)
    if missing := [p for p in wanted if p not in able]:
        where = f"daemon group {group!r}" if group else "the pool"
        known = ", ".join(sorted(able)) or "none reported yet"
        raise PlatformUnavailable(
            f"no daemon of {where} builds {', '.join(missing)} (it builds: {known}); "
            "an operator adds a daemon of that platform, or QEMU emulation (emulated_platforms)"
        )
    return wanted


def create_children(parent: BuildJob) -> list[BuildJob]:
    """One child per platform of `parent`, with its source and options (inside the caller's transaction)."""
    children = []
    for platform in parent.platforms:
        child = BuildJob(
            parent=parent,
            platform=platform,
            dockerfile=parent.dockerfile,
            dockerfile_path=parent.dockerfile_path,
            repository=parent.repository,
            ref=parent.ref,
            commit_sha=parent.commit_sha,
            build_args=parent.build_args,
            labels=parent.labels,
            no_cache=parent.no_cache,
            pull=parent.pull,
            builder="buildkit",
            target=parent.target,
            submitted_by=parent.submitted_by,
            team=parent.team,
        )
        child.image = f"{parent.image_repository}:{child_tag(platform)}"
        child.save(force_insert=True)
        children.append(child)
    return children


def mirror_into_parent(child: BuildJob):
    """The child's LogWriter.mirror: its lines into the parent's log, with its platform."""
    prefix = f"[{child.platform}] "
    return lambda texts: append_shared(child.parent_id, [prefix + text for text in texts])


def on_child_moved(sender, parent_id: str, **kwargs) -> None:
    """`signals.child_moved`'s receiver (builds/apps.py)."""
    settle(parent_id)


def settle(parent_id: str) -> None:
    """The parent follows its children (see the module's doc)."""
    parent = BuildJob.objects.filter(pk=parent_id).first()
    if parent is None or parent.is_terminal:
        return
    children = list(parent.children.order_by("finished_at", "platform"))
    failed = [c for c in children if c.status == Status.FAILED]
    if failed:
        reason = f"{failed[0].platform}: {failed[0].error}"
        if _end(parent.id, Status.FAILED, f"Build failed: {reason}; nothing was tagged", error=reason):
            _stop(children, parent)
        return
    cancelled = [c for c in children if c.status == Status.CANCELLED]
    if cancelled:
        who = cancelled[0].cancelled_by or parent.cancelled_by or "an operator"
        if _end(parent.id, Status.CANCELLED, f"Cancelled by {who}; nothing was tagged"):
            _stop(children, parent)
        return
    if children and all(c.status == Status.SUCCEEDED for c in children):
        transitions.parent_moves(parent.id, Status.QUEUED, Status.BUILDING)
        if transitions.parent_moves(parent.id, Status.BUILDING, Status.PUSHING):
            _publish_index(parent, children)
        return
    if any(c.status != Status.QUEUED for c in children):
        transitions.parent_moves(parent.id, Status.QUEUED, Status.BUILDING)


def fail_unbuildable() -> int:
    """Waiting children whose platform no enabled daemon of their group builds any
    more (the pool changed since the submit) fail at once, and so their builds."""
    waiting = list(BuildJob.objects.filter(WAITING, parent__isnull=False).select_related("repository"))
    if not waiting:
        return 0
    able: dict[str, set[str]] = {}
    for daemon in DockerDaemon.objects.filter(enabled=True):
        able.setdefault(daemon.group, set()).update(daemon.builds_platforms)
    failed = 0
    for child in waiting:
        if child.platform not in able.get(child.daemon_group, set()):
            reason = f"no enabled daemon builds {child.platform} any more (the pool changed after the submit)"
            failed += transitions.fail(child.id, child.attempt, reason)
    return failed


def cancel(parent: BuildJob, user) -> str:
    """The parent's cancel reaches every child: waiting ones end at once, running ones at their next heartbeat."""
    if transitions.cancel_waiting(parent.id, user):
        outcome = "cancelled"
        append_shared(parent.id, [f"[generator] Cancelled by {user} before it started"])
    elif transitions.request_cancel(parent.id, user) or _parent_started_and_active(parent.id):
        outcome = "stopping"
    else:
        parent.refresh_from_db(fields=["status"])
        return f"already {parent.status}"
    for child in parent.children.all():
        if not transitions.cancel_waiting(child.id, user):
            transitions.request_cancel(child.id, user)
    return outcome


def _parent_started_and_active(parent_id: str) -> bool:
    return BuildJob.objects.filter(pk=parent_id, status__in=BuildJob.ACTIVE).exists()


def _stop(children: list[BuildJob], parent: BuildJob) -> None:
    """The rest of the children stop: waiting ones at once, running ones at their next heartbeat."""
    for child in children:
        if child.is_terminal:
            continue
        if transitions.cancel_waiting(child.id, parent.cancelled_by):
            continue
        transitions.request_cancel(child.id, parent.cancelled_by)


def _publish_index(parent: BuildJob, children: list[BuildJob]) -> None:
    """Writes the index under every tag of the build, then the parent succeeds (or fails, untagged)."""
    reference = parse_reference(parent.image_repository)
    host = reference.registry
    name = repository_path(reference.repository, host)
    by_platform = sorted(children, key=lambda c: parent.platforms.index(c.platform))
    try:
        with RegistryAPI(host, **registry_login(host, parent.team_id)) as api:
            entries = [IndexEntry(api.manifest(name, child.digest), child.platform) for child in by_platform]
            digest = _tag_every_or_none(api, name, parent.tags, entries)
    except RegistryError as exc:
        reason = f"could not write the image index: {exc}"
        _end(parent.id, Status.FAILED, f"Build failed: {reason}", error=reason)
        return
    if settings.GENERATOR_ATTESTATIONS:
        try:  # each child signed its own image; the index gets its provenance too
            attached = attestations.attest_index(parent, by_platform, digest)
        except attestations.AttestationFailed as exc:
            _end(parent.id, Status.FAILED, f"Build failed: {exc}", error=str(exc))
            return
        append_shared(parent.id, [f"[generator] Signed the index: {attached.signature_tag}, provenance in "
                                  f"{attached.attestation_tag}"])  # fmt: skip
    registry_usage.record_push(parent.team_id, parent.image_repository, parent.tags, digest)
    platforms = ", ".join(c.platform for c in by_platform)
    _end(parent.id, Status.SUCCEEDED, f"Pushed {parent.image}@{digest}: an image index of {platforms}", digest=digest)


def _tag_every_or_none(api: RegistryAPI, name: str, tags: list[str], entries: list[IndexEntry]) -> str:
    """Writes the index under every tag and answers its digest; if one write
    fails, the tags written before it are put back as they were (the manifest
    each named, or no tag where the registry can delete a tag alone) and the
    error says what could not be undone (distribution 2.x cannot delete a tag
    alone: a tag that did not exist before keeps the new index)."""
    before = {tag: api.stored(name, tag) for tag in tags}
    written: list[str] = []
    try:
        for tag in tags:
            digest = api.put_index(name, tag, entries)
            written.append(tag)
    except RegistryError as exc:
        kept = _put_back(api, name, written, before)
        undone = f"; the index stays under {', '.join(kept)}: could not be put back" if kept else ""
        raise RegistryError(f"{exc}{undone}", transient=exc.transient) from exc
    return digest


def _put_back(api: RegistryAPI, name: str, tags: list[str], before: dict) -> list[str]:
    """The tags as `before` had them; answers those that could not be put back."""
    kept = []
    for tag in tags:
        try:
            if before[tag] is not None:
                api.put_manifest(name, tag, *before[tag])
            elif not api.delete_tag(name, tag):
                kept.append(tag)
        except RegistryError:
            kept.append(tag)
    return kept


def _end(parent_id: str, status: str, last_line: str, **fields) -> bool:
    """The parent's last line and its end, in one transaction: a viewer who sees the end has the line."""
    with transaction.atomic():
        ended = transitions.parent_ends(parent_id, status, **fields)
        if ended:
            append_shared(parent_id, [f"[generator] {last_line}"])
    return ended
