"""The SBOM read from a pushed image's layers in a real registry
(builds/worker/layer_reads.py): each layer's contribution kept per team (a
second build of a team reads only its new layers, another team reads them all),
a blob that does not match its digest refused and never kept, an unknown
layer type or a read past its bounds marked incomplete, a platform's manifest
chosen from an index."""

from __future__ import annotations

import gzip
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.test import override_settings

from builds.provenance.cosign_layout import Layer, image_of
from builds.registry.client import DOCKER_MANIFEST, OCI_MANIFEST, IndexEntry, RegistryAPI, RegistryError
from builds.worker import layer_cache, layer_reads
from tests.builds.provenance.tars import tar_bytes
from tests.registries import plain_registry

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
BASE = {
    "etc/os-release": "ID=debian\nVERSION_ID=12\n",
    "var/lib/dpkg/status": "Package: libc6\nVersion: 2.36\n\nPackage: curl\nVersion: 7.88\n",
}
APP = {
    "var/lib/dpkg/.wh.status": "",
    "usr/lib/python3/dist-packages/flask-3.0.dist-info/METADATA": "Name: flask\nVersion: 3.0\n",
}

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> tuple[str, Path]:
    with plain_registry(supervisor, services_dir, "layer-read-registry") as found:
        yield found


def gzip_layer(files: dict, padding: int = 0) -> Layer:
    return Layer(GZIP, gzip.compress(tar_bytes(files, padding), mtime=0))


def push(host: str, name: str, layers: list[Layer], tag: str = "latest") -> str:
    image = image_of(layers)
    with RegistryAPI(host) as api:
        for blob in image.blobs:
            api.push_blob(name, blob)
        return api.put_manifest(name, tag, OCI_MANIFEST, image.manifest).digest


@contextmanager
def blob_reads(monkeypatch):
    """The layer digests read from the registry, in order."""
    read: list[str] = []
    original = RegistryAPI.blob_stream

    def counted(api, name, digest):
        read.append(digest)
        return original(api, name, digest)

    monkeypatch.setattr(RegistryAPI, "blob_stream", counted)
    yield read


def test_a_team_reads_a_base_layer_once_and_another_team_reads_it_itself(registry, monkeypatch):
    host, _ = registry
    cache = layer_cache.LayerCache()
    base, first, second = gzip_layer(BASE), gzip_layer(APP), gzip_layer({"srv/app": "v2"})
    one, two = push(host, "team-a/app", [base, first]), push(host, "team-a/app", [base, second], "two")
    with blob_reads(monkeypatch) as read:
        contents = layer_reads.read_contents(f"{host}/team-a/app", one, "", 1, cache=cache)
        assert {p.name for p in contents.packages} == {"flask"} and contents.complete  # the status whited out
        assert contents.distro == "debian" and read == [base.digest, first.digest]
        read.clear()
        contents = layer_reads.read_contents(f"{host}/team-a/app", two, "", 1, cache=cache)
        assert {p.name for p in contents.packages} == {"libc6", "curl"} and read == [second.digest]  # only its own
        read.clear()
        layer_reads.read_contents(f"{host}/team-a/app", two, "", 2, cache=cache)  # team 2: nothing of team 1's
        assert read == [base.digest, second.digest]


def test_a_blob_changed_in_the_registry_is_refused_and_never_kept(registry):
    host, storage = registry
    cache = layer_cache.LayerCache()
    layer = gzip_layer({**BASE, "srv/only-here": "changed below"})  # a blob of its own: the test changes it
    digest = push(host, "team-a/changed", [layer])
    hex_digest = layer.digest.split(":")[1]
    stored = storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    other = gzip.compress(tar_bytes({"var/lib/dpkg/status": "Package: trojan\nVersion: 1\n"}), mtime=0)
    stored.write_bytes(other)  # the registry's disk changed under it: it serves what it holds
    with pytest.raises(RegistryError, match="does not have that digest"):
        layer_reads.read_contents(f"{host}/team-a/changed", digest, "", 1, cache=cache)
    assert cache.get(1, layer.digest) is None and cache.held == 0


def test_a_layer_of_an_unknown_type_makes_an_incomplete_sbom_with_the_reason(registry):
    host, _ = registry
    zstd = Layer("application/vnd.oci.image.layer.v1.tar+zstd", b"(not read)")
    digest = push(host, "team-a/zstd", [gzip_layer(BASE), zstd])
    contents = layer_reads.read_contents(f"{host}/team-a/zstd", digest, "", 1, cache=layer_cache.LayerCache())
    assert not contents.complete and "tar+zstd, which the SBOM cannot read" in contents.why_incomplete
    assert {p.name for p in contents.packages} == {"libc6", "curl"}  # the layers below it, said to be incomplete


def test_a_read_past_its_bytes_is_incomplete_and_keeps_nothing_of_the_cut_layer(registry):
    host, _ = registry
    cache = layer_cache.LayerCache()
    small, big = gzip_layer(BASE), Layer("application/vnd.oci.image.layer.v1.tar", tar_bytes(APP, padding=1 << 20))
    digest = push(host, "team-a/big", [small, big])
    with override_settings(GENERATOR_SBOM_MAX_BYTES=len(small.data) + 64 * 1024):
        contents = layer_reads.read_contents(f"{host}/team-a/big", digest, "", 1, cache=cache)
    assert not contents.complete and "larger than the SBOM's read limit" in contents.why_incomplete
    assert cache.get(1, small.digest) is not None and cache.get(1, big.digest) is None
    complete = layer_reads.read_contents(f"{host}/team-a/big", digest, "", 1, cache=cache)
    assert complete.complete and {p.name for p in complete.packages} == {"flask"}


def test_a_cancel_stops_the_read(registry):
    host, _ = registry
    digest = push(host, "team-a/cancelled", [gzip_layer(BASE)])

    class Cancelled(Exception):
        pass

    def tick():
        raise Cancelled()

    with pytest.raises(Cancelled):
        layer_reads.read_contents(f"{host}/team-a/cancelled", digest, "", 1, tick, layer_cache.LayerCache())


def test_the_platform_of_an_index_is_the_one_read(registry):
    host, _ = registry
    amd64 = push(host, "team-a/multi", [gzip_layer({"lib/apk/db/installed": "P:musl\nV:1.2\nA:x86_64\n"})], "amd64")
    arm64 = push(host, "team-a/multi", [gzip_layer({"lib/apk/db/installed": "P:musl\nV:1.2\nA:aarch64\n"})], "arm64")
    with RegistryAPI(host) as api:
        platforms = ((amd64, "linux/amd64"), (arm64, "linux/arm64"))
        entries = [IndexEntry(api.manifest("team-a/multi", digest), platform) for digest, platform in platforms]
        index = api.put_index("team-a/multi", "latest", entries)
    cache = layer_cache.LayerCache()
    contents = layer_reads.read_contents(f"{host}/team-a/multi", index, "linux/arm64", 1, cache=cache)
    assert [p.arch for p in contents.packages] == ["aarch64"]
    unnamed = layer_reads.read_contents(f"{host}/team-a/multi", index, "linux/s390x", 1, cache=cache)
    assert not unnamed.complete and "no manifest for the platform linux/s390x" in unnamed.why_incomplete
    assert DOCKER_MANIFEST not in unnamed.why_incomplete
