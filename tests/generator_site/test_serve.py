"""The web tier's launcher: several daphne processes on one socket, restarted if one dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scripts import localfarm as lf

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def launcher(tmp_path):
    port = lf.free_port()
    env = {**os.environ, "GENERATOR_DEBUG": "true", "GENERATOR_VAR_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "generator_site.serve", "--port", str(port), "--processes", "2", "--", "-v", "0"],
        cwd=ROOT,
        env=env,
    )
    try:
        lf.wait_until(lambda: answers(port) and len(children_of(process.pid)) == 2, timeout=30, what="the web tier")
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_two_processes_serve_one_port_and_a_dead_one_is_replaced(launcher):
    process, port = launcher
    first, second = children_of(process.pid)
    assert all(answers(port) for _ in range(10))

    os.kill(first, signal.SIGKILL)
    lf.wait_until(
        lambda: first not in children_of(process.pid) and len(children_of(process.pid)) == 2,
        timeout=30,
        what="a new daphne",
    )
    assert second in children_of(process.pid)
    assert all(answers(port) for _ in range(10))


def test_sigterm_stops_every_process(launcher):
    process, port = launcher
    children = children_of(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not answers(port)
