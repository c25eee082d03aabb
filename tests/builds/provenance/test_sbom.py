"""The SBOM of an image's files (builds/provenance/sbom.py): tiny Debian-like and
Alpine-like root filesystems made by hand (no Docker Hub here), read as one
layer (builds/provenance/layers.py), written as CycloneDX and checked against
CycloneDX's own JSON schema."""

from __future__ import annotations

import io
import json

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from builds.provenance import layers, sbom
from tests.builds.provenance.tars import tar_bytes

DPKG_STATUS = """Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library
 a continuation line: Package: not-a-package

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
"""

APK_INSTALLED = """C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
L:MIT
o:musl

C:Q1def=
P:busybox
V:1.36.1-r5
A:x86_64
L:GPL-2.0-only
"""

METADATA = "Metadata-Version: 2.1\nName: requests\nVersion: 2.32.3\nLicense-Expression: Apache-2.0\n\nbody\n"


def read(files: dict[str, str]) -> sbom.Contents:
    return sbom.contents_of(layers.merge([layers.read_layer(io.BytesIO(tar_bytes(files)), "r|")]))


def components(contents: sbom.Contents) -> dict[str, dict]:
    document = sbom.bom_json(contents, "localhost:5000/team/app", "sha256:" + "a" * 64)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document) is None
    return {c["name"]: c for c in json.loads(document)["components"]}


def test_a_debian_image_lists_its_installed_dpkg_packages_and_python_distributions():
    contents = read(
        {
            "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
            "var/lib/dpkg/status": DPKG_STATUS,
            "usr/lib/python3/dist-packages/requests-2.32.3.dist-info/METADATA": METADATA,
        }
    )
    assert contents.complete and contents.distro == "debian"
    found = components(contents)
    assert set(found) == {"libc6", "bash", "requests"}  # not the removed one, nor a description's words
    assert found["libc6"]["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
    assert found["requests"]["purl"] == "pkg:pypi/requests@2.32.3"


def test_an_alpine_image_lists_its_apk_packages():
    contents = read({"etc/os-release": "ID=alpine\nVERSION_ID=3.19.1\n", "lib/apk/db/installed": APK_INSTALLED})
    found = components(contents)
    assert set(found) == {"musl", "busybox"}
    assert found["busybox"]["purl"] == "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64&distro=alpine-3.19.1"


def test_an_incomplete_sbom_says_so_and_why():
    contents = read({"lib/apk/db/installed": APK_INSTALLED})
    contents.complete, contents.why_incomplete = False, "the image is larger than the SBOM's read limit"
    document = json.loads(sbom.bom_json(contents, "i", "sha256:" + "b" * 64))
    properties = {p["name"]: p["value"] for p in document["metadata"]["properties"]}
    assert properties["generator:sbom:complete"] == "false"
    assert properties["generator:sbom:incomplete-because"] == "the image is larger than the SBOM's read limit"
    assert {c["name"] for c in document["components"]} == {"musl", "busybox"}  # what was read is kept
