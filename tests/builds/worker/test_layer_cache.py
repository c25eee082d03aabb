"""builds/worker/layer_cache.py: layers' SBOM contributions kept per team, within a bound in bytes, in the
process and then in Redis for the farm's other worker processes."""

from __future__ import annotations

import uuid

from builds.provenance.layers import Contribution
from builds.provenance.sbom import Found, Package
from builds.worker.layer_cache import MAX_SHARED_BYTES, LayerCache, SharedLayerCache, decoded, encoded


def weighing(size: int) -> Contribution:
    return Contribution({}, frozenset(), size)


def test_an_entry_is_only_the_teams_that_put_it():
    cache = LayerCache()
    cache.put(1, "sha256:a", weighing(10))
    assert cache.get(1, "sha256:a") is not None
    assert cache.get(2, "sha256:a") is None and cache.get(None, "sha256:a") is None


def test_the_least_recently_used_go_first_past_the_bound():
    cache = LayerCache(max_bytes=100)
    cache.put(1, "sha256:a", weighing(40))
    cache.put(1, "sha256:b", weighing(40))
    assert cache.get(1, "sha256:a") is not None  # a used again: b is now the oldest
    cache.put(2, "sha256:c", weighing(40))
    assert cache.get(1, "sha256:b") is None and cache.get(1, "sha256:a") is not None and cache.held == 80
    cache.put(2, "sha256:huge", weighing(101))  # larger than the whole cache: not kept, nothing pushed out
    assert cache.get(2, "sha256:huge") is None and cache.held == 80


def a_digest() -> str:
    return "sha256:" + uuid.uuid4().hex * 2


DEBIAN = Contribution(
    {
        "var/lib/dpkg/status": Found((Package("deb", "libc6", "2.36", "amd64", "LGPL", "var/lib/dpkg/status"),)),
        "etc/os-release": Found(os_release=("debian", "12")),
    },
    frozenset({"usr/lib/python3/dist-packages/old-1.0.dist-info"}),
    2048,
)


def test_a_contribution_reads_back_from_its_encoding_as_it_was():
    assert decoded(encoded(DEBIAN)) == DEBIAN


def test_another_worker_process_of_the_farm_gets_the_teams_entry_from_redis_and_no_other_team_does():
    digest = a_digest()
    SharedLayerCache().put(7, digest, DEBIAN)  # one worker process read the layer
    elsewhere = SharedLayerCache()  # another: a prefork child of another daemon's worker
    assert elsewhere.get(7, digest) == DEBIAN
    assert elsewhere.get(8, digest) is None and elsewhere.get(None, digest) is None


def test_a_large_entry_stays_in_its_process():
    digest = a_digest()
    large = Contribution({"var/lib/dpkg/status": Found(tuple(
        Package("deb", f"package-{i}", "1.0", path="var/lib/dpkg/status" + "x" * 200) for i in range(2000)
    ))}, frozenset(), 600_000)  # fmt: skip
    assert len(encoded(large)) > MAX_SHARED_BYTES
    here = SharedLayerCache()
    here.put(7, digest, large)
    assert here.get(7, digest) == large and SharedLayerCache().get(7, digest) is None


def test_without_redis_a_shared_cache_is_its_process_alone(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    digest, cache = a_digest(), SharedLayerCache()
    cache.put(7, digest, DEBIAN)  # no error: kept in the process
    assert cache.get(7, digest) == DEBIAN and SharedLayerCache().get(7, digest) is None
