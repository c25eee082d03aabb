"""Who may do what, for the plain Django views and the WebSocket consumers.

API tokens use DRF's header (`Authorization: Token <key>`): a user's key is
DRF's model, a team's (`gtt_...`) is teams/tokens.py's; `TokenAuthentication`
below takes both for the REST API, `user_for_token_header` for `/b1` and the
WebSocket handshake. Writes
through the seed's GET endpoint accept a token only, never the session cookie:
a GET that a browser sends with its cookies (an <img> on another site) must not
start a build on a logged-in operator's behalf.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from teams import tokens as team_tokens

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
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
    user, problem = user_for_key(key)
    return Identity(user, "") if user is not None else Identity(AnonymousUser(), problem)


def user_for_key(key: str):
    """(the user a key acts as, None), or (None, why it is refused)."""
    if team_tokens.is_team_key(key):
        return team_tokens.authenticate(key)
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None, "invalid or inactive API token"
    return token.user, None


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's, taking team tokens too: a refused key is a 401 with the reason."""

    def authenticate_credentials(self, key: str):
        user, problem = user_for_key(key)
        if user is None:
            raise exceptions.AuthenticationFailed(problem)
        return user, key


def can_submit(user) -> bool:
    if settings.GENERATOR_ANONYMOUS_BUILDS:
        return True
    return bool(user.is_authenticated and has_permission(user, "builds", "add_buildjob"))


def has_permission(user, app_label: str, codename: str) -> bool:
    """`user.has_perm("app_label.codename")` with Django's ModelBackend, read in one
    query instead of two (the user's permissions, then their groups'), and nothing
    kept: a permission or membership taken away counts from the next request on.
    Plain SQL: the ORM took ~1.4 ms of CPU to build the same two EXISTS, the
    database ~0.2 ms to answer them (docs/benchmarks.md, "What one submit costs").
    With other backends configured it asks them, as has_perm does."""
    if settings.AUTHENTICATION_BACKENDS != [MODEL_BACKEND]:
        return user.has_perm(f"{app_label}.{codename}")
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    with connection.cursor() as cursor:
        cursor.execute(_permission_sql(), [app_label, codename, user.pk, user.pk])
        return bool(cursor.fetchone()[0])


@functools.cache
def _permission_sql() -> str:
    user_model = get_user_model()
    tables = {
        "permission": Permission._meta.db_table,
        "content_type": ContentType._meta.db_table,
        "user_permission": user_model.user_permissions.through._meta.db_table,
        "group_permission": Permission.group_set.through._meta.db_table,
        "user_group": user_model.groups.through._meta.db_table,
    }
    return """
        SELECT EXISTS (
            SELECT 1 FROM {permission} p JOIN {content_type} c ON c.id = p.content_type_id
            WHERE c.app_label = %s AND p.codename = %s AND (
                EXISTS (SELECT 1 FROM {user_permission} up WHERE up.permission_id = p.id AND up.user_id = %s)
                OR EXISTS (
                    SELECT 1 FROM {group_permission} gp JOIN {user_group} ug ON ug.group_id = gp.group_id
                    WHERE gp.permission_id = p.id AND ug.user_id = %s
                )
            )
        )
    """.format(**{name: connection.ops.quote_name(table) for name, table in tables.items()})


def can_read_logs(user) -> bool:
    return settings.GENERATOR_PUBLIC_LOGS or bool(user.is_authenticated)


class TokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes the header (drf-spectacular finds it by its target)."""

    target_class = TokenAuthentication
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>`: a user's key (acts as that user), or a team's `gtt_...` key, made "
            "under /api/v1/teams/{slug}/tokens/ (acts as a member, not admin, of that team alone). "
            "A revoked or expired key is a 401.",
        }
