"""WebSocket handshake checks: browser origin, and API tokens for scripts."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from teams.access import user_for_token_header

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host, port


def parse_origin(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL or Origin header, or None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def request_scheme(scope) -> str:
    """http or https: how the browser reached the farm. Behind a TLS proxy daphne
    sees ws://, so the proxy's header counts where Django's does (GENERATOR_HTTPS)."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, secure_value = proxy_header
        wire_name = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        forwarded = _header(scope, wire_name)
        if forwarded is not None:
            return "https" if forwarded.split(",")[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def allowed_origins(scope) -> set[Origin]:
    """The site's own origin (GENERATOR_SITE_URL), and the one the handshake came
    to: its Host, if ALLOWED_HOSTS has it (else a DNS-rebinding page's Host would
    vouch for itself), with the request's scheme."""
    origins = set()
    if site := parse_origin(settings.GENERATOR_SITE_URL):
        origins.add(site)
    host = _header(scope, b"host")
    domain = split_domain_port(host)[0] if host else ""
    here = parse_origin(f"{request_scheme(scope)}://{host}") if host else None
    if here and domain and validate_host(domain, settings.ALLOWED_HOSTS):
        origins.add(here)
    return origins


def origin_allowed(scope) -> bool:
    origin = _header(scope, b"origin")
    if origin is None:
        return True  # no browser: scripts and the CLI go on to authentication
    parsed = parse_origin(origin)
    return parsed is not None and parsed in allowed_origins(scope)


class BrowserOriginValidator:
    """Refuses a browser's handshake from any origin but the site's own (scheme,
    host and port: another port on the same host is another site); lets clients
    without an Origin header (scripts, the CLI, the seed's users) through to
    authentication. Channels' own validator refuses any handshake without an
    Origin, and accepts any port of an allowed host."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


def browser_origin_validator(app):
    return BrowserOriginValidator(app)


class TokenAuthMiddleware(BaseMiddleware):
    """`Authorization: Token <key>` on the handshake sets scope["user"]; a bad
    token is recorded in scope["auth_problem"] for the consumer to report."""

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        header = headers.get(b"authorization", b"").decode("latin-1")
        if header:
            identity = await database_sync_to_async(user_for_token_header)(header)
            scope = dict(scope, user=identity.user, auth_problem=identity.problem)
        return await super().__call__(scope, receive, send)
