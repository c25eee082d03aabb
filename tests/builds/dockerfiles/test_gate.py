"""The Dockerfile gate at submission (issue 22): the farm reads the file the engine
will read, as BuildKit reads it, and refuses with a 400 what it cannot read or
will not build with BuildKit. The same on the real farm: tests/farm/test_dockerfile_gate.py."""

from __future__ import annotations

import base64
import io
import tarfile

import pytest
from rest_framework.test import APIClient

from builds.models import BuildJob

EVIL = "# syntax=registry.example/evil-frontend\nFROM busybox\nRUN true\n"


def tar_of(*members: tuple) -> bytes:
    """(name, text) a file, (name, "->", target) a symbolic link, (name, "=>", target)
    a hard link, (name, "dir") a directory; in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *target in members:
            info = tarfile.TarInfo(name)
            if kind in ("->", "=>"):
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "->" else tarfile.LNKTYPE), target[0]
                tar.addfile(info)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = kind.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def api(operator, daemon, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "contexts": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}},
    }
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return client


def upload(api, context: bytes, dockerfile_path: str = "Dockerfile", builder: str = "buildkit"):
    query = f"image=localhost:5000/team/gate&builder={builder}&dockerfile_path={dockerfile_path}"
    return api.generic("POST", f"/api/v1/builds/?{query}", context, content_type="application/x-tar")


def refused(response, *words: str) -> str:
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    assert all(word in detail for word in words), detail
    assert not BuildJob.objects.exists()
    return detail


@pytest.mark.parametrize("line_break", ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_a_syntax_directive_behind_a_line_break_go_does_not_know_is_refused(api, line_break):
    dockerfile = f"# a=b{line_break}x\n{EVIL}"
    response = api.post("/api/v1/builds/", {"image": "localhost:5000/team/gate", "dockerfile": dockerfile})
    refused(response, "another frontend", "evil-frontend")


def test_the_seed_apis_dockerfile_mode_is_gated_the_same(client, operator, daemon):
    encoded = base64.b64encode(f"# a=b\x1cx\n{EVIL}".encode()).decode()
    response = client.get(
        "/b1/build",
        {"imagename": "localhost:5000/team/gate", "mode": "dockerfile", "context": encoded},
        headers={"Authorization": f"Token {operator.api_token}"},
    )
    assert response.status_code == 400 and "another frontend" in response.content.decode()


def test_a_dockerfile_under_a_dot_directory_is_the_one_read(api):
    # lstrip("./") read "ci/Dockerfile", which here does not exist: an empty text passed.
    refused(upload(api, tar_of((".ci/Dockerfile", EVIL)), ".ci/Dockerfile"), "another frontend")
    context = tar_of((".ci/Dockerfile", EVIL), ("ci/Dockerfile", "FROM busybox\n"))
    refused(upload(api, context, ".ci/Dockerfile"), "another frontend")


@pytest.mark.parametrize(
    "members",
    [
        [("real/Dockerfile.txt", EVIL), ("Dockerfile", "->", "real/Dockerfile.txt")],
        [("x", EVIL), ("b", "->", "./x"), ("a", "->", "b"), ("Dockerfile", "->", "a")],
        [("deep/x", EVIL), ("d", "->", "deep"), ("Dockerfile", "->", "d/x")],
        [("Dockerfile", "FROM busybox\n"), ("Dockerfile", EVIL)],
        [("Dockerfile", "dir"), ("dockerfile", EVIL)],
        [("dockerfile", EVIL)],
    ],
    ids=["symlink", "chain", "linked-directory", "duplicate", "directory-then-lower-case", "lower-case"],
)
def test_a_dockerfile_found_through_links_or_later_members_is_read(api, members):
    refused(upload(api, tar_of(*members)), "another frontend")


@pytest.mark.parametrize(
    ("members", "path", "why"),
    [
        ([("Dockerfile", "FROM busybox\n")], "build/Dockerfile", "build/Dockerfile does not exist"),
        ([("a", "->", "b"), ("b", "->", "a"), ("Dockerfile", "->", "a")], "Dockerfile", "loop"),
        ([("Dockerfile", "dir"), ("Dockerfile/x", "y")], "Dockerfile", "is a directory"),
        ([("Dockerfile", "->", "nowhere")], "Dockerfile", "does not exist"),
    ],
    ids=["missing", "loop", "directory", "dangling"],
)
def test_a_dockerfile_the_farm_cannot_read_is_refused_naming_it(api, members, path, why):
    refused(upload(api, tar_of(*members), path), f"cannot read the Dockerfile {path!r}", why)


def test_unreadable_is_refused_for_the_classic_builder_too(api):
    refused(upload(api, tar_of(("Dockerfile", "->", "nowhere")), builder="classic"), "does not exist")


def test_a_link_that_climbs_out_of_the_context_is_refused_by_the_upload_check(api):
    refused(upload(api, tar_of(("x", EVIL), ("Dockerfile", "->", "../x"))), "link pointing outside it")


def test_a_hard_link_is_refused_by_the_upload_check(api):
    refused(upload(api, tar_of(("x", EVIL), ("Dockerfile", "=>", "x"))), "hard link")


def test_a_benign_symlinked_dockerfile_with_an_escape_directive_is_taken(api):
    dockerfile = "# escape=`\nFROM busybox\nRUN echo a `\n  b\n"
    response = upload(api, tar_of(("build/Dockerfile.real", dockerfile), ("Dockerfile", "->", "build/Dockerfile.real")))
    assert response.status_code == 201, response.content


def test_an_ssh_mount_no_repository_can_forward_is_refused_at_once(api):
    response = upload(api, tar_of(("Dockerfile", "FROM busybox\nRUN --mount=type=ssh true\n")))
    refused(response, "asks for an SSH agent", "registered repository")
