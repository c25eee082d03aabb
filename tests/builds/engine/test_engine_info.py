"""`GET /info` asked in the background while the worker makes the build's source and cgroup."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time

import pytest

from builds.engine.docker import DaemonUnavailable, EngineSession


class _InfoHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in for a daemon's API: `/info` answers after 0.3 s, as a busy daemon does."""

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        time.sleep(0.3)
        body = json.dumps({"DockerRootDir": "/var/lib/docker", "ID": "x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_daemon(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = socketserver.ThreadingUnixStreamServer(path, _InfoHandler)
    server.asked = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, server.asked
    server.shutdown()
    server.server_close()


def session(path: str) -> EngineSession:
    return EngineSession(f"unix://{path}", api_version="1.41", timeout=5)


def test_info_asked_now_is_taken_later_without_asking_again(slow_daemon):
    path, asked = slow_daemon
    with session(path) as engine:
        started = time.monotonic()
        engine.ask_info_now()
        assert time.monotonic() - started < 0.2  # the caller goes on meanwhile
        time.sleep(0.2)  # the caller's own work, overlapping the answer
        assert engine.info()["DockerRootDir"] == "/var/lib/docker"
        assert engine.info()["ID"] == "x"
    assert [p.rsplit("/", 1)[-1] for p in asked] == ["info"]


def test_a_daemon_that_is_not_there_is_said_when_info_is_taken(tmp_path):
    with session(str(tmp_path / "nothing.sock")) as engine:
        engine.ask_info_now()
        with pytest.raises(DaemonUnavailable, match="cannot ask the Docker daemon"):
            engine.info()
