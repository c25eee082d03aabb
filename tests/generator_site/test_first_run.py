"""A fresh machine's first `make up`: daemons started at once find their remap
user and its id ranges already made (scripts/localfarm.py ensure_remap_user)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts import localfarm as lf


def remove_remap_user(*, keep_user: bool = False) -> None:
    """As on a machine where no daemon ever ran with --userns-remap=default; with
    `keep_user`, as a daemon losing the race sees it: another daemon has made the
    user and not yet its ranges."""
    with open("/run/generator-remap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("subuid", "subgid"):
            path = Path("/etc") / name
            kept = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith("dockremap:")]
            path.write_text("".join(kept))
        if not keep_user:
            subprocess.run(["userdel", lf.REMAP_USER], capture_output=True)
            subprocess.run(["groupdel", lf.REMAP_USER], capture_output=True)


def start_daemons_at_once(names: list[str]) -> None:
    short = Path(tempfile.mkdtemp(prefix="gfr-", dir="/tmp"))  # exec roots hold sockets: 108 bytes at most
    sup = lf.Supervisor(short / "run")
    urls = {}
    try:
        for name in names:  # started back to back, as make up does, each told to remap
            root = short / name
            urls[name] = lf.start_dockerd(sup, name, root, root / "exec", root / "docker.sock")
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda name: lf.wait_for_dockerd(sup, name, urls[name]), names))
    finally:
        sup.stop_all()
        lf.unmount_below(short)
        shutil.rmtree(short, ignore_errors=True)


def assert_one_range_each() -> None:
    assert subprocess.run(["getent", "passwd", "dockremap"], capture_output=True).returncode == 0
    for name in ("subuid", "subgid"):
        lines = [line for line in (Path("/etc") / name).read_text().splitlines() if line.startswith("dockremap:")]
        assert len(lines) == 1, lines


def test_the_remap_range_is_the_first_free_one_from_100000():
    assert lf._first_free_id([]) == 100_000
    assert lf._first_free_id([(100_000, 65_536)]) == 165_536
    assert lf._first_free_id([(1_000, 500), (165_536, 65_536)]) == 100_000
    assert lf._first_free_id([(100_000, 65_536), (165_536, 10)]) == 165_546
    assert lf._first_free_id([(90_000, 20_000)]) == 110_000


def test_two_daemons_started_at_once_on_a_fresh_machine_both_start():
    remove_remap_user()
    start_daemons_at_once(["first-run-a", "first-run-b"])
    assert_one_range_each()


def test_a_daemon_that_finds_the_remap_user_without_its_ranges_starts():
    # dockerd makes the ranges only along with the user: a daemon that finds the
    # user made by another, a moment before that one writes the ranges, fails.
    remove_remap_user(keep_user=True)
    start_daemons_at_once(["first-run-c"])
    assert_one_range_each()


def test_make_up_refuses_at_once_without_a_cli_that_drives_buildkit(tmp_path):
    # Debian 13's docker CLI (26.1) without its docker-buildx package: no BuildKit client at all.
    cli = tmp_path / "docker"
    cli.write_text('#!/bin/sh\n[ "$1" = version ] && echo 26.1.5 && exit 0\nexit 1\n')
    cli.chmod(0o755)
    var = tmp_path / "var"
    result = subprocess.run(
        [".venv/bin/python", "scripts/farm.py", "up"],
        env={**os.environ, "GENERATOR_DOCKER_CLI": str(cli), "GENERATOR_VAR_DIR": str(var)},
        cwd=lf.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no docker CLI that drives BuildKit" in result.stderr and "buildx" in result.stderr
    assert not var.exists()  # refused before anything started
