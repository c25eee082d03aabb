"""Base-image updates (Docker Hub's "repository links"): a repository that asks
for it (`Repository.rebuild_on_base_image_change`, off by default) builds its
default branch again when an image it builds FROM has a new digest.

1. Recording. Each successful build of a repository's default branch records
   its base images (BaseImage rows): the images its Dockerfile reads
   (builds/dockerfiles/images.py: FROM, COPY --from, RUN --mount from=; its
   earlier stages are not images), each by tag (`latest` where none is given;
   one pinned to a digest never changes and is not watched), with the digest
   BuildKit's log named for it (`#5 [1/2] FROM localhost:5000/base@sha256:...`,
   builds/provenance/slsa.py's FromLines). Where the log names none (the classic
   builder; BuildKit where the daemon held the image), the digest the daemon
   holds the image under (its RepoDigests); where it has none either, the
   first check learns the digest instead of starting a build.
2. Checking. Beat runs `farm.check_base_images` on the control worker every
   GENERATOR_BASE_IMAGE_INTERVAL seconds. It asks, for the least recently
   checked rows first, at most GENERATOR_BASE_IMAGE_HEADS manifest HEADs within
   GENERATOR_BASE_IMAGE_TICK_SECONDS, the registry for the tag's digest (Accept:
   manifest lists and OCI indexes too, so a multi-platform image's digest is its
   index's, as BuildKit names it). A registry's refusal or silence is recorded
   on the row (`check_error`), never fatal to the others.
3. Rebuilding. A digest other than the one built from, and other than the one a
   build was already started for (`rebuild_digest`), starts one build of the
   default branch's head through the same submit path, queue and fair share as
   every build (builds/jobs/services.py), with `reason` naming the image and both
   digests, and `pull` set (a daemon holding the old image would build from it
   otherwise). Not while such a build of the repository is still waiting or
   running: that build pulls the newest anyway. The claim of a change is a
   compare-and-swap on `rebuild_digest` in the build's own transaction, so two
   checks at once start it once, and a refused submit (a quota, no pool) claims
   nothing and is tried again at the next check.

Credentials are the build's: in the farm's own registry a token the farm signs
for a pull of that image alone, as far as the repository's team may read it
(teams/registry_access.py); elsewhere the team's account for the registry, else
the farm's where it lets builds pull with it. Every request (the registry, its
token realm, any redirect) keeps to the farm's outbound rules
(lib/outbound_http.py): a host on a loopback, link-local or private address
is refused unless it is the farm's registry or one on the allow-list, or
GENERATOR_ALLOW_LOCAL_REPOSITORIES is set, and is connected to at the address
checked.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from builds.engine.docker import EngineError, EngineSession
from builds.provenance import slsa as provenance
from builds.provenance.slsa import FromLines
from builds.registry.accounts import farm_signer, is_farm_registry
from builds.registry.client import ANY, RegistryAPI, RegistryError, repository_path
from builds.triggers.rules import RuleError, as_tag, match, render
from lib import crypto
from lib.outbound_http import OutboundAdapter
from lib.references import InvalidReference, parse_reference
from teams.models import RegistryCredential
from teams.registry_access import PULL, Account, Scope, granted

logger = logging.getLogger(__name__)

REASON_PREFIX = "base image "
TOKEN_SECONDS = 300
_NEEDS_COMMIT = re.compile(r"\{(sha|short_sha)\}")


# --- Recording -------------------------------------------------------------------


def watched(images: Iterable[str]) -> list[str]:
    """The images a check can follow, as `registry/path:tag`, each once: not
    pinned to a digest; without a tag, `latest`."""
    found = []
    for image in images:
        try:
            reference = parse_reference(image)
        except InvalidReference:
            continue
        if reference.digest:
            continue
        host = reference.registry
        canonical = f"{host}/{repository_path(reference.repository, host)}:{reference.tag or 'latest'}"
        if canonical not in found:
            found.append(canonical)
    return found


def built_digests(references: list[str], froms: FromLines) -> dict[str, str]:
    """Each watched reference's digest as BuildKit's log named it, "" where it
    named none or cannot be told apart (two tags of one image, printed without)."""
    printed: list[tuple[str, str | None, str]] = []  # (registry/path, tag or None, digest)
    for image in froms.images.values():
        if not image.digest:
            continue
        try:
            reference = parse_reference(image.reference)
        except InvalidReference:
            continue
        printed.append((_name(reference.registry, reference.repository), reference.tag, image.digest))
    digests = {}
    for canonical in references:
        name, tag = canonical.rsplit(":", 1)
        tags_of_name = sum(1 for other in references if other.rsplit(":", 1)[0] == name)
        candidates = {d for n, t, d in printed if n == name and (t == tag or (t is None and tags_of_name == 1))}
        digests[canonical] = candidates.pop() if len(candidates) == 1 else ""
    return digests


def _name(host: str, repository: str) -> str:
    return f"{host}/{repository_path(repository, host)}"


def records(job) -> bool:
    """Whether the job is a build of its repository's default branch, whose base images are recorded."""
    repository = job.repository
    if repository is None or not repository.default_branch or job.pull_request is not None:
        return False
    return job.ref in (f"refs/heads/{repository.default_branch}", repository.default_branch)  # a push's, the API's


