"""Build contexts from git: a cached mirror, git archive streamed to a file,
submodules; and the hosts git may reach, and who gets the token."""

from __future__ import annotations

import base64
import tarfile

import pytest

from builds.sources.git import GitSource, SourceError
from tests.git_http import GitHttpServer
from tests.gitrepos import Repo, git
from tests.memory import MiB, peak_growth


def files_in(context) -> dict[str, str]:
    with context, tarfile.open(fileobj=context, mode="r|") as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read().decode() for m in tar if m.isfile()}


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path / "remote", "app")


@pytest.fixture
def servers():
    running = []

    def start(root, address="127.0.0.1"):
        running.append(GitHttpServer(root, address))
        return running[-1]

    yield start
    for server in running:
        server.close()


def source(repo, tmp_path, token="", url=None, **options):
    options.setdefault("allow_local", True)
    return GitSource(url or repo.url, token=token, cache_dir=tmp_path / "cache", **options)


def context_of(src, sha, context_dir="", max_bytes=10**6):
    return src.context(sha, context_dir, max_bytes=max_bytes, on_line=lambda _: None)


def test_the_context_is_the_commit_not_the_branch_head(repo, tmp_path):
    first = repo.commit({"Dockerfile": "FROM busybox\n", "app/v.txt": "1"})
    repo.commit({"app/v.txt": "2"})
    lines = []
    context = source(repo, tmp_path).context(first, "", max_bytes=10**6, on_line=lines.append)
    assert files_in(context) == {"Dockerfile": "FROM busybox\n", "app/v.txt": "1"}
    assert lines[0].startswith("[generator] Cloning")


def test_the_context_is_an_unnamed_temporary_file_that_leaves_nothing_on_disk(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n"})
    context = context_of(source(repo, tmp_path), sha)
    assert context.tell() == 0 and context.fileno() >= 0
    assert files_in(context) == {"Dockerfile": "FROM busybox\n"}
    assert context.closed
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".git", ".lock"))) == []


def test_a_later_commit_is_fetched_into_the_same_mirror(repo, tmp_path):
    src = source(repo, tmp_path)
    context_of(src, repo.commit({"Dockerfile": "FROM busybox\n"})).close()
    later = repo.commit({"Dockerfile": "FROM busybox\nRUN true\n"})
    lines = []
    context = src.context(later, "", max_bytes=10**6, on_line=lines.append)
    assert files_in(context)["Dockerfile"].endswith("RUN true\n")
    assert any(line.startswith("[generator] Fetching") for line in lines)
    assert len(list((tmp_path / "cache").glob("*.git"))) == 1


def test_a_context_directory_is_archived_alone(repo, tmp_path):
    sha = repo.commit({"README": "x", "docker/Dockerfile": "FROM busybox\n", "docker/etc/conf": "c"})
    assert files_in(context_of(source(repo, tmp_path), sha, "docker")) == {
        "Dockerfile": "FROM busybox\n",
        "etc/conf": "c",
    }


