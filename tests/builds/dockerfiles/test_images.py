"""builds/dockerfiles/images.py: the images a Dockerfile pulls, as BuildKit reads them."""

from __future__ import annotations

from builds.dockerfiles.images import meta_args, referenced_images, trigger_images

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


def test_the_escape_directive_and_go_line_breaks_hide_no_image():
    # With ` as the escape character the image is on the FROM's continuation line; a \x1c is
    # no line break to the engine. Both once read as something else here (issue 23).
    hidden = "# escape=`\nFROM `\n  r.io/team-a/app\nCOPY --from=r.io/team-a/x\x1cy /a /a\n"
    assert referenced_images(hidden) == ["r.io/team-a/app", "r.io/team-a/x\x1cy"]


def test_an_onbuild_trigger_reads_its_images_too():
    """A trigger runs in every build FROM the image (with that build's access): the
    image it names is read by the Dockerfile that holds it as much as by those."""
    text = (
        "ARG SECRET=r.io/team-c/secret\nFROM busybox\n"
        "ONBUILD COPY --from=${SECRET} /etc/secret /loot\n"
        "onbuild RUN --mount=type=bind,from=r.io/team-c/keys,target=/k cat /k/*\n"
        "ONBUILD COPY --from=0 /a /a\n"
    )
    assert referenced_images(text) == ["busybox", "r.io/team-c/secret", "r.io/team-c/keys"]


def test_a_base_images_triggers_are_read_with_the_building_dockerfiles_args():
    dockerfile = "ARG SRC=r.io/team-c/secret\nARG UNUSED\nFROM r.io/team-a/base\nARG LATE=r.io/team-c/late\n"
    values = meta_args(dockerfile, {"UNUSED": "x"})
    assert values == {"SRC": "r.io/team-c/secret", "UNUSED": "x"}  # not LATE: declared after the FROM
    triggers = ["COPY --from=$SRC / /loot", "RUN --mount=from=r.io/team-c/keys,target=/k true", "RUN echo hi"]
    assert trigger_images(triggers, values) == ["r.io/team-c/secret", "r.io/team-c/keys"]


def test_an_image_named_by_its_id_is_refused(database, team):
    # A daemon resolves a digest-shaped reference in its own store, where every team's images are.
    from teams.registry_access import read_refusal

    image_id = "sha256:" + "ab" * 32
    assert "names an image by its id" in read_refusal(team, image_id)
    assert "names an image by its id" in read_refusal(team, "ab" * 32)
    assert referenced_images(f"FROM {image_id}\n") == [image_id]
    assert read_refusal(team, "busybox:latest") == ""
