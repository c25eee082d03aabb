"""What each image layer contributes to an SBOM (builds/provenance/layers.py),
kept per team and layer digest, so a base image's layers (busybox, debian) are
read once per team rather than once per build (builds/worker/layer_reads.py).

Keyed by team on purpose: teams are strangers, and a cache shared between
them would tell team B, by how fast its SBOM came, that team A had built on a
layer; team B never hits team A's entries, so it reads the layer itself.
Only contributions of layers whose bytes matched their digest are kept
(layer_reads verifies before it puts), so nothing can poison an entry.

In the worker's process first, bounded by bytes (least recently used out
first): an entry is taken in the read that follows a push, where a round trip
would cost what a small layer's read does. Then in Redis (`SharedLayerCache`,
the worker processes' one), for a layer the process has not read: each daemon
has a worker of its own with prefork children, so a team's base layers were
read again by each (busybox's 1 MB layer ~50 ms: the rebuild on a daemon
warmed after a push elsewhere paid it, bench/warm_rebuild.py). Redis is the
farm's own (Celery's broker: whoever writes there already runs the workers'
tasks), only workers write there, after the digest check, and an entry
Redis lost or cannot give is one more read of a layer, never a wrong SBOM.
Entries there are small (MAX_SHARED_BYTES encoded) and expire
(SHARED_SECONDS); a larger one stays in the process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import astuple

import redis

from builds.provenance.layers import Contribution
from builds.provenance.sbom import Found, Package
from lib.redis_clients import farm_redis

logger = logging.getLogger(__name__)

MAX_BYTES = 64 << 20
MAX_SHARED_BYTES = 256 << 10
SHARED_SECONDS = 30 * 24 * 3600
SHARED_PREFIX = "generator:sbom-layer:"


class LayerCache:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes, self.held = max_bytes, 0
        self._entries: OrderedDict[tuple[int | None, str], Contribution] = OrderedDict()
        self._lock = threading.Lock()  # the attestation reads of a threads pool's builds

    def get(self, team_id: int | None, digest: str) -> Contribution | None:
        with self._lock:
            found = self._entries.get((team_id, digest))
            if found is not None:
                self._entries.move_to_end((team_id, digest))
            return found

    def put(self, team_id: int | None, digest: str, contribution: Contribution) -> None:
        """Keeps a verified layer's contribution (one larger than the whole cache is not kept)."""
        if contribution.size > self.max_bytes:
            return
        with self._lock:
            if (old := self._entries.pop((team_id, digest), None)) is not None:
                self.held -= old.size
            self._entries[(team_id, digest)] = contribution
            self.held += contribution.size
            while self.held > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.held -= dropped.size


class SharedLayerCache(LayerCache):
    """The process's entries, then Redis's for the same team and digest."""

    def get(self, team_id: int | None, digest: str) -> Contribution | None:
        if (found := super().get(team_id, digest)) is not None:
            return found
        try:
            stored = farm_redis().get(_key(team_id, digest))
        except redis.RedisError:
            logger.info("could not ask Redis for a layer's SBOM part; reading the layer", exc_info=True)
            return None
        if stored is None:
            return None
        found = decoded(stored)
        super().put(team_id, digest, found)
        return found

    def put(self, team_id: int | None, digest: str, contribution: Contribution) -> None:
        super().put(team_id, digest, contribution)
        stored = encoded(contribution)
        if len(stored) > MAX_SHARED_BYTES:
            return
        try:
            farm_redis().set(_key(team_id, digest), stored, ex=SHARED_SECONDS)
        except redis.RedisError:
            logger.info("could not keep a layer's SBOM part in Redis", exc_info=True)


def _key(team_id: int | None, digest: str) -> str:
    return f"{SHARED_PREFIX}{'none' if team_id is None else team_id}:{digest}"


def encoded(contribution: Contribution) -> bytes:
    files = {
        path: {"packages": [list(astuple(p)) for p in found.packages], "os_release": found.os_release}
        for path, found in contribution.files.items()
    }
    document = {"files": files, "removed": sorted(contribution.removed), "size": contribution.size}
    return json.dumps(document, separators=(",", ":")).encode()


def decoded(stored: bytes) -> Contribution:
    document = json.loads(stored)
    files = {
        path: Found(
            tuple(Package(*fields) for fields in found["packages"]),
            tuple(found["os_release"]) if found["os_release"] else None,
        )
        for path, found in document["files"].items()
    }
    return Contribution(files, frozenset(document["removed"]), document["size"])


layers = SharedLayerCache()  # the worker process's one
