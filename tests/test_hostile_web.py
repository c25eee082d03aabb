"""The web tier as `make up` runs it (generator_site.serve, daphne, production
settings: no GENERATOR_DEBUG) under hostile request heads and paths.

Every refusal is an answer the client can read: a URL over
GENERATOR_MAX_URL_BYTES is a 414 and headers over GENERATOR_MAX_HEADER_BYTES a
431, in the endpoint's format; far past them daphne's own channel still answers
414/431 in plain text (before, a long URL got no answer at all). Unknown pages
are short pages, never Django's technical one; an unknown WebSocket path closes
with 4404 and leaves no traceback in the log. Then, in process: the error
answers' formats by endpoint.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from lib.http_errors import error_body
from scripts import localfarm as lf
from tests.conftest import ROOT

URL_LIMIT, HEADER_LIMIT = 16 * 1024, 32 * 1024  # the defaults


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_url):
    """One daphne through the real launcher, with the shipped conf/runtime.conf
    (runmode = dev) and no GENERATOR_DEBUG: what `make up` runs."""
    folder = tmp_path_factory.mktemp("web")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENERATOR_") or k == "GENERATOR_SECRET_KEY"}
    env.update(
        GENERATOR_VAR_DIR=str(folder),
        # No request here needs a database: none may touch a real one.
        DATABASE_URL=f"sqlite:///{folder / 'unused.sqlite3'}",
        REDIS_URL=redis_url,
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    port = lf.free_port()
    log = folder / "web.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "generator_site.serve", "--port", str(port), "--processes", "1"],
            cwd=ROOT,
            env=env,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    try:
        lf.wait_until(lambda: answers(port), timeout=30, what="the web tier")
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a GET sent as is, however long."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.putrequest("GET", path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def one_line(body: str) -> str:
    assert body.endswith("\n") and body.count("\n") == 1 and len(body) < 400, body
    return body


def test_a_20_kb_url_is_414_in_each_endpoints_format(web):
    port, _ = web
    pad = "A" * 20_000
    status, content_type, body = request(port, f"/b1/build?imagename=a/b&dockerfile={pad}")
    assert (status, content_type) == (414, "text/plain; charset=utf-8")
    assert f"over this farm's {URL_LIMIT}-byte limit" in one_line(body) and "POST" in body

    status, content_type, body = request(port, f"/api/v1/builds/?image={pad}")
    assert (status, content_type) == (414, "application/json")
    assert "byte limit" in json.loads(body)["detail"]

    status, content_type, body = request(port, f"/builds/?image={pad}")
    assert (status, content_type) == (414, "text/html; charset=utf-8")
    assert "414 URI Too Long" in body and len(body) < 2000


def test_a_url_just_under_the_limit_is_served(web):
    port, _ = web
    path = "/healthz?pad="
    status, _, body = request(port, path + "A" * (URL_LIMIT - len(path)))
    assert (status, body) == (200, "ok\n")


def test_headers_over_the_limit_are_431(web):
    port, _ = web
    status, content_type, body = request(port, "/b1/build", {"X-Junk": "j" * 40_000})
    assert (status, content_type) == (431, "text/plain; charset=utf-8")
    assert f"over this farm's {HEADER_LIMIT}-byte limit" in one_line(body)


def test_far_past_the_limits_daphne_itself_answers_414_and_431(web):
    port, _ = web
    status, content_type, body = request(port, "/b1/build?dockerfile=" + "A" * 300_000)
    assert (status, content_type) == (414, "text/plain; charset=utf-8")
    assert "request line is over" in one_line(body)

    status, _, body = request(port, "/b1/build", {"X-Junk": "j" * 300_000})
    assert status == 431 and "header line is over" in one_line(body)

    many = {f"X-Junk-{i}": "j" * 10_000 for i in range(30)}  # each line fine, 300 KB in all
    status, _, body = request(port, "/b1/build", many)
    assert status == 431 and "request head is over" in one_line(body)
    assert answers(port)  # and the process goes on serving


def test_production_settings_never_show_the_technical_page(web):
    port, _ = web
    status, content_type, body = request(port, "/no/such/page")
    assert (status, content_type) == (404, "text/html; charset=utf-8")
    assert "404 Not Found" in body and "URLconf" not in body and len(body) < 2000
    status, content_type, body = request(port, "/api/v1/no/such/thing/")
    assert (status, content_type, json.loads(body)) == (404, "application/json", {"detail": "nothing here"})
    status, _, body = request(port, "/healthz", {"Host": "evil.example"})
    assert status == 400 and "Host header" in body and "ALLOWED_HOSTS" not in body


def test_an_unknown_websocket_path_closes_with_4404_and_no_traceback(web):
    port, log = web
    before = log.stat().st_size
    with connect(f"ws://127.0.0.1:{port}/ws/nothing") as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "error", "message": "no WebSocket at /ws/nothing"}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 4404
    text = log.read_bytes()[before:].decode()
    assert "WSCONNECT /ws/nothing" in text
    assert "Traceback" not in text and "No route found" not in text, text[-3000:]


def test_a_websocket_handshake_over_the_url_limit_is_refused(web):
    port, _ = web
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{port}/b1/build/log/ws/x?pad={'A' * 20_000}", open_timeout=10)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/webhooks/github/", "application/json"),
        ("/api/v1/builds/", "application/json"),
        ("/b1/build", "text/plain; charset=utf-8"),
        ("/builds/", "text/html; charset=utf-8"),
        ("/admin/", "text/html; charset=utf-8"),
    ],
)
def test_a_500_takes_each_endpoints_format_with_its_error_id(path, content_type):
    content_type_given, body = error_body(path, 500, "internal error", "0123abcd0123abcd")
    assert content_type_given == content_type
    text = body.decode()
    assert "0123abcd0123abcd" in text and len(text) < 1000
    if content_type == "application/json":
        assert json.loads(text) == {"detail": "internal error", "error_id": "0123abcd0123abcd"}
    elif content_type.startswith("text/plain"):
        assert text == "internal error (error id 0123abcd0123abcd)\n"
    else:
        assert "<h1>500 Internal Server Error</h1>" in text


def test_a_failed_csrf_check_is_a_short_page_of_the_site(db):
    response = Client(enforce_csrf_checks=True).post("/accounts/login/", {"username": "a", "password": "b"})
    assert response.status_code == 403
    assert b"<h1>403 Forbidden</h1>" in response.content and b"CSRF check failed" in response.content
    assert len(response.content) < 2000