def resolve_on_daemon(job, engine: EngineSession, froms: FromLines) -> None:
    """The base images the log named without a digest (every FROM of the classic
    builder; BuildKit's where the daemon held the image), by the registry digest
    the daemon holds them under (its RepoDigests): one image inspect each, on
    the daemon that built, before the build is recorded. Never fails the build."""
    if not records(job):
        return
    for key, image in list(froms.images.items()):
        if image.digest:
            continue
        try:
            digest, _ = engine.image_digest(image.reference)
        except EngineError as exc:
            logger.info("job %s: no digest for its base image %s: %s", job.id, image.reference, exc)
            continue
        if digest:
            froms.images[key] = provenance.BaseImage(image.reference, digest, "daemon-repo-digest")


def record(job, froms: FromLines) -> bool:
    """After a successful build: the base images of a build of its repository's
    default branch replace those recorded. Answers whether it recorded."""
    from builds.models import BaseImage, BuildJob

    if not records(job) or froms.dockerfile_images is None:
        return False
    repository = job.repository
    if not BuildJob.objects.filter(pk=job.pk, status=BuildJob.Status.SUCCEEDED).exists():
        return False
    references = watched(froms.dockerfile_images)
    digests = built_digests(references, froms)
    with transaction.atomic():
        BaseImage.objects.filter(repository=repository).exclude(reference__in=references).delete()
        for reference in references:
            row, _ = BaseImage.objects.get_or_create(repository=repository, reference=reference)
            BaseImage.objects.filter(pk=row.pk).update(built_digest=digests[reference])
    logger.info("job %s: base images of %s recorded: %s", job.id, repository.full_name, digests)
    return True


# --- Checking --------------------------------------------------------------------


def check_due() -> int:
    """One look: asks for the digests of the least recently checked base images
    of repositories that want rebuilds, within the tick's bounds, and starts
    their builds. Answers how many builds started."""
    from builds.models import BaseImage

    deadline = time.monotonic() + settings.GENERATOR_BASE_IMAGE_TICK_SECONDS
    rows = list(
        BaseImage.objects.filter(repository__rebuild_on_base_image_change=True)
        .select_related("repository", "repository__team")
        .order_by(F("checked_at").asc(nulls_first=True), "pk")[: settings.GENERATOR_BASE_IMAGE_HEADS]
    )
    by_repository: dict[int, list] = {}
    for row in rows:
        by_repository.setdefault(row.repository_id, []).append(row)
    started = asked_in_all = 0
    for checked in by_repository.values():
        asked = []
        for row in checked:
            if time.monotonic() > deadline:
                break
            _ask(row)
            asked.append(row)
        asked_in_all += len(asked)
        changed = [r for r in asked if r.current_digest not in ("", r.built_digest, r.rebuild_digest)]
        if changed and _rebuild(checked[0].repository, changed):
            started += 1
        if time.monotonic() > deadline:
            logger.info("base-image check: out of time; %s base images wait", len(rows) - asked_in_all)
            break
    return started


def _ask(row) -> None:
    """The row's digest now, stored with when it was asked; a digest the build
    did not name is learned (no build for it)."""
    from builds.models import BaseImage

    try:
        row.current_digest, row.check_error = current_digest(row.reference, row.repository.team_id), ""
    except RegistryError as exc:
        row.check_error = str(exc)[:500]
        logger.info("base-image check of %s for %s: %s", row.reference, row.repository, exc)
    row.checked_at = timezone.now()
    fields = {"checked_at": row.checked_at, "check_error": row.check_error, "current_digest": row.current_digest}
    BaseImage.objects.filter(pk=row.pk).update(**fields)
    if row.current_digest and not row.built_digest:
        BaseImage.objects.filter(pk=row.pk, built_digest="").update(built_digest=row.current_digest)
        row.built_digest = row.current_digest


class _Claimed(Exception):
    """Another check started the build for this change first."""


