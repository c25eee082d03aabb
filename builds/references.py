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

NAME_TOTAL_LENGTH_MAX = 255


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


def _validate_digest(digest: str) -> None:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise InvalidReference(f"unsupported digest algorithm {algorithm!r}")
    if not _SHA256_HEX.fullmatch(hex_part):
        raise InvalidReference("invalid checksum digest format")
