"""SLSA provenance v1 of a pushed image, as an in-toto Statement v1: built
from the job's facts, which the worker gathers (builds/worker/attestations.py). Pure:
no Django, no I/O, so every field is pinned by tests/builds/provenance/test_slsa.py.

The build type, BUILD_TYPE, is documented in docs/provenance.md: what
externalParameters and internalParameters hold, and how the base images in
resolvedDependencies were resolved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote, urlsplit, urlunsplit

from builds.provenance.cosign_layout import SLSA_PROVENANCE

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
BUILD_TYPE = "https://github.com/containerops/generator/blob/main/docs/provenance.md#dockerfile-build-v1"
MASK = "***"

# BuildKit's plain progress for a base image: `#4 [1/2] FROM docker.io/library/busybox@sha256:...`,
# `#5 [stage-1 1/3] FROM ...`; no digest where the daemon had the image and did not ask a registry.
_BUILDKIT_FROM = re.compile(r"^#\d+ \[[^\]]*\d+/\d+\] FROM (\S+?)(?:@(sha256:[0-9a-f]{64}))?\s*$")
# The classic builder's: `Step 1/4 : FROM busybox AS build`.
_CLASSIC_FROM = re.compile(r"^Step \d+/\d+ : FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BaseImage:
    """A FROM of the build: the reference as the builder printed it, its digest
    if the builder printed one (`digest_from` says who said it)."""

    reference: str
    digest: str = ""
    digest_from: str = ""  # "buildkit" (its log), "daemon" (the image the daemon holds), "" unknown


class FromLines:
    """Collects the base images of a build from its log lines, as they are
    stored: BuildKit's resolved `FROM ref@digest`, or the classic builder's
    `Step N/M : FROM ref` (stage names and scratch left out)."""

    def __init__(self) -> None:
        self.images: dict[str, BaseImage] = {}
        self._stages: set[str] = set()
        # The images the Dockerfile itself names (builds/dockerfiles/images.py), once the
        # worker has read it: which images builds/triggers/base_images.py watches.
        self.dockerfile_images: list[str] | None = None

    def feed(self, text: str) -> None:
        if found := _BUILDKIT_FROM.match(text):
            reference, digest = found[1], found[2] or ""
            if digest or reference not in self.images:
                self.images[reference] = BaseImage(reference, digest, "buildkit" if digest else "")
        elif found := _CLASSIC_FROM.match(text):
            reference, alias = found[1], found[2]
            if reference.lower() not in self._stages and reference != "scratch":
                self.images.setdefault(reference, BaseImage(reference))
            if alias:
                self._stages.add(alias.lower())

    @property
    def unresolved(self) -> list[str]:
        return [image.reference for image in self.images.values() if not image.digest]


@dataclass(frozen=True)
class Source:
    """Where the build's context came from: a repository's commit, an uploaded
    context, or a Dockerfile given as text (its digest)."""

    repository_url: str = ""
    repository_name: str = ""
    ref: str = ""
    commit: str = ""
    context_dir: str = ""
    upload_digest: str = ""
    dockerfile_digest: str = ""


@dataclass(frozen=True)
class Child:
    """A platform image of an index."""

    platform: str
    digest: str
    job_id: str


@dataclass(frozen=True)
class BuildFacts:
    job_id: str
    image_repository: str  # where it was pushed, without a tag: the subject's name
    tags: list[str]
    digest: str  # the subject: the pushed manifest's (or index's) digest
    source: Source
    dockerfile_path: str
    target: str
    platforms: list[str]
    builder: str  # classic, buildkit, or index
    builder_id: str  # the farm's URL
    versions: dict[str, str]
    started: datetime | None
    finished: datetime
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)
    base_images: list[BaseImage] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    no_cache: bool = False
    daemon: str = ""
    attempt: int = 1
    parent_job_id: str = ""


def statement(facts: BuildFacts, secret_values: list[str] | None = None) -> dict:
    """The in-toto Statement v1 whose subject is the pushed image and whose
    predicate is SLSA provenance v1. Any build arg or label value holding one of
    `secret_values` is written as *** (a secret never goes in; its name may)."""
    hide = _hider(secret_values or [])
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.image_repository, "digest": {"sha256": _hex(facts.digest)}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _external(facts, hide),
                "internalParameters": _internal(facts),
                "resolvedDependencies": _dependencies(facts),
            },
            "runDetails": {
                "builder": {"id": facts.builder_id, "version": dict(sorted(facts.versions.items()))},
                "metadata": {
                    "invocationId": facts.job_id,
                    **({"startedOn": _time(facts.started)} if facts.started else {}),
                    "finishedOn": _time(facts.finished),
                },
            },
        },
    }


def payload(document: dict) -> bytes:
    """The bytes signed: compact JSON, keys in order, so the same facts sign the same bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _external(facts: BuildFacts, hide) -> dict:
    source = facts.source
    params: dict = {}
    if source.repository_url:
        params["source"] = {
            "repository": source.repository_name or source.repository_url,
            "uri": source_uri(source),
            "ref": source.ref,
            **({"contextDir": source.context_dir} if source.context_dir else {}),
        }
    elif source.upload_digest:
        params["source"] = {"upload": {"digest": {"sha256": _hex(source.upload_digest)}}}
    elif source.dockerfile_digest:
        params["source"] = {"dockerfileText": {"digest": {"sha256": _hex(source.dockerfile_digest)}}}
    params["image"] = facts.image_repository
    params["tags"] = list(facts.tags)
    params["dockerfile"] = facts.dockerfile_path
    if facts.target:
        params["target"] = facts.target
    params["platforms"] = list(facts.platforms)
    params["buildArgs"] = {name: hide(value) for name, value in sorted(facts.build_args.items())}
    params["labels"] = {name: hide(value) for name, value in sorted(facts.labels.items())}
    params["secrets"] = sorted(facts.secret_names)  # names only: a value never leaves the build
    params["noCache"] = facts.no_cache
    return params