def test_a_missing_context_directory_or_commit_is_a_clear_error(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n"})
    with pytest.raises(SourceError, match="the build context 'nope' does not exist"):
        context_of(source(repo, tmp_path), sha, "nope")
    with pytest.raises(SourceError, match="commit 0{40} is not in"):
        context_of(source(repo, tmp_path), "0" * 40)


def test_a_context_over_the_limit_is_refused(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n", "big": "x" * 50_000})
    with pytest.raises(SourceError, match="the limit is 10000 bytes"):
        context_of(source(repo, tmp_path), sha, max_bytes=10_000)


def test_a_large_context_streams_to_disk_in_bounded_memory_and_stops_at_the_limit(repo, tmp_path):
    sha = repo.commit({"Dockerfile": "FROM busybox\n", "zeros": "\0" * (96 * MiB)})
    src = source(repo, tmp_path)
    context_of(src, sha, max_bytes=200 * MiB).close()  # the mirror is cloned: git's own memory is not ours

    context, growth = peak_growth(lambda: context_of(src, sha, max_bytes=200 * MiB))
    with context:
        assert context.seek(0, 2) > 96 * MiB
    assert growth < 16 * MiB, f"the test process grew {growth / MiB:.0f} MiB for a 96 MiB context"

    def refused():
        with pytest.raises(SourceError, match=f"the limit is {32 * MiB} bytes"):
            context_of(src, sha, max_bytes=32 * MiB)

    _, growth = peak_growth(refused)
    assert growth < 16 * MiB


def test_submodules_are_checked_out(repo, tmp_path):
    lib = Repo(tmp_path / "remote", "lib")
    lib.commit({"lib.txt": "from the submodule"})
    repo.commit({"Dockerfile": "FROM busybox\nCOPY vendor/lib/lib.txt /\n"})
    sha = repo.add_submodule(lib, "vendor/lib")
    files = files_in(context_of(source(repo, tmp_path), sha))
    assert files["vendor/lib/lib.txt"] == "from the submodule"
    assert not any(".git" in name.split("/") for name in files)


def test_an_unreachable_repository_fails_without_showing_the_token(tmp_path):
    src = GitSource("https://127.0.0.1:9/private.git", token="s3cr3t-token", cache_dir=tmp_path, allow_local=True)
    with pytest.raises(SourceError) as failure:
        src.context("a" * 40, "", max_bytes=10**6, on_line=lambda _: None)
    assert "git clone failed" in str(failure.value) and "s3cr3t-token" not in str(failure.value)


def test_a_force_pushed_away_commit_is_still_found_while_the_mirror_has_it(repo, tmp_path):
    src = source(repo, tmp_path)
    old = repo.commit({"Dockerfile": "FROM busybox\n"})
    context_of(src, old).close()
    git("reset", "--hard", "--quiet", "HEAD", cwd=repo.work)
    repo.commit({"Dockerfile": "FROM busybox\nRUN true\n"}, message="rewritten")
    assert files_in(context_of(src, old))["Dockerfile"] == "FROM busybox\n"


# --- where git may connect, and who gets the token -------------------------------


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def test_the_token_goes_to_the_repositorys_host_and_never_to_a_submodule_host(tmp_path, servers):
    lib = Repo(tmp_path / "lib-host", "lib")
    lib.commit({"lib.txt": "public library"})
    app = Repo(tmp_path / "app-host", "app")
    app_host, lib_host = servers(tmp_path / "app-host", "127.0.0.1"), servers(tmp_path / "lib-host", "127.0.0.2")
    app.commit({"Dockerfile": "FROM busybox\n"})
    git("submodule", "add", "--quiet", lib_host.url("lib.git"), "vendor/lib", cwd=app.work)
    git("commit", "--quiet", "-m", "add lib", cwd=app.work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=app.work)
    sha = git("rev-parse", "HEAD", cwd=app.work)
    lib_host.requests.clear()

    src = GitSource(app_host.url("app.git"), token="s3cr3t", cache_dir=tmp_path / "cache", allow_local=True)
    assert files_in(context_of(src, sha))["vendor/lib/lib.txt"] == "public library"

    assert app_host.requests and all(r.get("authorization") == basic("s3cr3t") for r in app_host.requests)
    assert lib_host.requests, "the submodule was not fetched from its own host"
    assert not [r for r in lib_host.requests if "authorization" in r]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:{port}/app.git", "127.0.0.1, a loopback address"),
        ("http://localhost:{port}/app.git", "(127.0.0.1|::1), a loopback address"),
        ("http://2130706433:{port}/app.git", "127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/app.git", "169.254.169.254, a link-local address"),
        ("https://10.1.2.3/team/app.git", "10.1.2.3, a private address"),
        ("git@192.168.1.20:team/app.git", "192.168.1.20, a private address"),
    ],
)
def test_a_clone_host_on_a_refused_address_is_refused_before_git_connects(tmp_path, servers, url, why):
    Repo(tmp_path / "host", "app").commit({"Dockerfile": "FROM busybox\n"})
    server = servers(tmp_path / "host")
    src = GitSource(url.format(port=server.port), token="ghp_t0ken", cache_dir=tmp_path / "cache", allow_local=False)
    with pytest.raises(SourceError, match=f"the clone URL .* leads to {why}") as failure:
        context_of(src, "a" * 40)
    assert "GENERATOR_ALLOW_LOCAL_REPOSITORIES" in str(failure.value)
    assert server.requests == []


def test_a_name_that_resolves_to_a_private_address_is_refused(tmp_path):
    src = GitSource(
        "https://git.internal.test/team/app.git",
        token="",
        cache_dir=tmp_path,
        allow_local=False,
        resolver=lambda host, port: ["203.0.113.9" if host == "elsewhere.test" else "10.0.0.7"],
    )
    with pytest.raises(SourceError, match="leads to 10.0.0.7, a private address"):
        src.resolve("main", on_line=lambda _: None)


def test_git_connects_only_to_the_address_that_was_checked(tmp_path, servers):
    """`repo.test` is in no DNS: the clone reaches the server only through the
    pinned answer of the farm's own resolution."""
    Repo(tmp_path / "host", "app").commit({"Dockerfile": "FROM busybox\n"})
    server = servers(tmp_path / "host", "127.0.0.2")
    asked = []

    def resolver(host, port):
        asked.append((host, port))
        return ["127.0.0.2"]

    src = GitSource(
        server.url("app.git", host="repo.test"), token="", cache_dir=tmp_path / "c", allow_local=True, resolver=resolver
    )
    sha = src.resolve("main", on_line=lambda _: None)
    assert files_in(context_of(src, sha)) == {"Dockerfile": "FROM busybox\n"}
    assert asked == [("repo.test", server.port)]  # once per job, when git first connects
    assert {r["host"] for r in server.requests} == {f"repo.test:{server.port}"}


def test_a_submodule_on_a_refused_address_is_refused_before_git_connects(repo, tmp_path, servers):
    Repo(tmp_path / "lib-host", "lib").commit({"lib.txt": "x"})
    lib_host = servers(tmp_path / "lib-host", "127.0.0.2")
    repo.commit({"Dockerfile": "FROM busybox\n"})
    git("submodule", "add", "--quiet", lib_host.url("lib.git"), "vendor/lib", cwd=repo.work)
    git("commit", "--quiet", "-m", "add lib", cwd=repo.work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=repo.work)
    sha = git("rev-parse", "HEAD", cwd=repo.work)
    lib_host.requests.clear()
    # The repository itself is a local folder (file://), which needs no host check.
    src = GitSource(repo.url, token="", cache_dir=tmp_path / "cache", allow_local=False)
    with pytest.raises(SourceError, match=r"the submodule URL http://127\.0\.0\.2:\d+/lib\.git leads to 127\.0\.0\.2"):
        context_of(src, sha)
    assert lib_host.requests == []
