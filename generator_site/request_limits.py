"""Bounded request heads: a URL over GENERATOR_MAX_URL_BYTES is a 414, headers
over GENERATOR_MAX_HEADER_BYTES a 431, each with a reason the client can read.

Two layers, because daphne's HTTP server (twisted) has limits of its own: past
them it dropped the connection without a word (a request line over 16 KiB) or
answered a bare 400 (16 KiB of head in all). `generator_site/daphne_process.py`
raises twisted's limits to HEAD_SLACK times ours and makes it answer 414/431
itself past them; between ours and that, the request reaches this ASGI middleware
whole, which answers in the endpoint's format (lib/http_errors.py) on an
ordinary, still-open connection.
"""

from __future__ import annotations

from django.conf import settings

from lib.http_errors import error_body

# Twisted's own ceilings, as multiples of the farm's limits (daphne_process.py).
HEAD_SLACK = 4


def url_bytes(scope: dict) -> int:
    path = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    return len(path) + (len(query) + 1 if query else 0)


def header_bytes(scope: dict) -> int:
    # Name, value, and the ": " and CRLF around them on the wire.
    return sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))


def head_problem(scope: dict) -> tuple[int, str] | None:
    """(status, reason) if the request's URL or headers are over the farm's limits."""
    url_limit = settings.GENERATOR_MAX_URL_BYTES
    if (size := url_bytes(scope)) > url_limit:
        return 414, (
            f"the URL is {size} bytes, over this farm's {url_limit}-byte limit:"
            " send long fields in a POST body (POST /b1/build takes the same fields as a form)"
        )
    header_limit = settings.GENERATOR_MAX_HEADER_BYTES
    if (size := header_bytes(scope)) > header_limit:
        return 431, f"the request headers are {size} bytes, over this farm's {header_limit}-byte limit"
    return None


class RequestHeadLimits:
    """ASGI middleware around the whole application (generator_site/asgi.py)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or (problem := head_problem(scope)) is None:
            return await self.app(scope, receive, send)
        status, reason = problem
        if scope["type"] == "websocket":
            # Closing before the handshake is accepted: daphne answers 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        content_type, body = error_body(scope.get("path", "/"), status, reason)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
