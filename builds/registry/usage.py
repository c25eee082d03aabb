"""What each team's tags take in the farm's registry, read from the registry.

After each of the farm's writes there (a build's push, a multi-platform index,
the `.sig` and `.att` images beside them) the farm reads what the tags it wrote
now name and records it (`record_tags`; the `.sig` and `.att` of an image, whose
every byte the worker sent, as it sent them); now and then, and on demand
(`manage.py registry_usage`), it recounts whole teams from the registry's
catalog and tags (`recount`), so the figure heals when tags go without the
farm: deleted with another tool, or garbage-collected.

A tag names: its manifest's own bytes; for an image, the config and layers the
manifest lists; for an index, each manifest it lists and theirs. Sizes are the
registry's own (a HEAD per blob), not what a manifest claims. The arithmetic
(distinct blobs per team) is teams/registry_quota.py's. Only the farm's own
registry (GENERATOR_REGISTRY_TOKEN_HOST) is counted: it is the one whose token
server, and so whose quota, the farm is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings

from builds.provenance import cosign_layout
from builds.registry.accounts import farm_signer, is_farm_registry
from builds.registry.client import DOCKER_LIST, OCI_INDEX, RegistryAPI, RegistryError, repository_path
from lib.errors import TooManyBuilds
from lib.references import InvalidReference, parse_reference
from teams import registry_quota
from teams.models import Namespace, Team

logger = logging.getLogger(__name__)

INDEXES = (DOCKER_LIST, OCI_INDEX)
MAX_DEPTH = 2  # an index of images; an index of indexes is read one level further and no more


class TooManyManifests(RegistryError):
    pass


@dataclass
class Reader:
    """Reads tags' blobs from one registry, each manifest and blob size once.
    Its `api` may change between repositories (a token per repository)."""

    api: RegistryAPI | None  # the repository's being read
    max_manifests: int = 0  # 0: no bound
    manifests_read: int = 0
    _manifests: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    _sizes: dict[str, int | None] = field(default_factory=dict)

    def tag_blobs(self, name: str, tag: str) -> dict[str, int] | None:
        """{digest: size} of what `name:tag` names; None if there is no such tag."""
        stored = self.api.stored(name, tag)
        if stored is None:
            return None
        return self._blobs(name, *stored, depth=0)

    def _manifest_blobs(self, name: str, digest: str, depth: int) -> dict[str, int]:
        if (name, digest) not in self._manifests:
            stored = self.api.stored(name, digest)
            self._manifests[name, digest] = self._blobs(name, *stored, depth=depth) if stored else {}
        return self._manifests[name, digest]

    def _blobs(self, name: str, media_type: str, body: bytes, *, depth: int) -> dict[str, int]:
        self.manifests_read += 1
        if self.max_manifests and self.manifests_read > self.max_manifests:
            raise TooManyManifests(f"more than {self.max_manifests} manifests (GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS)")
        blobs = {"sha256:" + hashlib.sha256(body).hexdigest(): len(body)}
        try:
            document = json.loads(body)
        except ValueError:
            return blobs  # not JSON: the registry took it as a manifest of some kind; its bytes are all we count
        if media_type in INDEXES or document.get("manifests"):
            if depth < MAX_DEPTH:
                for entry in document.get("manifests") or []:
                    if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                        blobs.update(self._manifest_blobs(name, entry["digest"], depth + 1))
            return blobs
        descriptors = [document.get("config"), *(document.get("layers") or [])]
        digests = [d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)]
        for digest in digests:
            if (size := self._size(name, digest)) is not None:
                blobs[digest] = size
        return blobs

    def _size(self, name: str, digest: str) -> int | None:
        if digest not in self._sizes:
            self._sizes[digest] = self.api.blob_size(name, digest)
        return self._sizes[digest]


def farm_registry_api() -> RegistryAPI:
    """The farm's own reads of its registry: a token it signs for each."""
    return RegistryAPI(settings.GENERATOR_REGISTRY_TOKEN_HOST, token_source=farm_signer().farm_token)


def record_tags(team_id: int | None, image_repository: str, tags: Iterable[str]) -> None:
    """Records what `tags` of `image_repository` name now, for `team_id`. Never
    raises: the write it follows has happened, and the next recount heals a miss."""
    if team_id is None or not in_farm_registry(image_repository):
        return
    reference = parse_reference(image_repository)
    name = repository_path(reference.repository, reference.registry)
    try:
        with farm_registry_api() as api:
            reader = Reader(api)
            for tag in dict.fromkeys(tags):
                registry_quota.record_tag(team_id, name, tag, _items(reader.tag_blobs(name, tag)))
    except Exception:
        logger.warning("could not count the registry use of %s for team %s", image_repository, team_id, exc_info=True)