def _rebuild(repository, changed: list) -> bool:
    """One build of the default branch for the changes; False where none starts (logged, noted on the rows)."""
    from builds.jobs.services import SubmissionError, submit_base_image_build
    from builds.models import BaseImage, Repository

    changes = (f"{REASON_PREFIX}{r.reference} changed from {r.built_digest} to {r.current_digest}" for r in changed)
    reason = "; ".join(changes)
    try:
        tags = rebuild_tags(repository.rules.all(), repository.default_branch)
        if not tags:
            raise SubmissionError(
                f"no branch rule for the default branch ({repository.default_branch or 'not known yet'}) gives a tag"
                " without {sha} or {short_sha}"
            )
        with transaction.atomic():
            # The repository's row held to the end: of two checks at once, the second sees the first's build.
            Repository.objects.select_for_update().filter(pk=repository.pk).only("pk").first()
            if previous := _waiting_build(repository):
                logger.info(
                    "base images of %s changed; build %s for an earlier change has not ended", repository, previous
                )
                return False
            for row in changed:
                claim = BaseImage.objects.filter(pk=row.pk, rebuild_digest=row.rebuild_digest)
                if not claim.update(rebuild_digest=row.current_digest):
                    raise _Claimed
            job = submit_base_image_build(repository, tags, reason[:1000])
            BaseImage.objects.filter(pk__in=[r.pk for r in changed]).update(rebuild=job)
    except _Claimed:
        return False
    except SubmissionError as exc:
        note = f"the build for the new digest did not start: {exc}"[:500]
        BaseImage.objects.filter(pk__in=[r.pk for r in changed]).update(check_error=note)
        logger.warning("base images of %s changed; no build: %s", repository, exc)
        return False
    logger.info("base images of %s changed: build %s (%s)", repository, job.id, reason)
    return True


def _waiting_build(repository) -> str | None:
    """A base-image build of the repository still waiting or running."""
    from builds.models import BuildJob

    active = BuildJob.objects.filter(
        repository=repository, status__in=BuildJob.ACTIVE, reason__startswith=REASON_PREFIX, parent__isnull=True
    )
    return active.values_list("id", flat=True).first()


def rebuild_tags(rules: Iterable, branch: str) -> list[str]:
    """The tags the default branch's rules give a build whose commit is not known
    yet (as a schedule's): their templates without {sha} or {short_sha}."""
    tags: list[str] = []
    for rule in rules:
        groups = match(rule.pattern, branch) if rule.source == "branch" and branch else None
        if groups is None:
            continue
        for template in rule.tags.split(","):
            if _NEEDS_COMMIT.search(template):
                continue
            try:
                tag = as_tag(render(template.strip(), ref_name=branch, sha="", groups=groups))
            except RuleError:
                continue
            if tag and tag not in tags:
                tags.append(tag)
    return tags


# --- Asking the registry -----------------------------------------------------------


def current_digest(reference: str, team_id: int | None) -> str:
    """What `registry/path:tag` names now in its registry: one manifest HEAD."""
    host, _, rest = reference.partition("/")
    name, _, tag = rest.rpartition(":")
    with _registry(host, name, team_id) as api:
        response = api.head_manifest(name, tag, ", ".join(ANY))
    if response.status_code == 404:
        raise RegistryError(f"{reference} is not in its registry (HTTP 404)")
    if response.status_code >= 300:
        raise RegistryError(f"{host} answered HTTP {response.status_code} for {name}:{tag}")
    digest = response.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        raise RegistryError(f"{host} gave no digest for {name}:{tag}")
    return digest


def _registry(host: str, name: str, team_id: int | None) -> RegistryAPI:
    api = RegistryAPI(host, timeout=settings.GENERATOR_BASE_IMAGE_TIMEOUT, **_credentials(host, name, team_id))
    adapter = OutboundAdapter(trusted=_trusted_hosts())
    api.http.mount("http://", adapter)
    api.http.mount("https://", adapter)
    return api


def _credentials(host: str, name: str, team_id: int | None) -> dict:
    """As the repository's builds pull: see the module's docstring."""
    if is_farm_registry(host):
        who = f"base-image check (team {team_id})" if team_id else "base-image check"
        account = Account(subject=who, team_ids=frozenset([team_id] if team_id else []), staff=team_id is None)
        access = granted(account, [Scope("repository", name, (PULL,))], host)
        return {"token_source": lambda scope: farm_signer().sign(who, access, TOKEN_SECONDS)["token"] if access else ""}
    from builds.models import Registry
    from lib.references import DOCKER_HUB, DOCKER_HUB_SPELLINGS

    hosts = list(DOCKER_HUB_SPELLINGS) if host == DOCKER_HUB else [host]
    own = RegistryCredential.objects.filter(team_id=team_id, host__in=hosts).order_by("pk").first() if team_id else None
    farm = Registry.objects.filter(host__in=hosts, builds_pull_with_farm_account=True).exclude(username="").first()
    account = own or farm
    return {"username": account.username, "password": crypto.decrypt(account.password)} if account else {}


def _trusted_hosts() -> set[str]:
    """host:port an operator named: the farm's registry and the allow-list's."""
    from builds.models import Registry

    hosts = set(Registry.objects.values_list("host", flat=True))
    if settings.GENERATOR_REGISTRY_TOKEN_HOST:
        hosts.add(settings.GENERATOR_REGISTRY_TOKEN_HOST)
    return hosts
