"""Cloning over SSH with a deploy key (builds/sources/git.py), against a real sshd
serving a real bare repository on loopback (tests/ssh_server.py): the key is
the only identity offered, host keys are checked strictly, the connection is
held to the address the egress rules checked, and the key file is gone after."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builds.sources import deploy_keys
from builds.sources.git import GitSource, SourceError
from tests.builds.sources.test_git import files_in
from tests.gitrepos import Repo
from tests.ssh_server import SshServer, keygen


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    return {name: keygen(tmp_path / "keys" / name) for name in ("deploy", "stranger")}


@pytest.fixture
def sshd(tmp_path, keys):
    server = SshServer(tmp_path / "sshd", [keys["deploy"][1]])
    yield server
    server.close()


@pytest.fixture
def repo(tmp_path):
    repository = Repo(tmp_path / "remote", "app")
    repository.commit({"Dockerfile": "FROM busybox\n", "app.txt": "over ssh"})
    return repository


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The worker's temporary folder, where the key file lives while git runs."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def clone(url, tmp_path, *, key="", known_hosts="", allow_local=True, **options):
    src = GitSource(
        url,
        token="",
        cache_dir=tmp_path / "cache",
        allow_local=allow_local,
        ssh_key=key,
        known_hosts=known_hosts,
        **options,
    )
    sha = src.resolve("main", on_line=lambda _: None)
    return files_in(src.context(sha, "", max_bytes=10**6, on_line=lambda _: None))


def fingerprint(public: str) -> str:
    return deploy_keys.fingerprint(public)


def test_the_deploy_key_clones_and_is_the_only_key_offered(tmp_path, sshd, repo, keys, scratch):
    files = clone(sshd.url(repo.bare), tmp_path, key=keys["deploy"][0], known_hosts=sshd.known_hosts())
    assert files["app.txt"] == "over ssh"
    log = sshd.log.read_text()
    assert f"Accepted publickey for {sshd.user}" in log and fingerprint(keys["deploy"][1]) in log
    offered = [line for line in log.splitlines() if "publickey" in line and "SHA256:" in line]
    assert all(fingerprint(keys["deploy"][1]) in line for line in offered), offered
    assert list(scratch.iterdir()) == []  # the key file, the config and known_hosts are gone


def test_a_wrong_key_fails_saying_so_and_never_shows_the_key(tmp_path, sshd, repo, keys, scratch):
    stranger = keys["stranger"][0]
    with pytest.raises(SourceError, match="refused the repository's deploy key") as failure:
        clone(sshd.url(repo.bare), tmp_path, key=stranger, known_hosts=sshd.known_hosts())
    body = "".join(line for line in stranger.splitlines() if "-----" not in line)
    assert body[:16] not in str(failure.value) and "PRIVATE KEY" not in str(failure.value)
    assert f"Failed publickey for {sshd.user}" in sshd.log.read_text()
    assert list(scratch.iterdir()) == []  # removed on failure too


def test_without_a_key_the_workers_own_agent_is_not_used(tmp_path, sshd, repo, keys, monkeypatch):
    """The worker's environment has an agent holding a key the server takes: ssh must not ask it."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        added = subprocess.run(["ssh-add", str(tmp_path / "keys" / "deploy")], env={"SSH_AUTH_SOCK": str(socket_path)})
        assert added.returncode == 0
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        with pytest.raises(SourceError, match="asks for an SSH key .* the repository has no deploy key"):
            clone(sshd.url(repo.bare), tmp_path, known_hosts=sshd.known_hosts())
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert "Accepted publickey" not in sshd.log.read_text()


def test_an_unknown_host_key_is_refused_not_trusted_on_first_use(tmp_path, sshd, repo, keys):
    with pytest.raises(
        SourceError, match="no SSH host key of 127.0.0.1 is known: add it to the repository's known_hosts"
    ):
        clone(sshd.url(repo.bare), tmp_path, key=keys["deploy"][0], known_hosts=deploy_keys.GITHUB_KNOWN_HOSTS)
    assert "Accepted publickey" not in sshd.log.read_text()


def test_a_changed_host_key_is_refused(tmp_path, sshd, repo, keys):
    _, impostor = keygen(tmp_path / "impostor")
    known = f"[127.0.0.1]:{sshd.port} {impostor}\n"
    with pytest.raises(SourceError, match="is not the one in the repository's known_hosts"):
        clone(sshd.url(repo.bare), tmp_path, key=keys["deploy"][0], known_hosts=known)
    assert "Accepted publickey" not in sshd.log.read_text()


def test_an_ssh_host_on_loopback_is_refused_before_ssh_connects(tmp_path, sshd, repo, keys):
    with pytest.raises(SourceError, match=r"leads to 127\.0\.0\.1, a loopback address"):
        clone(sshd.url(repo.bare), tmp_path, key=keys["deploy"][0], known_hosts=sshd.known_hosts(), allow_local=False)
    assert sshd.connections() == 0


def test_ssh_connects_only_to_the_address_that_was_checked(tmp_path, sshd, repo, keys):
    """`repo.test` is in no DNS: ssh reaches the server only through the farm's
    own resolution, and checks its host key under the name."""
    asked = []

    def resolver(host, port):
        asked.append((host, port))
        return ["127.0.0.1"]

    files = clone(
        sshd.url(repo.bare, host="repo.test"),
        tmp_path,
        key=keys["deploy"][0],
        known_hosts=sshd.known_hosts(host="repo.test"),
        resolver=resolver,
    )
    assert files["app.txt"] == "over ssh" and asked == [("repo.test", sshd.port)]


def test_a_host_never_checked_is_refused_by_the_farms_ssh_config(tmp_path, sshd, keys):
    src = GitSource(sshd.url(tmp_path), token="", cache_dir=tmp_path, allow_local=True, ssh_key=keys["deploy"][0])
    src._pin(src.clone_url, what="the clone URL")
    with src._ssh() as env:
        command = f"{env['GIT_SSH_COMMAND']} -p {sshd.port} elsewhere.test true"
        result = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert result.returncode != 0 and "not checked against the egress rules" in result.stderr


def test_the_clone_url_scp_form_is_pinned_on_port_22(tmp_path):
    src = GitSource(
        "git@github.com:team/app.git",
        token="",
        cache_dir=tmp_path,
        allow_local=False,
        resolver=lambda host, port: ["140.82.112.3"],
        ssh_key="key",
        known_hosts=deploy_keys.GITHUB_KNOWN_HOSTS,
    )
    src._pin(src.clone_url, what="the clone URL")
    with src._ssh() as env:
        config = Path(env["GIT_SSH_COMMAND"].split("-F ", 1)[1]).read_text()
    assert "Host github.com\n  HostName 140.82.112.3\n  HostKeyAlias github.com\n" in config
    assert "StrictHostKeyChecking yes" in config and "IdentityAgent none" in config


def test_a_mirror_fetched_with_a_key_is_not_another_repositorys_without_it(tmp_path):
    with_key = GitSource("git@github.com:a/b.git", token="", cache_dir=tmp_path, allow_local=False, ssh_key="k")
    without = GitSource("git@github.com:a/b.git", token="", cache_dir=tmp_path, allow_local=False)
    assert with_key.mirror != without.mirror
