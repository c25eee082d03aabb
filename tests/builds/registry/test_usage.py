"""A team's storage in the farm's registry (teams/registry_quota.py,
builds/registry/usage.py), read from a real registry (distribution, as the farm
runs it): what a tag names, distinct blobs per team, indexes, tags moved and
gone, and the recount from the registry's own catalog."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from builds.provenance import cosign_layout
from builds.registry.client import DOCKER_LIST, DOCKER_MANIFEST
from builds.registry.usage import Reader, farm_registry_api, record_push, record_tags, recount
from lib.registry_keys import ensure_key
from scripts import localfarm as lf
from teams import registry_quota
from teams.models import Namespace, RegistryBlob, Team

CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> tuple[str, Path]:
    """A registry under token auth, as the farm's: it takes the tokens signed with the key it answers."""
    port = lf.free_port()
    key, cert = services_dir / f"usage-{port}.key", services_dir / f"usage-{port}.crt"
    ensure_key(key, cert)
    auth = lf.TokenAuth(realm="http://127.0.0.1:9/v2/token", rootcertbundle=cert)  # the farm's reads never ask it
    lf.start_registry(supervisor, port, services_dir / f"usage-registry-{port}", f"usage-registry-{port}", token=auth)
    yield f"127.0.0.1:{port}", key
    supervisor.stop(f"usage-registry-{port}")


@pytest.fixture
def farm_registry(settings, registry):
    """`registry` as the farm's own: the one whose use is counted (and whose token server the farm is)."""
    settings.GENERATOR_REGISTRY_TOKEN_HOST, settings.GENERATOR_REGISTRY_TOKEN_KEY = registry
    return registry[0]


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


def push_image(name: str, tag: str, layers: list[bytes]) -> tuple[str, int, int]:
    """An image of `layers` under `tag`: (manifest digest, manifest size, bytes of config and layers)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    with farm_registry_api() as api:  # one client per repository, as its token is
        return _push(api, name, tag, config, layers)


def _push(api, name: str, tag: str, config: bytes, layers: list[bytes]) -> tuple[str, int, int]:
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
    _, m1, rest1 = push_image("use-a/app", "1", [base, app])
    _, m2, rest2 = push_image("use-a/tool", "1", [base, other])
    _, m3, rest3 = push_image("use-b/app", "1", [base])
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
    amd, amd_size, amd_rest = push_image("use-a/multi", "amd64", [blob(400)])
    arm, arm_size, arm_rest = push_image("use-a/multi", "arm64", [blob(600)])
    with farm_registry_api() as api:
        index = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": d, "size": n, "platform": {"os": "linux", "architecture": cpu}}
                for d, n, cpu in [(amd, amd_size, "amd64"), (arm, arm_size, "arm64")]
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
    push_image("use-a/moving", "latest", [blob(5000)])
    record_tags(a.pk, f"{farm_registry}/use-a/moving", ["latest"])
    a.refresh_from_db()
    big = a.registry_used_bytes
    _, size, rest = push_image("use-a/moving", "latest", [blob(100)])
    record_tags(a.pk, f"{farm_registry}/use-a/moving", ["latest"])
    a.refresh_from_db()
    assert a.registry_used_bytes == size + rest < big
    registry_quota.record_tag(a.pk, "use-a/moving", "latest", None)  # the tag is gone (as a recount finds)
    a.refresh_from_db()
    assert a.registry_used_bytes == 0 and not RegistryBlob.objects.filter(team=a).exists()


def test_the_recount_reads_the_teams_tags_from_the_registry_and_heals_a_drifted_figure(two_teams, farm_registry):
    a, b = two_teams
    _, size, rest = push_image("use-a/counted", "v1", [blob(1234)])
    push_image("use-b/elsewhere", "v1", [blob(999)])
    # Team A's rows say something the registry does not hold (a tag deleted without the farm).
    registry_quota.record_tag(a.pk, "use-a/deleted", "old", [("sha256:" + "0" * 64, 10**9)])
    a.refresh_from_db()
    assert a.registry_used_bytes == 10**9
    (result,) = recount([a])
    a.refresh_from_db()
    # Every tag of team A's repositories in this registry (others of this module's tests too), and no more.
    expected = registry_quota.used_bytes(a.pk)
    with farm_registry_api() as api:
        mine = [n for n in api.catalog() if n.startswith("use-a/")]
    blobs = {}
    for name in mine:
        with farm_registry_api() as api:
            reader = Reader(api)
            for tag in api.tags(name):
                blobs.update(reader.tag_blobs(name, tag) or {})
    assert result.error == "" and a.registry_used_bytes == expected == sum(blobs.values())
    assert size + rest <= a.registry_used_bytes < 10**9
    assert not RegistryBlob.objects.filter(team=a, repository="use-a/deleted").exists()
    assert not RegistryBlob.objects.filter(team=a, repository__startswith="use-b/").exists()


def test_a_recount_past_its_bound_keeps_the_figure_rather_than_undercount(two_teams, farm_registry, settings):
    a, _ = two_teams
    for tag in ("1", "2", "3"):
        push_image("use-a/many", tag, [blob(10)])
    registry_quota.record_tag(a.pk, "use-a/many", "1", [("sha256:" + "1" * 64, 777)])
    settings.GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS = 2
    (result,) = recount([a])
    a.refresh_from_db()
    assert "GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS" in result.error
    assert a.registry_used_bytes == 777


def test_the_signed_tags_a_worker_wrote_count_as_sent_and_as_the_registry_would_say(two_teams, farm_registry):
    """The `.sig` and `.att` of a push are counted from what the worker sent, no read
    back: the same rows as reading them from the registry gives."""
    a, _ = two_teams
    name = "use-a/signed"
    image_digest, *_ = push_image(name, "1", [blob(300)])
    signature = cosign_layout.image_of([cosign_layout.signature_layer(b"payload", b"sig")])
    attestation = cosign_layout.image_of([cosign_layout.attestation_layer({"payload": "x"}, "https://slsa.dev/p")])
    images = {
        cosign_layout.signature_tag(image_digest): signature,
        cosign_layout.attestation_tag(image_digest): attestation,
    }
    with farm_registry_api() as api:
        for tag, image in images.items():
            for data in image.blobs:
                api.push_blob(name, data)
            api.put_manifest(name, tag, cosign_layout.OCI_MANIFEST, image.manifest)
    written = {tag: image.stored_sizes() for tag, image in images.items()}

    record_push(a.pk, f"{farm_registry}/{name}", ["1"], image_digest, written)
    as_sent = set(RegistryBlob.objects.filter(team=a).values_list("tag", "digest", "size"))
    record_tags(a.pk, f"{farm_registry}/{name}", list(images))  # the same tags, read back from the registry
    assert set(RegistryBlob.objects.filter(team=a).values_list("tag", "digest", "size")) == as_sent
    assert {tag for tag, _, _ in as_sent} == {"1", *images}
