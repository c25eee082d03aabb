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
            _take_args(instruction, buildargs, values)
        elif instruction.keyword == "FROM":
            if words:
                _add(images, _expand(words[0], values), stages)
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            stages.add(str(seen_from))
            seen_from += 1
        elif instruction.keyword == "ONBUILD":
            # A trigger runs in every build FROM this image, with that build's access: read it now too.
            for reference in trigger_images([instruction.args], values):
                _add(images, reference, stages)
        else:
            for word in _images_read_by(instruction):
                _add(images, _expand(word, values), stages)
    return images


def meta_args(text: str | bytes, buildargs: dict[str, str] | None = None) -> dict[str, str]:
    """The ARGs before the first FROM, the build's args over their defaults: what
    BuildKit fills an image reference with."""
    buildargs, values = buildargs or {}, {}
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            _take_args(instruction, buildargs, values)
    return values


def _take_args(instruction, buildargs: dict[str, str], values: dict[str, str]) -> None:
    """An ARG line's names into `values`: the build's arg, else the line's default."""
    for word in instruction.args.split():
        name, has_default, default = word.partition("=")
        values[name] = buildargs.get(name, default.strip("\"'") if has_default else "")


def trigger_images(triggers: list[str], values: dict[str, str]) -> list[str]:
    """The images ONBUILD triggers read (`COPY --from=`, `RUN --mount=...,from=`) when a
    build runs them, `values` its meta_args: those of a base image's config
    (`OnBuild`), or of an ONBUILD line. Read as BuildKit parses a trigger: as a
    Dockerfile line of its own."""
    found: list[str] = []
    for trigger in triggers:
        for instruction in instructions(trigger):
            for word in _images_read_by(instruction):
                _add(found, _expand(word, values), set())
    return found


def _images_read_by(instruction) -> list[str]:
    """The unexpanded image words of one COPY, ADD or RUN instruction's flags."""
    words = []
    if instruction.keyword in ("COPY", "ADD"):
        words += [flag.split("=", 1)[1] for flag in instruction.flags if flag.lower().startswith("--from=")]
    elif instruction.keyword == "RUN":
        for flag in instruction.flags:
            if flag.lower().startswith("--mount="):
                options = dict(o.partition("=")[::2] for o in flag.split("=", 1)[1].split(","))
                if options.get("from"):
                    words.append(options["from"])
    return words


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
