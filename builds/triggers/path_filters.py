"""Path filters of build rules: which changed files make a push build.

As Cloud Build's `includedFiles` / `ignoredFiles`: a changed file counts when
no `ignored` glob matches it and, if the rule has `included` globs, one of
them does. A push builds under a rule when at least one of its changed files
counts: every file ignored, or none included, builds nothing.

Globs are matched by wcmatch (GLOBSTAR, DOTMATCH, BRACE), as Go's doublestar
that Cloud Build uses: `*` stays inside a directory, `**` crosses directories
(`docs/**`, `**/*.md`), dot files match like any other, `{a,b}` either.

The changed files are the union of the push's commits' added, modified and
removed lists, where GitHub's payload holds them all. It does not when the
push was forced, made a new branch or tag, listed no commits, listed 2,048
(GitHub's cap), or its last listed commit is not the head: then the caller
asks git (builds/sources/git.py, `GitSource.changed_files`). Pure: no models, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from wcmatch import glob

FLAGS = glob.GLOBSTAR | glob.DOTMATCH | glob.BRACE
MAX_GLOBS = 50
MAX_GLOB_LENGTH = 200
GITHUB_COMMITS_CAP = 2048
_NO_COMMIT = "0" * 40


class FilterError(ValueError):
    pass


def check_globs(globs: object, field: str) -> list[str]:
    """A list of globs a rule may keep; FilterError naming the first wrong one."""
    if not isinstance(globs, list):
        raise FilterError(f'{field}: a list of path globs, e.g. ["docs/**", "**/*.md"]')
    if len(globs) > MAX_GLOBS:
        raise FilterError(f"{field}: at most {MAX_GLOBS} globs")
    for pattern in globs:
        if not isinstance(pattern, str) or not pattern.strip():
            raise FilterError(f"{field}: {pattern!r} is not a path glob")
        if len(pattern) > MAX_GLOB_LENGTH:
            raise FilterError(f"{field}: {pattern[:40]!r}... is longer than {MAX_GLOB_LENGTH} characters")
        if pattern.startswith("/") or "\x00" in pattern:
            raise FilterError(f"{field}: {pattern!r}: a path inside the repository, without a leading /")
        if pattern.startswith("!"):
            raise FilterError(f"{field}: {pattern!r}: no ! negation; put the paths to leave out in ignored")
        if ".." in pattern.split("/"):
            raise FilterError(f"{field}: {pattern!r}: a changed file's path never has a .. in it")
        if why := _unbalanced(pattern):
            raise FilterError(f"{field}: {pattern!r} is not a valid glob: {why}")
        try:
            glob.translate(pattern, flags=FLAGS)
        except (ValueError, RecursionError) as exc:
            raise FilterError(f"{field}: {pattern!r} is not a valid glob: {exc}") from None
    return globs


def _unbalanced(pattern: str) -> str:
    """What Go's doublestar (Cloud Build's matcher) refuses and wcmatch would read
    literally: a [ never closed, a { never closed or a } never opened."""
    depth, index = 0, 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            close = pattern.find("]", index + 2 if pattern[index + 1 : index + 2] in ("]", "!", "^") else index + 1)
            if close < 0:
                return "a [ is never closed"
            index = close
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return "a } is never opened"
        index += 1
    return "a { is never closed" if depth else ""


class Filtered(Protocol):
    """A rule's two lists, as BuildRule has them."""

    included: list[str]
    ignored: list[str]


def has_filters(rule: Filtered) -> bool:
    return bool(rule.included or rule.ignored)


def refusal(rule: Filtered, changed: Iterable[str]) -> str | None:
    """Why the rule does not build for these changed files, or None when it does.
    An empty change set builds: there is nothing to filter on."""
    changed = list(changed)
    if not changed or not has_filters(rule):
        return None
    kept = [path for path in changed if not (rule.ignored and glob.globmatch(path, rule.ignored, flags=FLAGS))]
    if not kept:
        return f"every changed file is ignored ({', '.join(rule.ignored)})"
    if rule.included and not any(glob.globmatch(path, rule.included, flags=FLAGS) for path in kept):
        return f"no changed file is included ({', '.join(rule.included)})"
    return None


@dataclass(frozen=True)
class PayloadChanges:
    files: list[str] | None  # None: the payload cannot be trusted to hold them all
    why_not: str = ""  # then, why


def from_payload(payload: dict) -> PayloadChanges:
    """The union of the commits' added/modified/removed paths, or why git must be asked."""
    commits = payload.get("commits")
    before, after = str(payload.get("before", "")), str(payload.get("after", ""))
    if payload.get("forced"):
        return PayloadChanges(None, "a forced push")
    if payload.get("created") or before == _NO_COMMIT:
        return PayloadChanges(None, "a new branch or tag")
    if not isinstance(commits, list) or not commits:
        return PayloadChanges(None, "the payload lists no commits")
    if len(commits) >= GITHUB_COMMITS_CAP:
        return PayloadChanges(None, f"the payload lists {len(commits)} commits, GitHub's cap")
    last = commits[-1]
    if not isinstance(last, dict) or last.get("id") != after:
        return PayloadChanges(None, "the payload's commits do not end at the pushed head")
    files: set[str] = set()
    for commit in commits:
        for key in ("added", "modified", "removed"):
            paths = commit.get(key) if isinstance(commit, dict) else None
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                return PayloadChanges(None, f"a commit's {key} is not a list of paths")
            files.update(paths)
    return PayloadChanges(sorted(files))
