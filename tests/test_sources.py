"""Build contexts from git: a cached mirror, git archive, submodules."""

from __future__ import annotations

import io
import tarfile

import pytest

from builds.sources import GitSource, SourceError
from tests.gitrepos import Repo, git


def files_in(context: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path / "remote", "app")


def source(repo, tmp_path, token=""):
    return GitSource(repo.url, token=token, cache_dir=tmp_path / "cache", allow_local=True)


def test_the_context_is_the_commit_not_the_branch_head(repo, tmp_path):
    first = repo.commit({"Dockerfile": "FROM busybox\n", "app/v.txt": "1"})
    repo.commit({"app/v.txt": "2"})
    lines = []
    context = source(repo, tmp_path).context(first, "", max_bytes=10**6, on_line=lines.append)
    assert files_in(context) == {"Dockerfile": "FROM busybox\n", "app/v.txt": "1"}
    assert lines[0].startswith("[generator] Cloning")


def test_a_later_commit_is_fetched_into_the_same_mirror(repo, tmp_path):
    src = source(repo, tmp_path)
    src.context(repo.commit({"Dockerfile": "FROM busybox\n"}), "", max_bytes=10**6, on_line=lambda _: None)
    later = repo.commit({"Dockerfile": "FROM busybox\nRUN true\n"})
    lines = []
    context = src.context(later, "", max_bytes=10**6, on_line=lines.append)
    assert files_in(context)["Dockerfile"].endswith("RUN true\n")
    assert any(line.startswith("[generator] Fetching") for line in lines)
    assert len(list((tmp_path / "cache").glob("*.git"))) == 1


def test_a_context_directory_is_archived_alone(repo, tmp_path):
    sha = repo.commit({"README": "x", "docker/Dockerfile": "FROM busybox\n", "docker/etc/conf": "c"})
    context = source(repo, tmp_path).context(sha, "docker", max_bytes=10**6, on_line=lambda _: None)
    assert files_in(context) == {"Dockerfile": "FROM busybox\n", "etc/conf": "c"}


def test_a_missing_context_directory_or_commit_is_a_clear_error(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n"})
    with pytest.raises(SourceError, match="the build context 'nope' does not exist"):
        source(repo, tmp_path).context(sha, "nope", max_bytes=10**6, on_line=lambda _: None)
    with pytest.raises(SourceError, match="commit 0{40} is not in"):
        source(repo, tmp_path).context("0" * 40, "", max_bytes=10**6, on_line=lambda _: None)


def test_a_context_over_the_limit_is_refused(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n", "big": "x" * 50_000})
    with pytest.raises(SourceError, match="the limit is 10000 bytes"):
        source(repo, tmp_path).context(sha, "", max_bytes=10_000, on_line=lambda _: None)


def test_submodules_are_checked_out(repo, tmp_path):
    lib = Repo(tmp_path / "remote", "lib")
    lib.commit({"lib.txt": "from the submodule"})
    repo.commit({"Dockerfile": "FROM busybox\nCOPY vendor/lib/lib.txt /\n"})
    sha = repo.add_submodule(lib, "vendor/lib")
    files = files_in(source(repo, tmp_path).context(sha, "", max_bytes=10**6, on_line=lambda _: None))
    assert files["vendor/lib/lib.txt"] == "from the submodule"
    assert not any(".git" in name.split("/") for name in files)


def test_an_unreachable_repository_fails_without_showing_the_token(tmp_path):
    src = GitSource("https://127.0.0.1:9/private.git", token="s3cr3t-token", cache_dir=tmp_path, allow_local=False)
    with pytest.raises(SourceError) as failure:
        src.context("a" * 40, "", max_bytes=10**6, on_line=lambda _: None)
    assert "git clone failed" in str(failure.value) and "s3cr3t-token" not in str(failure.value)


def test_a_force_pushed_away_commit_is_still_found_while_the_mirror_has_it(repo, tmp_path):
    src = source(repo, tmp_path)
    old = repo.commit({"Dockerfile": "FROM busybox\n"})
    src.context(old, "", max_bytes=10**6, on_line=lambda _: None)
    git("reset", "--hard", "--quiet", "HEAD", cwd=repo.work)
    repo.commit({"Dockerfile": "FROM busybox\nRUN true\n"}, message="rewritten")
    assert files_in(src.context(old, "", max_bytes=10**6, on_line=lambda _: None))["Dockerfile"] == "FROM busybox\n"
