"""A CycloneDX SBOM of what an image holds, from the package databases in its
files: Debian's dpkg status (and distroless' status.d), Alpine's apk installed
database, os-release, and Python distributions' metadata (*.dist-info/METADATA,
*.egg-info/PKG-INFO). Made with cyclonedx-python-lib, not by hand.

What each wanted file says (`read_file`) is kept by path; builds/provenance/layers.py
gathers them from an image's layers, overlay by overlay, and `contents_of` makes
the image's Contents from the files that are left, in the order `docker export`
would give them. No Django and no Docker here: builds/worker/layer_reads.py
streams the layers in, with their bounds (`Budget`: bytes read, seconds), and a
read cut short makes an SBOM marked incomplete (`generator:sbom:complete`
false), never a wrong "nothing".
"""

from __future__ import annotations

import email.parser
import re
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from builds.provenance.cosign_layout import CYCLONEDX

PREDICATE_TYPE = CYCLONEDX
MAX_DATABASE_BYTES = 64 << 20  # one package database: far larger than any real one
_DIST_INFO = re.compile(r"(^|/)[^/]+\.(dist-info/METADATA|egg-info/PKG-INFO)$")


@dataclass(frozen=True)
class Package:
    kind: str  # deb, apk, pypi
    name: str
    version: str
    arch: str = ""
    license: str = ""
    path: str = ""  # where it was read


@dataclass
class Contents:
    packages: list[Package] = field(default_factory=list)
    distro: str = ""  # os-release ID: debian, alpine, ...
    distro_version: str = ""
    complete: bool = True
    why_incomplete: str = ""


class Budget:
    """A stream that stops giving bytes past `max_bytes` or `seconds`, over all
    the streams it reads in turn (`over`: an image's layers, one after the
    other): the read of a huge image ends, and says so, rather than holding the worker."""

    def __init__(self, raw: BinaryIO | None, max_bytes: int, seconds: float, tick=None) -> None:
        self.raw, self.left, self.deadline = raw, max_bytes, time.monotonic() + seconds
        self.tick = tick  # the build's heartbeat: a long read keeps its lease and sees a cancel
        self.exceeded = ""

    def over(self, raw: BinaryIO) -> Budget:
        """The same budget, now reading `raw`."""
        self.raw = raw
        return self

    def read(self, size: int = -1) -> bytes:
        if self.exceeded:
            return b""
        if self.tick:
            self.tick()
        if time.monotonic() > self.deadline:
            self.exceeded = "the image took too long to read"
            return b""
        want = self.left if size is None or size < 0 else min(size, self.left)
        if want <= 0:
            self.exceeded = "the image is larger than the SBOM's read limit"
            return b""
        data = self.raw.read(want)
        self.left -= len(data)
        return data


DATABASES = ("var/lib/dpkg/status", "lib/apk/db/installed", "etc/os-release", "usr/lib/os-release")
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


@dataclass(frozen=True)
class Found:
    """What one wanted file says: its packages, or for an os-release file its ID and VERSION_ID."""

    packages: tuple[Package, ...] = ()
    os_release: tuple[str, str] | None = None


def wanted(name: str) -> bool:
    """Whether the file at `name` (relative to the image's root) is one the SBOM reads."""
    return (
        name in DATABASES
        or (name.startswith("var/lib/dpkg/status.d/") and not name.endswith(".md5sums"))
        or bool(_DIST_INFO.search(name))
    )


def read_file(name: str, text: str) -> Found:
    if name in _OS_RELEASE:
        fields = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', text, re.MULTILINE))
        return Found(os_release=(fields.get("ID", ""), fields.get("VERSION_ID", "")))
    if name == "lib/apk/db/installed":
        return Found(tuple(apk_packages(text, name)))
    if name == "var/lib/dpkg/status" or name.startswith("var/lib/dpkg/status.d/"):
        return Found(tuple(dpkg_packages(text, name)))
    package = python_package(text, name)
    return Found((package,) if package else ())


def contents_of(files: dict[str, Found]) -> Contents:
    """The image's Contents from its wanted files, taken in `docker export`'s
    order (a directory's entries sorted by name, depth first): the first path
    naming a package is the one the SBOM records."""
    contents = Contents()
    for name in sorted(files, key=lambda path: path.split("/")):
        found = files[name]
        contents.packages += found.packages
        if found.os_release is not None and (not contents.distro or name == "etc/os-release"):
            contents.distro, contents.distro_version = found.os_release
    return contents


def dpkg_packages(text: str, path: str = "") -> list[Package]:
    """Installed packages of a dpkg status file (RFC 822 paragraphs)."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", paragraph, re.MULTILINE))
        status = fields.get("Status", "install ok installed").split()
        if fields.get("Package") and status[-1:] == ["installed"]:
            found.append(Package("deb", fields["Package"], fields.get("Version", ""), fields.get("Architecture", ""),
                                 path=path))  # fmt: skip
    return found


def apk_packages(text: str, path: str = "") -> list[Package]:
    """Packages of apk's installed database: blocks of `X:value` lines (P name, V version, A arch, L license)."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        if fields.get("P"):
            found.append(Package("apk", fields["P"], fields.get("V", ""), fields.get("A", ""), fields.get("L", ""),
                                 path))  # fmt: skip
    return found


def python_package(text: str, path: str = "") -> Package | None:
    headers = email.parser.HeaderParser().parsestr(text)
    name, version = headers.get("Name", ""), headers.get("Version", "")
    if not name:
        return None
    return Package("pypi", name, version, license=(headers.get("License-Expression") or "")[:200], path=path)


def bom_json(contents: Contents, image: str, digest: str) -> str:
    """The CycloneDX 1.6 JSON document: the image as its subject, one component per package."""
    bom = Bom()
    bom.metadata.component = Component(
        name=image, version=digest, type=ComponentType.CONTAINER, bom_ref=f"{image}@{digest}"
    )
    bom.metadata.properties.add(Property(name="generator:sbom:complete", value=str(contents.complete).lower()))
    if not contents.complete:
        bom.metadata.properties.add(Property(name="generator:sbom:incomplete-because", value=contents.why_incomplete))
    seen = set()
    for package in contents.packages:
        purl = _purl(package, contents)
        if purl.to_string() in seen:
            continue
        seen.add(purl.to_string())
        bom.components.add(
            Component(
                name=package.name,
                version=package.version,
                type=ComponentType.LIBRARY,
                purl=purl,
                bom_ref=purl.to_string(),
                properties=[Property(name="generator:found-in", value=package.path)] if package.path else [],
            )
        )
    bom.register_dependency(bom.metadata.component, list(bom.components))
    return make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string()


def _purl(package: Package, contents: Contents) -> PackageURL:
    qualifiers = {"arch": package.arch} if package.arch else {}
    if package.kind in ("deb", "apk"):
        namespace = contents.distro or ("debian" if package.kind == "deb" else "alpine")
        if contents.distro_version:
            qualifiers["distro"] = f"{namespace}-{contents.distro_version}"
        return PackageURL(package.kind, namespace, package.name, package.version or None, qualifiers or None)
    return PackageURL("pypi", None, package.name.lower().replace("_", "-"), package.version or None)
