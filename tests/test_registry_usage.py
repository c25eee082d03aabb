"""A team's storage in the farm's registry (teams/registry_quota.py,
builds/registry_usage.py), read from a real registry (distribution, as the farm
runs it): what a tag names, distinct blobs per team, indexes, tags moved and
gone, and the recount from the registry's own catalog."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from builds.registry_api import DOCKER_LIST, DOCKER_MANIFEST, RegistryAPI
from builds.registry_usage import Reader, record_tags, recount
from generator_site.registry_keys import ensure_key
from scripts import localfarm as lf
from teams import registry_quota
from teams.models import Namespace, RegistryBlob, Team

CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> str:
    port = lf.free_port()
    lf.start_registry(supervisor, port, services_dir / f"usage-registry-{port}", f"usage-registry-{port}")
    yield f"127.0.0.1:{port}"
    supervisor.stop(f"usage-registry-{port}")


@pytest.fixture
def farm_registry(settings, tmp_path, registry):
    """`registry` as the farm's own: the one whose use is counted (and whose token server the farm is)."""
    settings.GENERATOR_REGISTRY_TOKEN_HOST = registry
    settings.GENERATOR_REGISTRY_TOKEN_KEY = tmp_path / "token.key"
    settings.GENERATOR_REGISTRY_TOKEN_CERT = tmp_path / "token.crt"
    ensure_key(settings.GENERATOR_REGISTRY_TOKEN_KEY, settings.GENERATOR_REGISTRY_TOKEN_CERT)
    return registry


@pytest.fixture
def two_teams(db, farm_registry):
    a = Team.objects.create(slug="use-a", name="Use A")
    b = Team.objects.create(slug="use-b", name="Use B")
    Namespace.objects.create(team=a, prefix=f"{farm_registry}/use-a/")
    Namespace.objects.create(team=b, prefix=f"{farm_registry}/use-b/")
    return a, b


