"""The Dockerfile gate on the real farm (issue 22): every way that got a `# syntax=`
line past the farm's reading, while BuildKit went to fetch the named frontend
image, is now a 400 through the real API naming the reason (a failed build
naming it for a repository's commit); Dockerfiles BuildKit builds as they are,
an `# escape=` directive and a symlinked Dockerfile, still build."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from builds.dockerfiles.in_context import UnreadableDockerfile, read_dockerfile
from builds.dockerfiles.text import directives
from builds.engine.buildkit import BuildKitRequest, BuildKitSession, DaemonAddress, find_client
from builds.engine.docker import BuildFailed
from builds.models import BuildJob, Repository
from tests.builds.dockerfiles.test_gate import tar_of
from tests.farm.conftest import engine, follow
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm

# A frontend image nobody can pull: on the old gate, BuildKit's log said it tried.
EVIL = "# syntax=registry.invalid/evil/frontend:1\nFROM busybox\nRUN echo forwarded\n"


def post(farm, token: str, path: str, body: bytes, content_type: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{farm.web}{path}",
        data=body,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def upload(farm, token: str, context: bytes, dockerfile_path: str = "Dockerfile") -> tuple[int, str]:
    query = urllib.parse.urlencode(
        {"image": f"{farm.registry}/gate/upload", "builder": "buildkit", "dockerfile_path": dockerfile_path}
    )
    return post(farm, token, f"/api/v1/builds/?{query}", context, "application/x-tar")


def dockerfile_build(farm, token: str, dockerfile: str) -> tuple[int, str]:
    body = {"image": f"{farm.registry}/gate/text", "builder": "buildkit", "dockerfile": dockerfile}
    return post(farm, token, "/api/v1/builds/", json.dumps(body).encode(), "application/json")


def refused(answer: tuple[int, str], *words: str) -> None:
    status, body = answer
    assert status == 400, (status, body)
    assert all(word in body for word in words), body


@pytest.mark.parametrize("line_break", ["\r", "\x1c"])
def test_a_line_break_before_the_directive_is_a_400(farm, token, line_break):
    refused(dockerfile_build(farm, token, f"# a=b{line_break}x\n{EVIL}"), "another frontend", "evil/frontend")
    # The seed's `mode=dockerfile&context=BASE64` is a Dockerfile text too.
    fields = {
        "imagename": f"{farm.registry}/gate/seed",
        "mode": "dockerfile",
        "context": base64.b64encode(f"# a=b{line_break}x\n{EVIL}".encode()).decode(),
    }
    form = urllib.parse.urlencode(fields).encode()
    refused(post(farm, token, "/b1/build", form, "application/x-www-form-urlencoded"), "another frontend")


def test_a_dockerfile_under_a_dot_directory_is_a_400(farm, token):
    refused(upload(farm, token, tar_of((".ci/Dockerfile", EVIL)), ".ci/Dockerfile"), "another frontend")


@pytest.mark.parametrize(
    "members",
    [
        [("real/Dockerfile.txt", EVIL), ("Dockerfile", "->", "real/Dockerfile.txt")],
        [("x", EVIL), ("b", "->", "./x"), ("a", "->", "b"), ("Dockerfile", "->", "a")],
        [("Dockerfile", "FROM busybox\n"), ("Dockerfile", EVIL)],
    ],
    ids=["symlink", "symlink-chain", "duplicate-member"],
)
def test_a_dockerfile_reached_through_links_or_a_later_member_is_a_400(farm, token, members):
    refused(upload(farm, token, tar_of(*members)), "another frontend")


@pytest.mark.parametrize(
    ("members", "path", "why"),
    [
        ([("evil", EVIL), ("sub/Dockerfile", "->", "../../evil")], "sub/Dockerfile", "link pointing outside it"),
        ([("evil", EVIL), ("Dockerfile", "=>", "evil")], "Dockerfile", "hard link"),
        ([("a", "->", "b"), ("b", "->", "a"), ("Dockerfile", "->", "a")], "Dockerfile", "links loop"),
        ([("Dockerfile", "->", "missing")], "Dockerfile", "does not exist"),
        ([("Dockerfile", "FROM busybox\n")], ".ci/Dockerfile", "does not exist"),
    ],
    ids=["escaping-symlink", "hard-link", "link-loop", "dangling-link", "missing"],
)
def test_what_the_farm_cannot_read_as_the_engine_would_is_a_400(farm, token, members, path, why):
    refused(upload(farm, token, tar_of(*members), path), why)


def test_a_heredoc_is_a_400_naming_the_feature(farm, token):
    refused(dockerfile_build(farm, token, "FROM busybox\nRUN <<EOF\necho hi\nEOF\n"), "heredoc", "frontend 1.4")


def test_a_repositorys_symlinked_dockerfile_is_read_through_its_link(farm, token, tmp_path):
    source = Repo(tmp_path, "gate-repo")
    (source.work / "app").mkdir()
    os.symlink("../evil.txt", source.work / "app" / "Dockerfile")  # inside the repository, outside the context
    source.commit({"app/evil.txt": EVIL, "evil.txt": "FROM busybox\n"})
    Repository.objects.update_or_create(
        full_name="team/gate-repo",
        defaults={
            "clone_url": source.url,
            "webhook_secret": "s",
            "image": f"{farm.registry}/team/gate-repo",
            "context_dir": "app",
            "builder": "buildkit",
        },
    )
    body = {"image": f"{farm.registry}/team/gate-repo:main", "repository": "team/gate-repo", "ref": "main"}
    status, answer = post(farm, token, "/api/v1/builds/", json.dumps(body).encode(), "application/json")
    assert status == 201, answer
    job_id = json.loads(answer)["id"]
    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    # `..` is held at the context's root (app/), as the engine holds it: the link reads app/evil.txt.
    assert done.end["status"] == job.status == "failed" and "another frontend" in job.error, job.error
    assert not any(line.startswith("#") for _, line in done.lines)  # BuildKit never ran


def test_an_escape_directive_and_a_symlinked_dockerfile_still_build(farm, token):
    marker = uuid.uuid4().hex
    dockerfile = f"# escape=`\nFROM busybox\nRUN echo {marker} `\n  && echo built\n"
    context = tar_of(("build/Dockerfile.real", dockerfile), ("Dockerfile", "->", "build/Dockerfile.real"))
    status, answer = upload(farm, token, context)
    assert status == 201, answer
    job_id = json.loads(answer)["id"]
    done = follow(farm, job_id, token)
    assert done.end["status"] == "succeeded", BuildJob.objects.get(pk=job_id).error
    assert any(line.endswith(marker) for _, line in done.lines), done.lines[-20:]
    # The team's ARG (builds/worker/cache_scope.py) is in the file the engine read, through the link.
    job = BuildJob.objects.get(pk=job_id)
    history = engine(dict(farm.daemons)[job.daemon.name]).api.history(job.image_id)
    assert any("GENERATOR_TEAM_" in layer["CreatedBy"] and marker in layer["CreatedBy"] for layer in history)


# The engine itself, each case built on a farm daemon with the docker CLI (no farm
# check in between): BuildKit fetches the frontend exactly where the farm's reading
# finds a syntax directive. FROM scratch: a case without one builds (or fails on its
# own) offline.
FORWARDS = "# syntax=registry.invalid/gate/frontend:1\nFROM scratch\nLABEL gate=forwarded\n"
BENIGN = "FROM scratch\nLABEL gate=benign\n"
ENGINE_CASES = {
    "carriage-return": ([("Dockerfile", f"# a=b\rx\n{FORWARDS}")], "Dockerfile"),
    "file-separator": ([("Dockerfile", f"# a=b\x1cx\n{FORWARDS}")], "Dockerfile"),
    "line-separator": ([("Dockerfile", f"# a=b\u2028x\n{FORWARDS}")], "Dockerfile"),
    "crlf": ([("Dockerfile", FORWARDS.replace("\n", "\r\n"))], "Dockerfile"),
    "bom": ([("Dockerfile", f"\ufeff{FORWARDS}")], "Dockerfile"),
    "leading-space": ([("Dockerfile", f" {FORWARDS}")], "Dockerfile"),
    "vertical-tab": ([("Dockerfile", FORWARDS.replace("# ", "#\x0b", 1))], "Dockerfile"),
    "long-line-before": ([("Dockerfile", "#" * 70_000 + "\n" + FORWARDS)], "Dockerfile"),
    "long-line-after": ([("Dockerfile", FORWARDS + "#" * 70_000 + "\n")], "Dockerfile"),
    "dot-directory": ([(".ci/Dockerfile", FORWARDS), ("ci/Dockerfile", BENIGN)], ".ci/Dockerfile"),
    "symlink-chain": ([("x", FORWARDS), ("b", "->", "./x"), ("a", "->", "b"), ("Dockerfile", "->", "a")], "Dockerfile"),
    "link-out-held-at-root": ([("evil", FORWARDS), ("sub/Dockerfile", "->", "../../evil")], "sub/Dockerfile"),
    "duplicate": ([("Dockerfile", BENIGN), ("Dockerfile", FORWARDS)], "Dockerfile"),
    "directory-then-lower-case": ([("Dockerfile/x", BENIGN), ("dockerfile", FORWARDS)], "Dockerfile"),
    "hard-link-snapshot": ([("evil", FORWARDS), ("Dockerfile", "=>", "evil"), ("evil", BENIGN)], "Dockerfile"),
    "beneath-a-linked-directory": (
        [("sub/keep", ""), ("d", "->", "sub"), ("d/Dockerfile", FORWARDS)],
        "sub/Dockerfile",
    ),
    "link-replaces-directory": (
        [("d/Dockerfile", BENIGN), ("e/Dockerfile", FORWARDS), ("d", "->", "e")],
        "d/Dockerfile",
    ),
    "dot-dot-after-a-link": (
        [("Dockerfile", BENIGN), ("b/c/keep", ""), ("b/Dockerfile", FORWARDS), ("a", "->", "b/c")],
        "a/../Dockerfile",
    ),
    "dot-dot-through-a-missing-directory": ([("Dockerfile", FORWARDS)], "missing/../Dockerfile"),
    "escape-directive": ([("Dockerfile", "# escape=`\nFROM scratch\nLABEL a=b `\n  c=d\n")], "Dockerfile"),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_the_farm_reads_what_buildkit_reads(farm, case):
    members, path = ENGINE_CASES[case]
    context = io.BytesIO(tar_of(*members))
    try:
        predicted = "syntax" in directives(read_dockerfile(context, path, limit=1 << 20).data)
    except UnreadableDockerfile:
        predicted = False
    lines: list[str] = []
    session = BuildKitSession(find_client(), DaemonAddress(farm.daemons[0][1]))
    try:
        session.build(context, BuildKitRequest(tag=f"localhost/gate/{case}", dockerfile=path), on_line=lines.append)
        outcome = "built"
    except BuildFailed as exc:
        outcome = str(exc)
    forwarded = "registry.invalid/gate/frontend" in outcome + "\n".join(lines)
    assert forwarded == predicted, (outcome, lines[-15:])
