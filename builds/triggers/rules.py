"""Build rules: which pushed refs build, and the tags they get.

Like Docker Hub's automated builds: a rule names a source (branch or tag) and a
name, or a /regular expression/ matched against the whole name, and gives tag
templates. Templates take {ref} (the branch or tag name; {sourceref} too),
{sha}, {short_sha}, and {1}, {2}... for the expression's groups. Branch
`main` -> `latest,sha-{short_sha}`; tag `/^v([0-9.]+)$/` -> `{1}`. A
pull_request rule is matched against the pull request's base branch and takes
{number} too: `main` -> `pr-{number}` pushes pull requests into main as pr-N.

Expressions are matched by RE2, in time linear in the name: a pusher chooses
the branch name, and Python's backtracking `re` takes exponential time on
`/(a+)+$/` against `aaaa...!`. RE2 has no backreferences and no lookaround; an
expression using them is refused when the rule is saved, as is a template
naming a group the expression does not have. Names longer than MAX_NAME_LENGTH
match no rule.
Pure functions: no models, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import re2

# A ref is stored in a 255-character column (BuildJob.ref); git allows longer.
MAX_REF_LENGTH = 255
MAX_NAME_LENGTH = MAX_REF_LENGTH - len("refs/heads/")

# What git's check-ref-format refuses anywhere in a ref, and what a database
# column cannot hold (NUL, lone surrogates).
_NOT_IN_A_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\\ud800-\udfff]|\.\.|@\{")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAMED = {"ref", "sourceref", "sha", "short_sha"}
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_NOT_TAG_CHARACTER = re.compile(r"[^\w.-]", re.ASCII)


PULL_REQUEST = "pull_request"


class RuleError(ValueError):
    pass


class Rule(Protocol):
    source: str  # "branch", "tag" or "pull_request"
    pattern: str
    tags: str  # comma-separated templates


@dataclass(frozen=True)
class PushedRef:
    source: str  # "branch", "tag", or "pull_request" (name: its base branch)
    name: str
    number: int | None = None  # a pull request's


def is_ref_text(ref: str) -> bool:
    """A ref git could have sent: not too long for the column, and none of the
    characters git refuses in ref names."""
    return len(ref) <= MAX_REF_LENGTH and not _NOT_IN_A_REF.search(ref)


def parse_ref(ref: str) -> PushedRef | None:
    for prefix, source in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return PushedRef(source, ref[len(prefix) :])
    return None


def _is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/")


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused expression on stderr
    return options


_OPTIONS = _re2_options()


def _compile(pattern: str) -> re2._Regexp:
    """The expression of a /pattern/, compiled by RE2 (which caches it)."""
    try:
        return re2.compile(pattern[1:-1], options=_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        hint = ""
        if why.startswith(("invalid perl operator", "invalid escape sequence: \\")):
            hint = " (expressions are matched by RE2, in linear time: no backreferences, no lookahead or lookbehind)"
        raise RuleError(f"{pattern} is not a valid regular expression: {why}{hint}") from None


def check_pattern(pattern: str) -> int:
    """Refuses a pattern that cannot match; answers how many groups it has."""
    if not pattern.strip():
        raise RuleError("a rule needs a branch or tag name, or a /regular expression/")
    return _compile(pattern).groups if _is_regex(pattern) else 0


def check_template(template: str, groups: int = 0, source: str = "branch") -> None:
    """Refuses a template with a placeholder it could not fill at push time."""
    if not template:
        raise RuleError("an empty tag template")
    for name in _PLACEHOLDER.findall(template):
        if name in _NAMED:
            continue
        if name == "number":
            if source != PULL_REQUEST:
                raise RuleError(f"{{number}} in {template!r}: only a pull_request rule has a number")
            continue
        if not _is_group_number(name):
            raise RuleError(
                f"unknown placeholder {{{name}}} in {template!r}: use {{ref}}, {{sha}}, {{short_sha}}, {{1}}..."
            )
        if not 1 <= int(name) <= groups:
            has = f"{groups} group{'s' if groups != 1 else ''}" if groups else "no groups"
            raise RuleError(f"{{{name}}} in {template!r}: the rule's expression has {has}")


def check_rule(pattern: str, templates: str, source: str = "branch") -> None:
    groups = check_pattern(pattern)
    for template in templates.split(","):
        check_template(template.strip(), groups, source)


def _is_group_number(name: str) -> bool:
    return name.isascii() and name.isdigit()  # not "²", which isdigit() takes and int() refuses


def match(pattern: str, name: str) -> tuple[str, ...] | None:
    """The groups of a rule's pattern matched against the whole name, or None."""
    if _is_regex(pattern):
        found = _compile(pattern).fullmatch(name)
        return None if found is None else tuple(g or "" for g in found.groups())
    return () if name == pattern else None


def render(template: str, *, ref_name: str, sha: str, groups: tuple[str, ...], number: int | None = None) -> str:
    values = {"ref": ref_name, "sourceref": ref_name, "sha": sha, "short_sha": sha[:7]}
    if number is not None:
        values["number"] = str(number)

    def replace(found: re.Match) -> str:
        key = found[1]
        if _is_group_number(key):
            index = int(key)
            if not 1 <= index <= len(groups):
                raise RuleError(f"{{{key}}}: the expression has {len(groups)} group(s)")
            return groups[index - 1]
        if key not in values:
            raise RuleError(f"unknown placeholder {{{key}}}")
        return values[key]

    return _PLACEHOLDER.sub(replace, template)


def as_tag(text: str) -> str | None:
    """A Docker tag from a rendered template: branch names like `feature/x` become
    `feature-x`; None if nothing usable is left."""
    tag = _NOT_TAG_CHARACTER.sub("-", text).lstrip(".-")[:128]
    return tag if _TAG.fullmatch(tag) else None


def matching(rules: Iterable[Rule], ref: PushedRef) -> list[Rule]:
    """The rules of the ref's source whose pattern matches its name, in order.
    RuleError as for tags_for."""
    if len(ref.name) > MAX_NAME_LENGTH:
        return []
    return [rule for rule in rules if rule.source == ref.source and match(rule.pattern, ref.name) is not None]


def tags_for(rules: Iterable[Rule], ref: PushedRef, sha: str) -> list[str]:
    """Every tag the matching rules give, in rule order, each once. RuleError for
    a rule saved before its checks existed (or written around them)."""
    tags: list[str] = []
    if len(ref.name) > MAX_NAME_LENGTH:
        return tags
    for rule in rules:
        if rule.source != ref.source:
            continue
        groups = match(rule.pattern, ref.name)
        if groups is None:
            continue
        for template in rule.tags.split(","):
            tag = as_tag(render(template.strip(), ref_name=ref.name, sha=sha, groups=groups, number=ref.number))
            if tag and tag not in tags:
                tags.append(tag)
    return tags
