"""Deploy keys on the real farm: a repository registered through the REST API
with an SSH key is cloned from a real sshd (tests/ssh_server.py) by the build
worker, and, when the repository allows it, its key is in the SSH agent of
BuildKit's `RUN --mount=type=ssh` (the host's own ssh-add, run inside the build
with its libraries, lists it). Without that permission the build fails with the
farm's message; a wrong key fails saying so. The key never shows in a log line,
an error or an API answer, and no file of it is left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest

from builds.engine.buildkit import BuildKitRequest, BuildKitSession, DaemonAddress, find_client
from builds.models import BuildJob
from builds.sources import deploy_keys
from tests.farm.conftest import api_build, follow, http_get
from tests.farm.test_buildkit_builds import context
from tests.gitrepos import Repo
from tests.ssh_server import SshServer, keygen

pytestmark = pytest.mark.farm

SSH_ADD = "/usr/bin/ssh-add"


def ssh_add_bundle(folder: Path) -> None:
    """The host's ssh-add and the libraries it loads, to run in a busybox build
    through the dynamic loader (busybox has no ssh-add, and the farm pulls nothing)."""
    folder.mkdir()
    shutil.copy(SSH_ADD, folder / "ssh-add")
    listed = subprocess.run(["ldd", SSH_ADD], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            shutil.copy(path, folder / Path(path).name)


@pytest.fixture(scope="module")
def git_host(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploykeys")
    key, public = keygen(root / "deploy")
    stranger, _ = keygen(root / "stranger")
    server = SshServer(root / "sshd", [public])
    repo = Repo(root / "remote", "app")
    ssh_add_bundle(repo.work / "ssh-add")
    step = (
        "RUN --mount=type=ssh --mount=type=bind,source=ssh-add,target=/opt/ssh "
        'echo "agent at $SSH_AUTH_SOCK" && /opt/ssh/ld-linux-x86-64.so.2 --library-path /opt/ssh /opt/ssh/ssh-add -l'
    )
    # A nonce: an ssh mount is no part of the step's cache key, and the step must run each time.
    repo.commit({"Dockerfile": f"FROM busybox\n{step} # {uuid.uuid4().hex}\n"})
    yield {
        "server": server,
        "repo": repo,
        "key": key,
        "stranger": stranger,
        "fingerprint": deploy_keys.fingerprint(public),
    }
    server.close()


def register(farm, token: str, git_host, **fields) -> dict:
    body = {
        "full_name": f"team/deploykeys-{uuid.uuid4().hex[:8]}",
        "clone_url": git_host["server"].url(git_host["repo"].bare),
        "known_hosts": git_host["server"].known_hosts(),
        "webhook_secret": "hook",
        "image": f"{farm.registry}/deploykeys/app",
        "builder": "buildkit",
        **fields,
    }
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/repositories/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def build(farm, token: str, repository: dict) -> tuple[BuildJob, str]:
    job_id = api_build(
        farm,
        token,
        {"image": f"{farm.registry}/deploykeys/app:1", "repository": repository["full_name"], "ref": "main"},
    )
    done = follow(farm, job_id, token)
    return BuildJob.objects.get(pk=job_id), "\n".join(text for _, text in done.lines)


def key_body(private: str) -> str:
    return "".join(line for line in private.splitlines() if "-----" not in line)


def assert_nowhere(farm, token, job: BuildJob, log: str, private: str) -> None:
    """Not in the log, the job's error, the job's or the repository's API answers,
    nor in any file left in the workers' temporary folder."""
    body = key_body(private)
    for line in private.splitlines()[1:-1]:
        assert line not in log and line not in job.error
    answers = [http_get(f"http://{farm.web}/api/v1/builds/{job.id}/", token)[1]]
    answers.append(http_get(f"http://{farm.web}/api/v1/repositories/?page_size=500", token)[1])
    assert all(body[:24] not in answer and "PRIVATE KEY" not in answer for answer in answers)
    left = [p for p in Path(tempfile.gettempdir()).glob("build-secrets-*/*") if p.is_file()]
    assert not [p for p in left if "PRIVATE KEY" in p.read_text(errors="replace")], left


def test_a_repositorys_deploy_key_clones_it_and_is_forwarded_to_run_mount_ssh(farm, token, git_host):
    repository = register(farm, token, git_host, deploy_key=git_host["key"], forward_ssh_to_build=True)
    assert repository["deploy_key_fingerprint"] == git_host["fingerprint"] and "deploy_key" not in repository
    job, log = build(farm, token, repository)
    assert job.status == "succeeded", job.error
    assert f"[generator] Source: {git_host['server'].url(git_host['repo'].bare)} at {job.commit_sha}" in log
    server_log = git_host["server"].log.read_text()
    assert f"Accepted publickey for {git_host['server'].user}" in server_log and git_host["fingerprint"] in server_log
    assert "agent at /run/buildkit/ssh_agent." in log
    # ssh-add -l inside the build: the agent holds the deploy key, and only it.
    listed = [line for line in log.splitlines() if " SHA256:" in line and "(ED25519)" in line]
    assert len(listed) == 1 and git_host["fingerprint"] in listed[0], log
    assert_nowhere(farm, token, job, log, git_host["key"])


def test_without_the_repositorys_permission_a_run_mount_ssh_fails_with_the_farms_message(farm, token, git_host):
    repository = register(farm, token, git_host, deploy_key=git_host["key"])  # forward_ssh_to_build: off
    job, log = build(farm, token, repository)
    assert job.status == "failed"
    assert f"[generator] Source: {git_host['server'].url(git_host['repo'].bare)}" in log  # the clone did work
    assert job.error.startswith("the Dockerfile asks for an SSH agent (RUN --mount=type=ssh) and this build has none")
    assert f"repository {repository['full_name']} does not forward its deploy key" in job.error
    assert "turn on forward_ssh_to_build" in job.error
    assert_nowhere(farm, token, job, log, git_host["key"])


def test_a_wrong_deploy_key_fails_the_build_saying_so(farm, token, git_host):
    repository = register(farm, token, git_host, deploy_key=git_host["stranger"], forward_ssh_to_build=True)
    job, log = build(farm, token, repository)
    assert job.status == "failed"
    assert "refused the repository's deploy key (Permission denied)" in job.error, job.error
    assert_nowhere(farm, token, job, log, git_host["stranger"])


def test_buildkit_alone_skips_an_ssh_mount_it_has_no_agent_for(farm):
    """Why the farm says it first: without --ssh, BuildKit (20.10) runs the step
    with SSH_AUTH_SOCK set and no socket behind it, and the failure comes later
    in whatever the step's ssh or git prints."""
    session = BuildKitSession(find_client(), DaemonAddress(farm.daemons[0][1]))
    lines: list[str] = []
    step = 'RUN --mount=type=ssh echo "agent=$SSH_AUTH_SOCK" && if test -S "$SSH_AUTH_SOCK"; then echo has-a-socket; fi'
    dockerfile = f"FROM busybox\n{step} # {uuid.uuid4().hex}\n"
    request = BuildKitRequest(tag="localhost/deploykeys/noagent")
    session.build(context({"Dockerfile": dockerfile}), request, on_line=lines.append)
    assert any(line.endswith("agent=/run/buildkit/ssh_agent.0") for line in lines), lines
    assert not any(line.endswith(" has-a-socket") for line in lines), lines
