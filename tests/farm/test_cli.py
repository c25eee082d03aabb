"""The CLI end to end against the running farm, as a person at a terminal runs it."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from builds.models import BuildJob
from teams import tokens
from teams.models import Namespace
from tests.conftest import ROOT
from tests.farm.conftest import engine, registry_digest

pytestmark = pytest.mark.farm


def cli(farm, token, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builds.cli", "--server", f"http://{farm.web}", "--token", token, *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=180,
    )


def test_submit_a_directory_streams_the_log_and_exits_0(farm, token, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nARG WHO\nCOPY . /app\nRUN echo built for $WHO && ls /app\n")
    (tmp_path / "keep.txt").write_text("kept")
    (tmp_path / "secret.env").write_text("PASSWORD=x")
    (tmp_path / ".dockerignore").write_text("*.env\n")
    image = f"{farm.registry}/cli/dir:1"
    result = cli(farm, token, "submit", str(tmp_path), "--image", image, "--tag", "latest", "--build-arg", "WHO=cli")
    assert result.returncode == 0, result.stderr
    assert "built for cli" in result.stdout and "keep.txt" in result.stdout
    assert "secret.env" not in result.stdout  # .dockerignore honoured
    assert "build succeeded" in result.stderr
    job = BuildJob.objects.get(image=image)
    assert registry_digest(farm, "cli/dir", "latest") == job.digest == registry_digest(farm, "cli/dir", "1")
    # The COPY'd files are in the image's layers, owned by root: BuildKit left them out of the layers it
    # exports (a save, a push) while it unpacked tar contexts with unremapped owners (builds/worker/cache_scope.py).
    saved = b"".join(engine(dict(farm.daemons)[job.daemon.name]).images.get(job.image_id).save())
    assert ("app/keep.txt", 0) in layer_members(saved)


def layer_members(saved: bytes) -> set[tuple[str, int]]:
    """(name, uid) of every file in the layers of `docker save`'s tar."""
    found = set()
    with tarfile.open(fileobj=io.BytesIO(saved)) as image:
        for member in image.getmembers():
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=image.extractfile(member)) as layer:
                    found |= {(m.name, m.uid) for m in layer.getmembers() if m.isfile()}
    return found


def test_a_team_token_builds_and_pushes_for_its_team(farm, token, tmp_path):
    team = Namespace.objects.owning(f"{farm.registry}/cli/team").team
    _, key = tokens.issue(team, "farm cli")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo built with a team token\n")
    image = f"{farm.registry}/cli/team:1"
    result = cli(farm, key, "submit", str(tmp_path), "--image", image)
    assert result.returncode == 0, result.stderr
    assert "built with a team token" in result.stdout  # the log, followed over the WebSocket with the key
    job = BuildJob.objects.select_related("team__token_user").get(image=image)
    assert job.team == team and job.submitted_by == job.team.token_user
    assert registry_digest(farm, "cli/team", "1") == job.digest


def test_submit_a_failing_dockerfile_exits_1(farm, token, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox\nRUN echo about to fail && exit 4\n")
    result = cli(farm, token, "submit", str(dockerfile), "--image", f"{farm.registry}/cli/broken")
    assert result.returncode == 1
    assert "about to fail" in result.stdout and "exit code: 4" in result.stderr


def test_a_bad_token_or_image_is_a_clear_error(farm, token, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    result = cli(farm, "0" * 40, "submit", str(tmp_path), "--image", "x/y")
    assert result.returncode == 2 and "the farm answered 401" in result.stderr
    result = cli(farm, token, "submit", str(tmp_path), "--image", "Bad/Image")
    assert result.returncode == 2 and "must be lowercase" in result.stderr
