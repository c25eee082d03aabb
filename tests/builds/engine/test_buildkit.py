"""The BuildKit client (builds/engine/buildkit.py): which docker CLI drives BuildKit on
these machines, and what it is given. Building through it on a real daemon is in
tests/farm/test_buildkit_builds.py."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from builds.engine.buildkit import (
    DEBIAN_CLI,
    BuildKitClient,
    BuildKitRequest,
    BuildKitSession,
    DaemonAddress,
    NoBuildKitClient,
    _Gzipped,
    _starts_with_extension_header,
    dying_with_parent,
    find_client,
    unsupported_features,
)


def test_the_debian_cli_with_its_embedded_buildkit_is_found_not_the_one_first_in_path():
    client = find_client()
    assert client.path == DEBIAN_CLI and client.kind == "embedded" and client.version.startswith("20.10")
    on_path = shutil.which("docker")
    if on_path and on_path != DEBIAN_CLI:  # these machines: docker 28 without buildx first in PATH
        with pytest.raises(NoBuildKitClient, match="GENERATOR_DOCKER_CLI"):
            find_client(on_path)


def test_a_configured_path_that_is_no_docker_cli_is_refused(tmp_path):
    with pytest.raises(NoBuildKitClient, match=str(tmp_path / "nothing")):
        find_client(str(tmp_path / "nothing"))


def test_a_dockerfile_on_stdin_is_given_no_file_option():
    session = BuildKitSession(BuildKitClient(DEBIAN_CLI, "embedded", "20.10.24"), DaemonAddress("unix:///d.sock"))
    argv = session._argv(BuildKitRequest(tag="localhost:5000/team/app:1", dockerfile=""), Path("/tmp/iid"))
    assert "--file" not in argv and argv[-1] == "-"  # the CLI takes stdin for the Dockerfile, with no context


def test_the_cli_is_given_the_daemon_the_options_and_no_environment_of_the_worker(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://attacker.example:2375")
    session = BuildKitSession(
        BuildKitClient(DEBIAN_CLI, "embedded", "20.10.24"),
        DaemonAddress("tcp://10.0.0.5:2376", "/tls/ca.pem", "/tls/cert.pem", "/tls/key.pem"),
    )
    request = BuildKitRequest(
        tag="localhost:5000/team/app:1",
        dockerfile="build/Dockerfile",
        buildargs={"VERSION": "1"},
        labels={"team": "a"},
        target="release",
        network="none",
        secrets={"npmrc": "/run/secrets/x"},
        cache_from=["localhost:5000/team/app:latest"],
        nocache=True,
        cache_namespace="abc123",
    )
    argv = session._argv(request, Path("/tmp/iid"))
    assert argv[:7] == [
        DEBIAN_CLI,
        "--host",
        "tcp://10.0.0.5:2376",
        "--tlsverify",
        "--tlscacert=/tls/ca.pem",
        "--tlscert=/tls/cert.pem",
        "--tlskey=/tls/key.pem",
    ]
    joined = " ".join(argv)
    for part in [
        "build --progress=plain --iidfile /tmp/iid --tag localhost:5000/team/app:1 --file build/Dockerfile",
        "--build-arg VERSION=1",
        "--label team=a",
        "--build-arg BUILDKIT_INLINE_CACHE=1",
        "--cache-from localhost:5000/team/app:latest",
        "--secret id=npmrc,src=/run/secrets/x",
        "--no-cache",
        "--target release",
        "--network none",
    ]:
        assert part in joined
    assert argv[-1] == "-"
    namespace = argv.index("BUILDKIT_CACHE_MOUNT_NS=abc123")
    assert namespace > argv.index("VERSION=1")  # after the build's own args: it wins
    env = session._env()
    assert env["DOCKER_BUILDKIT"] == "1" and "DOCKER_HOST" not in env


@pytest.mark.parametrize(
    ("dockerfile", "refused"),
    [
        ("FROM busybox\nRUN <<EOF\necho hi\nEOF\n", "line 2 uses a heredoc"),
        ("FROM busybox\nCOPY <<-'END' /x\nhi\nEND\n", "line 2 uses a heredoc"),
        ("FROM busybox\nRUN cat <<< word && echo done\n", None),
    ],
)
def test_heredocs_are_refused_at_once_naming_the_feature(dockerfile, refused):
    reason = unsupported_features(dockerfile)
    assert (reason is None) if refused is None else (refused in reason and "frontend 1.4" in reason)


@pytest.mark.parametrize(
    "dockerfile",
    [
        "# syntax=docker/dockerfile:1.4\nFROM busybox\n",
        "#\tsyntax = registry.example/frontend@sha256:abc\nFROM busybox\n",
        "# escape=`\n# SYNTAX=docker/dockerfile:1\nFROM busybox\n",
    ],
)
def test_another_frontend_is_refused_wherever_buildkit_would_read_the_directive(dockerfile):
    assert "another frontend" in unsupported_features(dockerfile)


# Every character Python's str.splitlines() breaks on and Go's bufio.ScanLines does not.
PYTHON_ONLY_LINE_BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("line_break", PYTHON_ONLY_LINE_BREAKS)
def test_a_line_break_go_does_not_know_does_not_end_the_directives(line_break):
    # Issue 22: `# a=b\rx` is one directive line to BuildKit, so the syntax line after it is read.
    assert "another frontend" in unsupported_features(f"# a=b{line_break}x\n# syntax=evil/frontend\nFROM busybox\n")


def test_a_directive_is_read_from_the_bytes_as_buildkit_reads_them():
    assert "another frontend" in unsupported_features(b"# a=\xff\xfe\r\n# syntax=evil\nFROM busybox\n")
    # What BuildKit does not take as a directive is no frontend either: a BOM, a leading space.
    assert unsupported_features("\ufeff# syntax=evil\nFROM busybox\n") is None
    assert unsupported_features(" # syntax=evil\nFROM busybox\n") is None


def test_what_buildkits_parser_refuses_is_refused_at_once():
    assert "only one escape parser directive" in unsupported_features("# escape=`\n# escape=`\nFROM busybox\n")


def test_a_heredoc_behind_a_line_continuation_is_found():
    reason = unsupported_features("FROM busybox\nRUN \\\n  # note\n  cat <<EOF\nhi\nEOF\n")
    assert "line 2 uses a heredoc" in reason


def test_a_syntax_comment_after_the_directives_is_only_a_comment():
    assert unsupported_features("FROM busybox\n# syntax=docker/dockerfile:1\nRUN true\n") is None


def test_buildkit_build_args_are_the_farms():
    reason = unsupported_features("FROM busybox\n", {"BUILDKIT_SYNTAX": "x", "buildkit_cache_mount_ns": "y", "V": "1"})
    assert "BUILDKIT_SYNTAX" in reason and "buildkit_cache_mount_ns" in reason


def tar_of(names: list[str], *, fmt=tarfile.USTAR_FORMAT, mtime: float = 1700000000) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 2, mtime
            tar.addfile(info, io.BytesIO(b"hi"))
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    ("context", "extended"),
    [
        (tar_of(["Dockerfile"]), False),
        (tar_of(["Dockerfile"], fmt=tarfile.PAX_FORMAT), False),  # PAX without a reason for a header
        (tar_of(["Dockerfile"], fmt=tarfile.PAX_FORMAT, mtime=1700000000.5), True),  # Python's tar.add
        (tar_of(["d" * 120 + "/Dockerfile"], fmt=tarfile.GNU_FORMAT), True),  # a GNU long name
        (
            io.BytesIO(gzip.compress(tar_of(["ö" * 200], fmt=tarfile.PAX_FORMAT).getvalue())),
            False,
        ),  # gzip: the CLI knows its magic
    ],
)
def test_a_context_the_cli_would_take_for_a_dockerfile_is_recognised(context, extended):
    # The docker CLI reads 1 KiB of stdin to tell a tar from a Dockerfile: an
    # extension header before the first member hides the tar header from it.
    assert _starts_with_extension_header(context) is extended
    assert context.tell() == 0


def test_such_a_context_reaches_the_cli_gzipped_whole():
    raw = tar_of(["x" * 150 + str(n) for n in range(50)], fmt=tarfile.PAX_FORMAT)
    gzipped = _Gzipped(raw)
    chunks = iter(lambda: gzipped.read(1000), b"")
    assert gzip.decompress(b"".join(chunks)) == raw.getvalue()


@pytest.mark.parametrize(
    "theirs, sent",
    [({}, "NO_PROXY=generator-x.invalid"), ({"NO_PROXY": "corp.example"}, "NO_PROXY=corp.example,generator-x.invalid")],
)
def test_the_step_marker_goes_last_in_no_proxy_after_the_builds_own(theirs, sent):
    session = BuildKitSession(BuildKitClient(DEBIAN_CLI, "embedded", "20.10.24"), DaemonAddress("unix:///d.sock"))
    request = BuildKitRequest(tag="localhost:5000/team/app:1", buildargs=theirs, step_marker="generator-x.invalid")
    argv = session._argv(request, Path("/tmp/iid"))
    no_proxy = [argv[i + 1] for i, part in enumerate(argv) if part == "--build-arg" and "PROXY=" in argv[i + 1]]
    assert no_proxy[-1] == sent  # the last of a name wins
    assert not any("generator-" in part for part in session._argv(BuildKitRequest(tag="t"), Path("/tmp/iid")))


# A "worker" that starts `sleep` as the CLI is started, from a thread that then ends; it says the pid,
# and lives on until told.
_WORKER = """
import os, subprocess, sys, threading, time
import builds.engine.buildkit as buildkit
buildkit.SETPRIV = sys.argv[1]
def start():
    argv, preexec = buildkit.dying_with_parent(["sleep", "60"])
    pid = subprocess.Popen(argv, preexec_fn=preexec).pid
    # As a build's thread does, reading the CLI's output: it ends after the CLI runs (setpriv is done then).
    while not open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep"):
        time.sleep(0.01)
    print(pid, flush=True)
thread = threading.Thread(target=start)
thread.start()
thread.join()
sys.stdin.readline()
os._exit(0)
"""


@pytest.mark.parametrize("setpriv", ["/usr/bin/setpriv", "/nonexistent/setpriv"], ids=["setpriv", "preexec_fn"])
def test_the_cli_is_killed_when_the_thread_that_started_it_ends(setpriv):
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, setpriv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    pid = int(worker.stdout.readline())
    try:
        # The thread that started it has ended already: the signal came then (the parent is gone or reaping).
        assert _gone_within(pid, 5), "the CLI outlived the thread that started it"
    finally:
        worker.communicate("\n", timeout=10)


def test_setpriv_starts_the_cli_without_a_preexec_fn():
    argv, preexec = dying_with_parent(["/usr/bin/docker", "build", "-"])
    assert argv == ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--", "/usr/bin/docker", "build", "-"]
    assert preexec is None  # so Python starts it with vfork, not a fork of the whole worker


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # killed, waiting for its parent to reap it
            return True
        time.sleep(0.05)
    os.kill(pid, 9)
    return False