def blob(size: int) -> bytes:
    return os.urandom(size)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(api: RegistryAPI, name: str, tag: str, layers: list[bytes]) -> tuple[str, int, int]:
    """An image of `layers` under `tag`: (manifest digest, manifest size, bytes of config and layers)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    for data in (config, *layers):
        api.push_blob(name, data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": digest(d), "size": len(d)} for d in layers],
    }
    body = json.dumps(manifest).encode()
    written = api.put_manifest(name, tag, DOCKER_MANIFEST, body)
    return written.digest, len(body), len(config) + sum(len(d) for d in layers)


def test_a_layer_two_tags_name_counts_once_and_a_layer_of_two_teams_counts_for_each(two_teams, farm_registry):
    a, b = two_teams
    base, app, other = blob(3000), blob(500), blob(700)
    with RegistryAPI(farm_registry) as api:
        _, m1, rest1 = push_image(api, "use-a/app", "1", [base, app])
        _, m2, rest2 = push_image(api, "use-a/tool", "1", [base, other])
        _, m3, rest3 = push_image(api, "use-b/app", "1", [base])
    record_tags(a.pk, f"{farm_registry}/use-a/app", ["1", "latest"])  # `latest` is no tag yet: nothing
    record_tags(a.pk, f"{farm_registry}/use-a/tool", ["1"])
    record_tags(b.pk, f"{farm_registry}/use-b/app", ["1"])
    a.refresh_from_db()
    b.refresh_from_db()
    # `base` is in both of team A's images: counted once for A (so one less than the two images' sum).
    assert a.registry_used_bytes == m1 + rest1 + m2 + rest2 - len(base)
    # And in full for B, whose only image it is in.
    assert b.registry_used_bytes == m3 + rest3
    assert a.registry_counted_at is not None


def test_an_index_counts_itself_each_manifest_it_lists_and_their_blobs(two_teams, farm_registry):
    a, _ = two_teams
    with RegistryAPI(farm_registry) as api:
        amd, amd_size, amd_rest = push_image(api, "use-a/multi", "amd64", [blob(400)])
        arm, arm_size, arm_rest = push_image(api, "use-a/multi", "arm64", [blob(600)])
        index = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": d, "size": n, "platform": {"os": "linux", "architecture": a}}
                for d, n, a in [(amd, amd_size, "amd64"), (arm, arm_size, "arm64")]
            ],
        }  # fmt: skip
        body = json.dumps(index).encode()
        api.put_manifest("use-a/multi", "1.0", DOCKER_LIST, body)
        blobs = Reader(api).tag_blobs("use-a/multi", "1.0")
    assert sum(blobs.values()) == len(body) + amd_size + amd_rest + arm_size + arm_rest
    assert {amd, arm, digest(body)} <= set(blobs)
    record_tags(a.pk, f"{farm_registry}/use-a/multi", ["1.0", "amd64", "arm64"])
    a.refresh_from_db()
    assert a.registry_used_bytes == sum(blobs.values())  # the platforms' own tags name nothing more


def test_a_tag_pushed_again_or_gone_takes_its_old_blobs_out_of_the_count(two_teams, farm_registry):
    a, _ = two_teams
    with RegistryAPI(farm_registry) as api:
        push_image(api, "use-a/moving", "latest", [blob(5000)])
        record_tags(a.pk, f"{farm_registry}/use-a/moving", ["latest"])
        a.refresh_from_db()
        big = a.registry_used_bytes
        _, size, rest = push_image(api, "use-a/moving", "latest", [blob(100)])
        record_tags(a.pk, f"{farm_registry}/use-a/moving", ["latest"])
        a.refresh_from_db()
        assert a.registry_used_bytes == size + rest < big
    registry_quota.record_tag(a.pk, "use-a/moving", "latest", None)  # the tag is gone (as a recount finds)
    a.refresh_from_db()
    assert a.registry_used_bytes == 0 and not RegistryBlob.objects.filter(team=a).exists()


def test_the_recount_reads_the_teams_tags_from_the_registry_and_heals_a_drifted_figure(two_teams, farm_registry):
    a, b = two_teams
    with RegistryAPI(farm_registry) as api:
        _, size, rest = push_image(api, "use-a/counted", "v1", [blob(1234)])
        push_image(api, "use-b/elsewhere", "v1", [blob(999)])
    # Team A's rows say something the registry does not hold (a tag deleted without the farm).
    registry_quota.record_tag(a.pk, "use-a/deleted", "old", [("sha256:" + "0" * 64, 10**9)])
    a.refresh_from_db()
    assert a.registry_used_bytes == 10**9
    (result,) = recount([a])
    a.refresh_from_db()
    # Every tag of team A's repositories in this registry (others of this module's tests too), and no more.
    with RegistryAPI(farm_registry) as api:
        expected = registry_quota.used_bytes(a.pk)
        mine = [n for n in api.catalog() if n.startswith("use-a/")]
        reader = Reader(api)
        blobs = {d: s for n in mine for t in api.tags(n) for d, s in (reader.tag_blobs(n, t) or {}).items()}
    assert result.error == "" and a.registry_used_bytes == expected == sum(blobs.values())
    assert size + rest <= a.registry_used_bytes < 10**9
    assert not RegistryBlob.objects.filter(team=a, repository="use-a/deleted").exists()
    assert not RegistryBlob.objects.filter(team=a, repository__startswith="use-b/").exists()


def test_a_recount_past_its_bound_keeps_the_figure_rather_than_undercount(two_teams, farm_registry, settings):
    a, _ = two_teams
    with RegistryAPI(farm_registry) as api:
        for tag in ("1", "2", "3"):
            push_image(api, "use-a/many", tag, [blob(10)])
    registry_quota.record_tag(a.pk, "use-a/many", "1", [("sha256:" + "1" * 64, 777)])
    settings.GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS = 2
    (result,) = recount([a])
    a.refresh_from_db()
    assert "GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS" in result.error
    assert a.registry_used_bytes == 777
