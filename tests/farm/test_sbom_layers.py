"""The SBOM the farm reads from a pushed image's layers in the registry
(builds/worker/layer_reads.py) lists the same packages, found at the same
paths, as the image's filesystem exported from its daemon: on a real image
whose later layer rewrites the dpkg status, deletes a status.d entry and a
Python distribution (whiteouts) and remakes a site-packages directory (an
opaque one)."""

from __future__ import annotations

import base64
import io
import json
import uuid

import pytest

from builds.models import Attestation, BuildJob
from builds.provenance import layers, sbom
from builds.provenance.cosign_layout import CYCLONEDX
from tests.farm.conftest import api_build, engine, follow

pytestmark = pytest.mark.farm

DIST = "/usr/lib/python3/dist-packages"
SITE = "/usr/local/lib/python3.11/site-packages"
FIRST = (
    f"RUN mkdir -p /var/lib/dpkg/status.d {DIST}/a-1.dist-info {DIST}/b-2.dist-info {SITE}/c-3.dist-info /etc"
    " && printf 'Package: libold\\nStatus: install ok installed\\nVersion: 1\\n\\n"
    "Package: libkept\\nStatus: install ok installed\\nVersion: 2\\n' > /var/lib/dpkg/status"
    " && printf 'Package: tzdata\\nVersion: 2024a\\n' > /var/lib/dpkg/status.d/tzdata"
    " && printf 'Package: gone\\nVersion: 9\\n' > /var/lib/dpkg/status.d/gone"
    f" && printf 'Name: a\\nVersion: 1\\n' > {DIST}/a-1.dist-info/METADATA"
    f" && printf 'Name: b\\nVersion: 2\\n' > {DIST}/b-2.dist-info/METADATA"
    f" && printf 'Name: c\\nVersion: 3\\n' > {SITE}/c-3.dist-info/METADATA"
    " && printf 'ID=debian\\nVERSION_ID=\"12\"\\n' > /etc/os-release\n"
)
SECOND = (
    "RUN printf 'Package: libkept\\nStatus: install ok installed\\nVersion: 2\\n\\n"
    "Package: libnew\\nStatus: install ok installed\\nVersion: 3\\n' > /var/lib/dpkg/status"
    f" && rm /var/lib/dpkg/status.d/gone && rm -rf {DIST}/b-2.dist-info {SITE}"
    f" && mkdir -p {SITE}/d-4.dist-info && printf 'Name: d\\nVersion: 4\\n' > {SITE}/d-4.dist-info/METADATA\n"
)


def test_the_sbom_from_the_layers_is_the_sbom_of_the_exported_image(farm, token):
    image = f"{farm.registry}/sbom/layers:{uuid.uuid4().hex[:8]}"
    body = {"image": image, "dockerfile": f"FROM busybox\n{FIRST}{SECOND}", "builder": "buildkit"}
    job_id = api_build(farm, token, body)
    done = follow(farm, job_id, token)
    assert done.end["status"] == "succeeded", "\n".join(text for _, text in done.lines)
    job = BuildJob.objects.get(pk=job_id)
    envelope = json.loads(Attestation.objects.get(job=job, predicate_type=CYCLONEDX).envelope)
    from_layers = json.loads(base64.b64decode(envelope["payload"]))["predicate"]

    daemon = engine(dict(farm.daemons)[job.daemon.name])
    container = daemon.api.create_container(image, command=["/never-runs"], network_disabled=True)
    try:
        exported = io.BytesIO(b"".join(daemon.api.export(container["Id"])))
    finally:
        daemon.api.remove_container(container["Id"], force=True)
    contents = sbom.contents_of(layers.merge([layers.read_layer(exported, "r|")]))
    from_export = json.loads(sbom.bom_json(contents, job.image_repository, job.digest))

    assert _packages(from_layers) == _packages(from_export)
    assert {name for name, _, _ in _packages(from_layers)} == {"libkept", "libnew", "tzdata", "a", "d"}
    assert from_layers["metadata"]["properties"] == from_export["metadata"]["properties"]  # complete, both


def _packages(document: dict) -> list[tuple[str, str, str]]:
    """Each component's name, purl and where it was found, in the document's order."""
    return [
        (c["name"], c["purl"], {p["name"]: p["value"] for p in c.get("properties", [])}.get("generator:found-in", ""))
        for c in document.get("components", [])
    ]
