"""A base image's ONBUILD triggers as the farm's registry holds them (builds/worker/base_triggers.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from builds.registry.client import OCI_INDEX
from builds.worker.base_triggers import MAX_INDEX_ENTRIES, Unreadable, _stored_triggers

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Registry:
    """What a registry answers for one repository: manifests by reference, blobs by digest."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}

    def image(self, triggers: list[str]) -> str:
        config = json.dumps({"config": {"OnBuild": triggers}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.blobs[config_digest] = config
        body = json.dumps({"schemaVersion": 2, "config": {"digest": config_digest}, "layers": []}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = (MANIFEST, body)
        return digest

    def index(self, tag: str, digests: list[str]) -> None:
        body = json.dumps({"schemaVersion": 2, "manifests": [{"digest": d} for d in digests]}).encode()
        self.manifests[tag] = (OCI_INDEX, body)

    def stored(self, name: str, reference: str):
        return self.manifests.get(reference)

    def blob(self, name: str, digest: str, max_bytes: int) -> bytes:
        return self.blobs[digest]


def test_every_platform_of_an_index_is_read():
    registry = Registry()
    registry.index("1", [registry.image([]), registry.image(["COPY --from=r.io/team-a/secret / /loot"])])
    assert _stored_triggers(registry, "team-b/base", "1") == ["COPY --from=r.io/team-a/secret / /loot"]


def test_an_index_too_long_to_read_is_refused_not_skipped():
    """The build may take any entry: one left unread could hold the trigger."""
    registry = Registry()
    plain = registry.image([])
    registry.index("1", [plain] * MAX_INDEX_ENTRIES)
    assert _stored_triggers(registry, "team-b/base", "1") == []
    registry.index("2", [plain] * (MAX_INDEX_ENTRIES + 1))
    with pytest.raises(Unreadable, match="more than 64 manifests"):
        _stored_triggers(registry, "team-b/base", "2")
