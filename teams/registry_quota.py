"""A team's storage in the farm's registry: what its tags name, against its quota.

The farm records, per tag of the registry (its path and tag), every blob the
tag names with its size (RegistryBlob): the manifest, or the index and each
manifest it lists, and their configs and layers. builds/registry/usage.py reads
them from the registry after each of the farm's writes and recounts whole
teams from the registry now and then. A team's use is the sum of its distinct
blobs: a layer that two of its tags (or two of its repositories) name counts
once. A blob that two teams' tags name counts in full for each: the registry
stores it once, but a team's figure then depends on its own tags alone, so no
other team's pushes or deletions move it, and neither team learns from its
figure what the other holds.

Enforcement is the token server's (teams/registry_access.py, and the farm's
own push tokens in builds/registry/accounts.py): a team at or over its quota
gets no `push`, so the registry itself refuses its writes, whoever asks.
This module knows no registry: digests and sizes in, figures out.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from teams.models import RegistryBlob, Team

Blob = tuple[str, int]  # (digest, size)


def record_tag(team_id: int, repository: str, tag: str, blobs: Iterable[Blob] | None) -> None:
    """`repository:tag` now names `blobs` (None: the tag is gone), for `team_id`;
    the team's figure follows (and that of a team that held the tag before)."""
    with transaction.atomic():
        before = set(RegistryBlob.objects.filter(repository=repository, tag=tag).values_list("team_id", flat=True))
        RegistryBlob.objects.filter(repository=repository, tag=tag).delete()
        RegistryBlob.objects.bulk_create(
            RegistryBlob(team_id=team_id, repository=repository, tag=tag, digest=digest, size=size)
            for digest, size in dict(blobs or ()).items()
        )
        for counted in before | {team_id}:
            refresh(counted)


def replace_team(team_id: int, tags: dict[tuple[str, str], Iterable[Blob]]) -> int:
    """The whole of a team's tags as a recount read them ({(repository, tag):
    blobs}): its rows replaced, its figure refreshed. Answers its use."""
    with transaction.atomic():
        RegistryBlob.objects.filter(team_id=team_id).delete()
        # Rows another team kept for these repositories (a namespace changed hands): they are this team's now.
        others = RegistryBlob.objects.filter(repository__in={repository for repository, _ in tags})
        moved_from = set(others.values_list("team_id", flat=True))
        others.delete()
        for other in moved_from:
            refresh(other)
        RegistryBlob.objects.bulk_create(
            RegistryBlob(team_id=team_id, repository=repository, tag=tag, digest=digest, size=size)
            for (repository, tag), blobs in tags.items()
            for digest, size in dict(blobs).items()
        )
        return refresh(team_id)


def used_bytes(team_id: int) -> int:
    """The sum of the team's distinct blobs, from its rows."""
    # A digest has one size: distinct (digest, size) pairs are the distinct blobs.
    pairs = RegistryBlob.objects.filter(team_id=team_id).order_by().values_list("digest", "size").distinct()
    return sum(size for _, size in pairs)


def refresh(team_id: int) -> int:
    used = used_bytes(team_id)
    Team.objects.filter(pk=team_id).update(registry_used_bytes=used, registry_counted_at=timezone.now())
    return used


def over_quota(team: Team) -> bool:
    """At or over: a team exactly at its quota may not add a byte."""
    quota = team.registry_quota
    return quota is not None and team.registry_used_bytes >= quota


def over_quota_ids(team_ids: Iterable[int]) -> set[int]:
    return {team.pk for team in Team.objects.filter(pk__in=set(team_ids)) if over_quota(team)}


def describe(team: Team) -> str:
    """`team a uses 12.3 MB of its 10.0 MB registry quota`, as refusals say it."""
    quota = team.registry_quota
    limit = f"its {_size(quota)} registry quota" if quota is not None else "no registry quota"
    return f"team {team.slug} uses {_size(team.registry_used_bytes)} of {limit} (registry_quota_bytes)"


def describe_use(team: Team) -> str:
    """`12.3 MB of 10.0 GB`, as pages show it."""
    quota = team.registry_quota
    used = _size(team.registry_used_bytes)
    text = f"{used} of {_size(quota)}" if quota is not None else f"{used} (no quota)"
    return f"{text}, over its quota" if over_quota(team) else text


def _size(size: int) -> str:
    return filesizeformat(size).replace("\xa0", " ")  # plain spaces: messages go to APIs and logs too
