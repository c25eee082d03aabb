"""The `.sig` and `.att` images written as their parts are ready (builds/worker/attestation_writes.py),
in a real registry: the signature and a layer sent now are stored while the caller goes on (the SBOM's read)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from builds.models import Attestation, BuildJob
from builds.provenance import cosign_layout
from builds.registry.client import RegistryAPI
from builds.worker.attestation_writes import Writes
from tests.registries import plain_registry

pytestmark = pytest.mark.django_db
DIGEST = "sha256:" + "e" * 64


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> tuple[str, Path]:
    with plain_registry(supervisor, services_dir, "attestation-write-registry") as found:
        yield found


def statement(kind: str) -> dict:
    return {"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": kind, "predicate": {}}


def stored(host: str, name: str, blob: bytes) -> bool:
    with RegistryAPI(host) as api:
        return api.blob_size(name, "sha256:" + hashlib.sha256(blob).hexdigest()) is not None


def test_the_signature_and_a_layer_sent_now_are_stored_before_the_rest_is_added(registry):
    host, _ = registry
    job = BuildJob.objects.create(image=f"{host}/writes/app:1", dockerfile="FROM busybox\n")
    with Writes(job, DIGEST) as writes:
        writes.add(statement("https://slsa.dev/provenance/v1"), send_now=True)
        early = [*writes.signature_image.blobs, writes.layers[0].data]
        deadline = time.monotonic() + 10
        while not all(stored(host, "writes/app", blob) for blob in early):
            assert time.monotonic() < deadline, "the signature and the provenance were not sent before the SBOM"
            time.sleep(0.02)
        writes.add(statement("https://cyclonedx.org/bom"))
        assert not stored(host, "writes/app", writes.layers[1].data)  # sent with the rest, by finish
        attached = writes.finish(packages=3)

    with RegistryAPI(host) as api:
        signature = json.loads(api.stored("writes/app", attached.signature_tag)[1])
        attestation = json.loads(api.stored("writes/app", attached.attestation_tag)[1])
    assert [layer["mediaType"] for layer in signature["layers"]] == [cosign_layout.SIMPLE_SIGNING]
    assert len(attestation["layers"]) == 2 and attached.packages == 3
    kinds = Attestation.objects.filter(job=job, digest=DIGEST).values_list("predicate_type", flat=True)
    assert sorted(kinds) == ["https://cyclonedx.org/bom", "https://slsa.dev/provenance/v1"]
