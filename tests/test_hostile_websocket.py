"""The WebSocket front door under hostile input: a browser's Origin must be the
site's own origin (scheme, host and port), and a path the farm has no consumer
for is closed cleanly (4404), with nothing in the log.

The full ASGI application runs in process with the in-memory channel layer."""

from __future__ import annotations

import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from builds.models import BuildJob
from generator_site.asgi import application
from generator_site.websocket_auth import parse_origin
from teams.models import Team

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(path: str, token: str, origin: str | None = None, host: str | None = None, scheme: str = "ws"):
    headers = [(b"authorization", f"Token {token}".encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if host is not None:
        headers.append((b"host", host.encode()))
    ws = WebsocketCommunicator(application, path, headers=headers)
    ws.scope["scheme"] = scheme
    return ws


def make_job(daemon) -> BuildJob:
    team = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]  # the reader's
    return BuildJob.objects.create(
        image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status="queued", team=team
    )


ORIGINS = [
    # GENERATOR_SITE_URL is http://localhost:8080 (the default).
    ("http://localhost:8080", None, "ws", True),
    ("http://LOCALHOST:8080", None, "ws", True),
    ("http://localhost:9999", None, "ws", False),  # another port of an allowed host
    ("https://localhost:8080", None, "ws", False),  # another scheme
    ("http://localhost", None, "ws", False),  # port 80 is another origin
    ("http://127.0.0.1:8080", None, "ws", False),
    # The host the handshake came to, with its scheme, if ALLOWED_HOSTS has it.
    ("http://127.0.0.1:8080", "127.0.0.1:8080", "ws", True),
    ("http://127.0.0.1:9999", "127.0.0.1:8080", "ws", False),
    ("https://127.0.0.1:8080", "127.0.0.1:8080", "ws", False),
    ("https://127.0.0.1", "127.0.0.1", "wss", True),
    ("http://[::1]:8080", "[::1]:8080", "ws", True),
    # A DNS-rebinding page: its Host is its own name, which ALLOWED_HOSTS lacks.
    ("http://evil.example:8080", "evil.example:8080", "ws", False),
    ("null", None, "ws", False),
    ("http://localhost:notaport", None, "ws", False),
    ("", None, "ws", False),
    # No Origin at all: not a browser; scripts and the CLI go on to authentication.
    (None, "anything.example", "ws", True),
]


async def test_a_browser_origin_must_be_the_sites_own(daemon, reader):
    job = await database_sync_to_async(make_job)(daemon)
    answers = []
    for origin, host, scheme, _ in ORIGINS:
        ws = communicator(f"/b1/build/log/ws/{job.id}", reader.api_token, origin=origin, host=host, scheme=scheme)
        connected, _ = await ws.connect()
        answers.append((origin, host, scheme, connected))
        await ws.disconnect()
    assert answers == ORIGINS


async def test_behind_a_tls_proxy_the_forwarded_scheme_counts(daemon, reader, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.GENERATOR_SITE_URL = "https://farm.example"
    settings.ALLOWED_HOSTS = ["farm.example"]
    job = await database_sync_to_async(make_job)(daemon)
    for origin, forwarded, allowed in [
        ("https://farm.example", None, True),  # the site's own origin
        ("https://farm.example", "https", True),
        ("http://farm.example", "https", False),  # a plain-HTTP page on that name
        ("https://farm.example:8443", "https", False),
    ]:
        ws = communicator(f"/b1/build/log/ws/{job.id}", reader.api_token, origin=origin, host="farm.example")
        if forwarded:
            ws.scope["headers"].append((b"x-forwarded-proto", forwarded.encode()))
        connected, _ = await ws.connect()
        assert connected is allowed, origin
        await ws.disconnect()


@pytest.mark.parametrize("path", ["/ws/nothing", "/", "/b1/build/log/ws/", "/b1/build/log/ws/a/b"])
async def test_an_unknown_path_is_closed_cleanly_with_4404(reader, path, caplog):
    ws = communicator(path, reader.api_token)
    with caplog.at_level(logging.WARNING):
        connected, _ = await ws.connect()
        assert connected
        frame = await ws.receive_json_from()
        assert frame == {"type": "error", "message": f"no WebSocket at {path}"}
        assert (await ws.receive_output())["code"] == 4404
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_origins_compare_scheme_host_and_port():
    assert parse_origin("http://Example.COM") == ("http", "example.com", 80)
    assert parse_origin("https://example.com:443/") == ("https", "example.com", 443)
    assert parse_origin("ftp://example.com") is None
    assert parse_origin("http://example.com:99999") is None