def _internal(facts: BuildFacts) -> dict:
    internal = {"builder": facts.builder, "attempt": facts.attempt}
    if facts.daemon:
        internal["daemon"] = facts.daemon
    if facts.parent_job_id:
        internal["parentInvocationId"] = facts.parent_job_id
    return internal


def _dependencies(facts: BuildFacts) -> list[dict]:
    found = []
    source = facts.source
    if source.commit:
        found.append({"uri": source_uri(source), "digest": {"gitCommit": source.commit}})
    elif source.upload_digest:
        found.append({"name": "context.tar", "digest": {"sha256": _hex(source.upload_digest)}})
    elif source.dockerfile_digest:
        found.append({"name": "Dockerfile", "digest": {"sha256": _hex(source.dockerfile_digest)}})
    for base in facts.base_images:
        descriptor: dict = {"uri": _image_uri(base.reference), "name": base.reference}
        if base.digest:
            descriptor["digest"] = {"sha256": _hex(base.digest)}
            descriptor["annotations"] = {"resolvedBy": base.digest_from}
        found.append(descriptor)
    for child in facts.children:
        found.append(
            {
                "uri": _image_uri(f"{facts.image_repository}@{child.digest}"),
                "digest": {"sha256": _hex(child.digest)},
                "annotations": {"platform": child.platform, "invocationId": child.job_id},
            }
        )
    return found


def source_uri(source: Source) -> str:
    """SLSA's git form, `git+https://host/owner/repo@ref`, with no user or password in it."""
    parts = urlsplit(source.repository_url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if not parts.scheme and "@" in source.repository_url:  # git@host:owner/repo
        clean = "ssh://" + source.repository_url.split("@", 1)[1].replace(":", "/", 1)
    return f"git+{clean}" + (f"@{source.ref}" if source.ref else "")


def _image_uri(reference: str) -> str:
    """A package URL of a Docker image, as BuildKit's own provenance writes them."""
    name, digest = (reference.split("@", 1) + [""])[:2]
    last = name.rsplit("/", 1)[-1]
    tag = ""
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    version = digest or tag or "latest"
    return f"pkg:docker/{quote(name, safe='/.:-_')}@{quote(version, safe=':')}"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _hider(secret_values: list[str]):
    forms = sorted((v for v in secret_values if v), key=len, reverse=True)

    def hide(value: str) -> str:
        for secret in forms:
            value = value.replace(secret, MASK)
        return value

    return hide
