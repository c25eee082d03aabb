"""builds/worker/layer_cache.py: layers' SBOM contributions kept per team, within a bound in bytes."""

from __future__ import annotations

from builds.provenance.layers import Contribution
from builds.worker.layer_cache import LayerCache


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
