"""Who may do what, for the plain Django views and the WebSocket consumers.

API tokens use DRF's model and header (`Authorization: Token <key>`). Writes
through the seed's GET endpoint accept a token only, never the session cookie:
a GET that a browser sends with its cookies (an <img> on another site) must not
start a build on a logged-in operator's behalf.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.authtoken.models import Token

TOKEN_HINT = "send 'Authorization: Token <key>' (manage.py drf_create_token USER prints a key)"


@dataclass(frozen=True)
class Identity:
    user: object  # a User or AnonymousUser
    problem: str = ""  # why the credentials offered were refused, if they were


def user_for_token_header(header: str) -> Identity:
    if not header:
        return Identity(AnonymousUser())
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "token" or not key:
        return Identity(AnonymousUser(), "the Authorization header must read 'Token <key>'")
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return Identity(AnonymousUser(), "invalid or inactive API token")
    return Identity(token.user)


def can_submit(user) -> bool:
    if settings.GENERATOR_ANONYMOUS_BUILDS:
        return True
    return bool(user.is_authenticated and user.has_perm("builds.add_buildjob"))


def can_read_logs(user) -> bool:
    return settings.GENERATOR_PUBLIC_LOGS or bool(user.is_authenticated)