def record_push(
    team_id: int | None,
    image_repository: str,
    tags: Iterable[str],
    digest: str,
    written: dict[str, dict[str, int]] | None = None,
) -> None:
    """A push's tags and, beside its digest, the signature and attestation tags the farm writes.
    Those the farm wrote itself (`written`: {tag: {digest: size}}, the blobs as sent, which the
    registry took by their digests) are recorded as they are; the others are read back."""
    written = written or {}
    signed = [cosign_layout.signature_tag(digest), cosign_layout.attestation_tag(digest)]
    record_tags(team_id, image_repository, [tag for tag in [*tags, *signed] if tag not in written])
    if team_id is None or not written or not in_farm_registry(image_repository):
        return
    try:  # never raises, as record_tags: the next recount heals a miss
        reference = parse_reference(image_repository)
        name = repository_path(reference.repository, reference.registry)
        for tag, blobs in written.items():
            registry_quota.record_tag(team_id, name, tag, blobs.items())
    except Exception:
        logger.warning("could not count the registry use of %s for team %s", image_repository, team_id, exc_info=True)


@dataclass(frozen=True)
class Recount:
    team: str
    used_bytes: int
    manifests: int
    error: str = ""  # set: the team's figure was left as it was


def recount(teams: Iterable[Team] | None = None) -> list[Recount]:
    """Recounts the given teams (every team by default) from the registry itself:
    its catalog, each of their repositories' tags, what each names. A team with
    more than GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS manifests keeps its figure
    (a partial recount would undercount it, and loosen its quota)."""
    host = settings.GENERATOR_REGISTRY_TOKEN_HOST
    if not host:
        return []
    wanted = {team.pk: team for team in (teams if teams is not None else Team.objects.all())}
    with farm_registry_api() as api:
        catalog = api.catalog()
    owned: dict[int, list[str]] = defaultdict(list)
    for name in catalog:
        namespace = Namespace.objects.owning(f"{host}/{name}")
        if namespace is not None and namespace.team_id in wanted:
            owned[namespace.team_id].append(name)
    return [_recount_team(team, owned.get(team_id, [])) for team_id, team in wanted.items()]


def _recount_team(team: Team, repositories: list[str]) -> Recount:
    limit = settings.GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS
    reader = Reader(None, max_manifests=limit)
    tags: dict[tuple[str, str], list[tuple[str, int]]] = {}
    try:
        for name in repositories:
            # A client per repository: its token is for one repository (RegistryAPI asks once).
            with farm_registry_api() as reader.api:
                for tag in reader.api.tags(name, limit=limit + 1):
                    if (blobs := reader.tag_blobs(name, tag)) is not None:
                        tags[name, tag] = _items(blobs)
    except RegistryError as exc:
        logger.warning("could not recount the registry use of team %s: %s", team.slug, exc)
        return Recount(team.slug, team.registry_used_bytes, reader.manifests_read, str(exc))
    used = registry_quota.replace_team(team.pk, tags)
    return Recount(team.slug, used, reader.manifests_read)


def _items(blobs: dict[str, int] | None) -> list[tuple[str, int]] | None:
    return None if blobs is None else list(blobs.items())


def in_farm_registry(image: str) -> bool:
    try:
        return is_farm_registry(parse_reference(image).registry)
    except InvalidReference:
        return False


def check_submit(team: Team | None, image: str) -> None:
    """Raises TooManyBuilds (429) if `team` is at or over its registry quota and
    `image` would be pushed into the farm's registry: its push would be refused."""
    if team is None or not in_farm_registry(image) or not registry_quota.over_quota(team):
        return
    raise TooManyBuilds(
        f"{registry_quota.describe(team)}: its builds cannot push to {settings.GENERATOR_REGISTRY_TOKEN_HOST} until"
        " an operator raises the quota or removes some of its images",
        settings.GENERATOR_REGISTRY_USAGE_INTERVAL,
    )


def push_refusal(host: str, team_id: int | None) -> str:
    """Why the farm's registry refused a push of `team_id`'s, if its quota is why; else ''."""
    if team_id is None or not is_farm_registry(host):
        return ""
    team = Team.objects.filter(pk=team_id).first()
    if team is None or not registry_quota.over_quota(team):
        return ""
    return f"the registry refused the push: {registry_quota.describe(team)}, and a team over its quota may not push"
