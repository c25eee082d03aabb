"""Each daemon's disk: what it holds (`docker system df`), and pruning the images
the farm built and BuildKit's build cache down to the daemon's disk policy.

1. Images first, since a cache record whose layers an image still holds frees
   nothing: the farm's images (those with FARM_LABEL, set on every build) are
   removed least recently tagged first until their size is under the daemon's
   images limit. Never one a running build uses: the caller names those
   (`Protected`: the tags and image ids of the daemon's active builds), and
   nothing tagged since the oldest of them started (a build's own image is
   tagged before its job row knows its id). The daemon itself refuses (409) to
   remove an image a container or a child image uses: such an image is skipped.
2. Then the build cache, through `POST /build/prune?keep-storage=`: BuildKit
   removes its least recently used records down to that size and never one a
   running build holds.
3. A daemon marked full (a build met "no space left on device") takes builds
   again once a prune leaves it under both limits.

This module knows no jobs: which images are in use is the caller's to say.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import docker
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from docker.errors import APIError, NotFound

from pool import disks
from pool.disks import DataDisk
from pool.models import DockerDaemon
from pool.tls import client_settings

logger = logging.getLogger(__name__)

# Set on every image the farm builds (builds/worker/builders.py): what housekeeping may remove.
FARM_LABEL = "org.generator.built-by"
FARM_LABEL_VALUE = "generator"

# How the daemon (or BuildKit in it) says its disk is full: Go's wrapped errors
# end with the system's own words, "...: write /var/lib/docker/...: no space left
# on device". Only at the end: a message that quotes a build's own text (a path
# COPY did not find, a RUN command) says something after it, so a Dockerfile
# cannot take a daemon out of the pool by spelling the words.
_DISK_FULL = re.compile(r":\s*(no space left on device|disk quota exceeded)\s*$", re.IGNORECASE)


def is_disk_full(message: str) -> bool:
    return bool(_DISK_FULL.search(message.strip()))


@dataclass(frozen=True)
class Protected:
    """What a running build on the daemon may use: never removed."""

    references: frozenset[str] = frozenset()  # repository:tag
    image_ids: frozenset[str] = frozenset()  # sha256:...
    since: datetime | None = None  # nothing tagged at or after this


@dataclass(frozen=True)
class DiskUse:
    images: int  # every image's layers on the daemon (df LayersSize)
    farm_images: int  # the farm's images: their own layers, and layers they share counted once
    build_cache: int  # BuildKit's records not shared with an image
    volumes: int


@dataclass
class PruneResult:
    use: DiskUse | None = None
    removed: list[str] = field(default_factory=list)  # image ids
    skipped: list[str] = field(default_factory=list)  # "<tag or id>: why"
    cache_reclaimed: int = 0
    error: str = ""
    data_disk: DataDisk | None = None  # where this host sees the daemon's data root (pool/disks.py)

    def summary(self) -> str:
        use = self.use
        figures = f"farm images {use.farm_images >> 20} MiB, build cache {use.build_cache >> 20} MiB" if use else ""
        removed = f"{len(self.removed)} image(s) removed, {self.cache_reclaimed >> 20} MiB of build cache reclaimed"
        return f"{removed}; {figures}" + (f"; kept {len(self.skipped)} in use" if self.skipped else "")


def disk_use(df: dict) -> DiskUse:
    farm = [image for image in df.get("Images") or [] if _is_farm(image)]
    shared = max((max(image.get("SharedSize") or 0, 0) for image in farm), default=0)
    return DiskUse(
        images=int(df.get("LayersSize") or 0),
        farm_images=sum(_own_size(image) for image in farm) + shared,
        build_cache=sum(int(r.get("Size") or 0) for r in df.get("BuildCache") or [] if not r.get("Shared")),
        volumes=sum(max((v.get("UsageData") or {}).get("Size") or 0, 0) for v in df.get("Volumes") or []),
    )


def prune(daemon: DockerDaemon, protected: Protected, *, api_version: str, timeout: float) -> PruneResult:
    """Prunes one daemon to its policy (see the module's doc) and measures it after."""
    result = PruneResult()
    # First, so that the limits in force are held within the disk's size as it is now.
    result.data_disk = disks.measure(daemon, api_version=api_version, timeout=timeout)
    if result.data_disk is not None:
        daemon.data_disk_bytes = result.data_disk.size
    try:
        api = docker.APIClient(**client_settings(daemon), version=api_version, timeout=timeout)
        try:
            _prune_images(api, api.df(), daemon.images_limit_bytes, protected, result)
            answer = api.prune_builds(keep_storage=daemon.build_cache_limit_bytes, all=True)
            result.cache_reclaimed = int(answer.get("SpaceReclaimed") or 0)
            result.use = disk_use(api.df())
        finally:
            api.close()
    except Exception as exc:  # an unreachable daemon is the health check's to judge
        result.error = f"{exc.__class__.__name__}: {exc}"[:500]
    return result


def _prune_images(api, df: dict, limit: int, protected: Protected, result: PruneResult) -> None:
    farm = [image for image in df.get("Images") or [] if _is_farm(image)]
    over = disk_use(df).farm_images - limit
    if over <= 0:
        return
    candidates = []
    for image in farm:
        tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        if image["Id"] in protected.image_ids or protected.references.intersection(tags):
            result.skipped.append(f"{tags[0] if tags else image['Id']}: a running build's")
            continue
        last_use = _last_use(api, image)
        if last_use is None:  # gone meanwhile
            continue
        if protected.since is not None and last_use >= protected.since:
            result.skipped.append(f"{tags[0] if tags else image['Id']}: tagged since a running build started")
            continue
        candidates.append((last_use, image["Id"], tags, _own_size(image)))
    for _, image_id, tags, size in sorted(candidates):
        if over <= 0:
            break
        try:
            # Untagging each name removes the image with its last; an untagged one goes by id.
            for name in tags or [image_id]:
                api.remove_image(name)
        except NotFound:
            pass
        except APIError as exc:  # 409: a container or a child image uses it
            result.skipped.append(f"{tags[0] if tags else image_id}: {exc.explanation or exc}"[:300])
            continue
        result.removed.append(image_id)
        over -= size


def _is_farm(image: dict) -> bool:
    return (image.get("Labels") or {}).get(FARM_LABEL) == FARM_LABEL_VALUE


def _own_size(image: dict) -> int:
    return max(int(image.get("Size") or 0) - max(int(image.get("SharedSize") or 0), 0), 0)


def _last_use(api, image: dict) -> datetime | None:
    """When the image was last tagged (a rebuild of the same image tags it again),
    else made: the daemon keeps no later use of an image."""
    try:
        details = api.inspect_image(image["Id"])
    except NotFound:
        return None
    tagged = parse_datetime((details.get("Metadata") or {}).get("LastTagTime") or "")
    created = datetime.fromtimestamp(int(image.get("Created") or 0), UTC)
    return max(created, tagged) if tagged else created


def record(daemon: DockerDaemon, result: PruneResult) -> None:
    """Stores the figures; a full daemon under both its limits takes builds again."""
    if result.error:
        DockerDaemon.objects.filter(pk=daemon.pk).update(disk_error=f"prune failed: {result.error}")
        return
    use = result.use
    now = timezone.now()
    fields = {
        "disk_images_bytes": use.images,
        "disk_farm_images_bytes": use.farm_images,
        "disk_build_cache_bytes": use.build_cache,
        "disk_volumes_bytes": use.volumes,
        "disk_measured_at": now,
        "last_pruned_at": now,
    }
    if result.data_disk is not None:
        fields["data_disk_bytes"] = result.data_disk.size
    under = use.farm_images <= daemon.images_limit_bytes and use.build_cache <= daemon.build_cache_limit_bytes
    if under:
        fields.update(disk_full=False, disk_error="")
    elif daemon.disk_full:
        fields["disk_error"] = (
            f"{daemon.disk_error.split(' (still over')[0]} (still over its limits after the prune at {now:%H:%M:%S})"
        )[:1000]
    DockerDaemon.objects.filter(pk=daemon.pk).update(**fields)
    logger.info(
        "pruned %s: %d image(s) removed, %d bytes of build cache reclaimed, %s",
        daemon.name,
        len(result.removed),
        result.cache_reclaimed,
        "under its limits" if under else "still over its limits",
    )


def prune_pool(protected_on, *, daemons=None, api_version: str, timeout: float) -> dict[str, PruneResult]:
    """The daemons (by default every enabled one, and any marked full) at once;
    `protected_on(daemon)` names what its running builds use, read just before
    the prunes start."""
    if daemons is None:
        daemons = DockerDaemon.objects.filter(Q(enabled=True) | Q(disk_full=True))
    daemons = list(daemons)
    if not daemons:
        return {}
    protection = {daemon.pk: protected_on(daemon) for daemon in daemons}

    def one(daemon: DockerDaemon) -> PruneResult:
        return prune(daemon, protection[daemon.pk], api_version=api_version, timeout=timeout)

    with ThreadPoolExecutor(max_workers=min(len(daemons), 16)) as pool:
        results = list(pool.map(one, daemons))
    for daemon, result in zip(daemons, results, strict=True):
        record(daemon, result)
    return {d.name: r for d, r in zip(daemons, results, strict=True)}


# What a daemon's running builds use: the pool knows no builds, so builds/ says
# (builds/apps.py, `protect_with`), and no prune runs before it has.
_protected_on: Callable[[DockerDaemon], Protected] | None = None


def protect_with(protected_on: Callable[[DockerDaemon], Protected]) -> None:
    global _protected_on
    _protected_on = protected_on


def prune_daemons(daemons=None) -> dict[str, PruneResult]:
    """The given daemons (a queryset), or every enabled or full one (beat's pass),
    keeping what their running builds use."""
    if _protected_on is None:
        raise RuntimeError("no app named what running builds use (pool.disk_prune.protect_with): nothing is pruned")
    return prune_pool(
        _protected_on,
        daemons=daemons,
        api_version=settings.GENERATOR_DOCKER_API_VERSION,
        timeout=settings.GENERATOR_DOCKER_TIMEOUT,
    )


def mark_disk_full(daemon_id: int, reason: str) -> None:
    """A build ran out of disk here: no more builds until a prune brings it under its limits."""
    DockerDaemon.objects.filter(pk=daemon_id).update(disk_full=True, disk_error=reason[:1000])


# --- for /metrics ---------------------------------------------------------------

_DISK_GAUGES = (
    ("generator_daemon_disk_images_bytes", "disk_images_bytes", "Bytes of every image's layers on the daemon."),
    ("generator_daemon_disk_farm_images_bytes", "disk_farm_images_bytes", "Bytes of the images the farm built."),
    ("generator_daemon_disk_build_cache_bytes", "disk_build_cache_bytes", "Bytes of BuildKit's build cache."),
    ("generator_daemon_disk_volumes_bytes", "disk_volumes_bytes", "Bytes of the daemon's volumes."),
    ("generator_daemon_disk_images_limit_bytes", "images_limit_bytes", "The daemon's limit for the farm's images."),
    ("generator_daemon_disk_build_cache_limit_bytes", "build_cache_limit_bytes", "The daemon's build cache limit."),
    ("generator_daemon_disk_full", "disk_full", "1 if a build ran out of disk here and no prune has cleared it."),
    ("generator_daemon_last_pruned_timestamp_seconds", "last_pruned_at", "When the daemon was last pruned."),
)


def disk_gauges(daemons=None) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """Each daemon's disk figures as gauge families: (name, help, [(daemon name,
    value)]); a daemon not measured yet has no sample."""
    daemons = list(DockerDaemon.objects.order_by("name")) if daemons is None else daemons
    families = []
    for name, attribute, help_text in _DISK_GAUGES:
        samples = []
        for daemon in daemons:
            value = getattr(daemon, attribute)
            if isinstance(value, datetime):
                value = value.timestamp()
            if value is not None:
                samples.append((daemon.name, float(value)))
        families.append((name, help_text, samples))
    return families
