"""Build rules: which pushed refs build, and the tags they get.

Like Docker Hub's automated builds: a rule names a source (branch or tag) and a
name, or a /regular expression/ matched against the whole name, and gives tag
templates. Templates take {ref} (the branch or tag name; {sourceref} too),
{sha}, {short_sha}, and {1}, {2}... for the expression's groups. Branch
`main` -> `latest,sha-{short_sha}`; tag `/^v([0-9.]+)$/` -> `{1}`.
Pure functions: no models, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAMED = {"ref", "sourceref", "sha", "short_sha"}
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_NOT_TAG_CHARACTER = re.compile(r"[^\w.-]", re.ASCII)


class RuleError(ValueError):
    pass


class Rule(Protocol):
    source: str  # "branch" or "tag"
    pattern: str
    tags: str  # comma-separated templates


@dataclass(frozen=True)
class PushedRef:
    source: str  # "branch" or "tag"
    name: str


def parse_ref(ref: str) -> PushedRef | None:
    for prefix, source in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return PushedRef(source, ref[len(prefix) :])
    return None


def _is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/")


def check_pattern(pattern: str) -> None:
    if not pattern.strip():
        raise RuleError("a rule needs a branch or tag name, or a /regular expression/")
    if _is_regex(pattern):
        try:
            re.compile(pattern[1:-1])
        except re.error as exc:
            raise RuleError(f"{pattern} is not a valid regular expression: {exc}") from None


def check_template(template: str) -> None:
    if not template:
        raise RuleError("an empty tag template")
    for name in _PLACEHOLDER.findall(template):
        if name not in _NAMED and not name.isdigit():
            raise RuleError(
                f"unknown placeholder {{{name}}} in {template!r}: use {{ref}}, {{sha}}, {{short_sha}}, {{1}}..."
            )


def _match(pattern: str, name: str) -> tuple[str, ...] | None:
    if _is_regex(pattern):
        found = re.fullmatch(pattern[1:-1], name)
        return None if found is None else tuple(g or "" for g in found.groups())
    return () if name == pattern else None


def render(template: str, *, ref_name: str, sha: str, groups: tuple[str, ...]) -> str:
    values = {"ref": ref_name, "sourceref": ref_name, "sha": sha, "short_sha": sha[:7]}

    def replace(found: re.Match) -> str:
        key = found[1]
        if key.isdigit():
            index = int(key)
            if not 1 <= index <= len(groups):
                raise RuleError(f"{{{key}}}: the expression has {len(groups)} group(s)")
            return groups[index - 1]
        return values[key]

    return _PLACEHOLDER.sub(replace, template)


def as_tag(text: str) -> str | None:
    """A Docker tag from a rendered template: branch names like `feature/x` become
    `feature-x`; None if nothing usable is left."""
    tag = _NOT_TAG_CHARACTER.sub("-", text).lstrip(".-")[:128]
    return tag if _TAG.fullmatch(tag) else None


def tags_for(rules: Iterable[Rule], ref: PushedRef, sha: str) -> list[str]:
    """Every tag the matching rules give, in rule order, each once."""
    tags: list[str] = []
    for rule in rules:
        if rule.source != ref.source:
            continue
        groups = _match(rule.pattern, ref.name)
        if groups is None:
            continue
        for template in rule.tags.split(","):
            tag = as_tag(render(template.strip(), ref_name=ref.name, sha=sha, groups=groups))
            if tag and tag not in tags:
                tags.append(tag)
    return tags
