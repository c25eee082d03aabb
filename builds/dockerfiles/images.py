"""The images a Dockerfile reads: `FROM`, `COPY --from=` and `RUN
--mount=...,from=`, its ARGs before the first FROM filled in as BuildKit does
(the build's args over their defaults). No Django here.

Why the farm reads them itself, besides the registry's own refusal: a daemon
builds from an image it already holds without asking any registry (BuildKit
prefers a local image to a pull), and one daemon holds the images of every
team that built there. So a build may name another team's image only if the
registry would have let it pull it (builds/image_access.py).
"""

from __future__ import annotations

import re

from builds.dockerfiles.text import instructions

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def referenced_images(text: str | bytes, buildargs: dict[str, str] | None = None) -> list[str]:
    """The image references the Dockerfile pulls, in order, each once (stages it
    names by their `AS` name or index are not images; `scratch` is none). Read
    with the engine's own splitting (builds/dockerfiles/text.py: line breaks,
    continuations, the escape directive), so no instruction hides from it;
    DockerfileError where the engine's parser would refuse the text."""
    buildargs = buildargs or {}
    values: dict[str, str] = {}
    stages: set[str] = set()  # names and indexes of the stages so far
    images: list[str] = []
    seen_from = 0
    for instruction in instructions(text):
        words = instruction.args.split()
        if instruction.keyword == "ARG" and not seen_from:
            for word in words:
                name, has_default, default = word.partition("=")
                values[name] = buildargs.get(name, default.strip("\"'") if has_default else "")
        elif instruction.keyword == "FROM":
            if words:
                _add(images, _expand(words[0], values), stages)
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            stages.add(str(seen_from))
            seen_from += 1
        elif instruction.keyword in ("COPY", "ADD"):
            for flag in instruction.flags:
                if flag.lower().startswith("--from="):
                    _add(images, _expand(flag.split("=", 1)[1], values), stages)
        elif instruction.keyword == "RUN":
            for flag in instruction.flags:
                if flag.lower().startswith("--mount="):
                    options = dict(o.partition("=")[::2] for o in flag.split("=", 1)[1].split(","))
                    if options.get("from"):
                        _add(images, _expand(options["from"], values), stages)
    return images


def _expand(word: str, values: dict[str, str]) -> str:
    """$NAME, ${NAME}, ${NAME:-default} and ${NAME:+alternative}, as BuildKit reads them."""

    def value(match: re.Match) -> str:
        name, operator, operand, bare = match.groups()
        found = values.get(name or bare, "")
        if operator == "-":
            return found or operand
        if operator == "+":
            return operand if found else ""
        return found

    return _VARIABLE.sub(value, word.strip("\"'"))


def _add(images: list[str], reference: str, stages: set[str]) -> None:
    if reference and reference.lower() not in stages and reference != "scratch" and reference not in images:
        images.append(reference)
