"""Docker image references, parsed by the grammar of distribution/reference.

The regular expressions follow `reference/regexp.go`; `parse_reference` adds the
checks of `reference.Parse` (repository length, digest validation with sha256
as the only registered algorithm). Error texts are Go's, so users meet the same
words the docker CLI prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN}/)?{_REMOTE_NAME}"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_ANCHORED_NAME = re.compile(rf"(?:({_DOMAIN})/)?({_REMOTE_NAME})", re.ASCII)
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")
_DOMAIN_ONLY = re.compile(_DOMAIN, re.ASCII)

NAME_TOTAL_LENGTH_MAX = 255

DOCKER_HUB = "docker.io"
# What Docker reads as Docker Hub when a reference or a login names it.
DOCKER_HUB_SPELLINGS = (DOCKER_HUB, "index.docker.io")


class InvalidReference(ValueError):
    """The text is not a Docker image reference; str() is the reason."""


@dataclass(frozen=True)
class ImageReference:
    repository: str  # domain and path, e.g. localhost:5000/cts/example
    tag: str | None
    digest: str | None

    @property
    def domain(self) -> str | None:
        return _ANCHORED_NAME.fullmatch(self.repository)[1]

    @property
    def registry(self) -> str:
        """The registry host the image goes to, read as Docker reads it (unlike
        `domain`, which is the grammar's optional first component)."""
        return registry_host(self.repository)

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    if not text:
        raise InvalidReference("repository name must have at least one component")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if _REFERENCE.fullmatch(text.lower()):
            raise InvalidReference("repository name must be lowercase")
        raise InvalidReference("invalid reference format")
    repository, tag, digest = match.groups()
    remote_name = _ANCHORED_NAME.fullmatch(repository)[2]
    if len(remote_name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    if digest is not None:
        _validate_digest(digest)
    return ImageReference(repository=repository, tag=tag, digest=digest)


def parse_build_target(text: str) -> ImageReference:
    """A reference a build can be tagged with and pushed to: no digest; tag defaults to latest."""
    reference = parse_reference(text)
    if reference.digest:
        raise InvalidReference("an image to build cannot name a digest; give a tag instead")
    if reference.tag is None:
        return ImageReference(repository=reference.repository, tag="latest", digest=None)
    return reference


def registry_host(repository: str) -> str:
    """The registry of an image repository, by distribution/reference's
    `splitDockerDomain`: the first component is a host only if it has a '.' or a
    ':', is `localhost`, or has capitals; otherwise the image is on Docker Hub
    (`busybox`, `library/busybox`, `team/app`). `index.docker.io` is Docker Hub too.
    Other hosts are kept as written: `localhost:5000` and `127.0.0.1:5000` differ."""
    first, slash, _ = repository.partition("/")
    if not slash or not _looks_like_a_host(first) or first in DOCKER_HUB_SPELLINGS:
        return DOCKER_HUB
    return first


def _looks_like_a_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse_registry_host(text: str) -> str:
    """A registry host as image references write it (`registry.example.com:5000`,
    `localhost:5000`, `[::1]:5000`, `docker.io`), Docker Hub's spellings made one."""
    host = text.strip()
    if not _DOMAIN_ONLY.fullmatch(host):
        raise InvalidReference(f"{text!r} is not a registry host: write it as in image names, e.g. localhost:5000")
    if not _looks_like_a_host(host):
        # Docker would read "HOST/app" as Docker Hub's HOST/app: the row would allow nothing.
        raise InvalidReference(
            f"Docker reads {host}/app as an image on Docker Hub: a registry host has a '.' or a port, or is localhost"
        )
    return DOCKER_HUB if host in DOCKER_HUB_SPELLINGS else host


def _validate_digest(digest: str) -> None:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise InvalidReference(f"unsupported digest algorithm {algorithm!r}")
    if not _SHA256_HEX.fullmatch(hex_part):
        raise InvalidReference("invalid checksum digest format")
