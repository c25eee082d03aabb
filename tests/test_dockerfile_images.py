"""builds/dockerfile_images.py: the images a Dockerfile pulls, as BuildKit reads them."""

from __future__ import annotations

from builds.dockerfile_images import referenced_images

DOCKERFILE = """\
# a comment naming FROM evil/image
ARG BASE=r.io/team-a/base
ARG TAG
ARG FALLBACK
FROM ${BASE}:${TAG:-1} AS build
RUN --mount=type=bind,from=r.io/team-a/tools,target=/t \\
    --mount=type=cache,target=/c true
FROM --platform=linux/arm64 ${FALLBACK:-r.io/team-a/fallback}
COPY --from=build /a /a
COPY --from=0 /b /b
copy --from=r.io/team-a/assets:2 /c /c
FROM scratch
"""


def test_it_finds_from_copy_from_and_mount_from_images_with_args_filled_in():
    assert referenced_images(DOCKERFILE) == [
        "r.io/team-a/base:1",
        "r.io/team-a/tools",
        "r.io/team-a/fallback",
        "r.io/team-a/assets:2",
    ]


def test_build_args_win_over_defaults():
    found = referenced_images(DOCKERFILE, {"BASE": "r.io/team-b/base", "TAG": "7", "FALLBACK": "other/x"})
    assert found[0] == "r.io/team-b/base:7" and "other/x" in found
