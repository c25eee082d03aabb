"""WebSocket handshake checks: browser origin, and API tokens for scripts."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings

from .access import user_for_token_header


class BrowserOriginValidator(OriginValidator):
    """Refuses cross-site handshakes from browsers; lets clients without an Origin
    header (scripts, the CLI, the seed's users) through to authentication.
    Channels' own validator refuses any handshake without an Origin."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def browser_origin_validator(app):
    return BrowserOriginValidator(app, settings.ALLOWED_HOSTS)


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
