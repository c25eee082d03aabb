"""GET /v2/token: the farm as its registry's token server (distribution's token
spec; the registry's `auth.token.realm` names this URL).

A client (docker login, the docker CLI, BuildKit) sends Basic credentials, a
`service` and any number of `scope`s, and gets a short-lived ES256 token
(GENERATOR_REGISTRY_TOKEN_SECONDS) granting what it asked for and may have
(teams/registry_access.py); a denied scope is left out, never an error.

Credentials: Basic, any username with an API token as the password (a user's
token, whose username it must name, or a team's `gtt_...` with any name), or a
build's own credential (builds/worker/docker_config.py); or the farm's own
`Authorization: Token <key>` (the CLI's `pull`, builds/cli_pull.py). No
credentials: anonymous, public pulls only. Wrong ones: 401, audited with the
client's address and throttled per (username, address) as logins are
(lib/login_throttle.py); a revoked or expired API token is wrong.

Only GET: BuildKit first POSTs an OAuth2 form and takes a 405 to mean "use GET".
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache

from audit.log import record
from builds.registry.accounts import farm_signer
from builds.worker.docker_config import account_for_build_password, is_build_password
from lib import login_throttle
from lib.client_address import client_address
from teams import tokens as team_tokens
from teams.access import user_for_key
from teams.registry_access import ANONYMOUS, Account, BadScope, account_for_user, granted, parse_scopes

logger = logging.getLogger(__name__)

THROTTLE_PREFIX = "registry\0"  # its own count: a registry client's failures do not lock a web login


@never_cache
def token(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _error(405, "UNSUPPORTED", "the token endpoint answers GET only", Allow="GET")
    host = settings.GENERATOR_REGISTRY_TOKEN_HOST
    if not host:
        return _error(404, "UNSUPPORTED", "this farm issues no registry tokens (GENERATOR_REGISTRY_TOKEN_HOST unset)")
    service = request.GET.get("service", "")
    if service and service != settings.GENERATOR_REGISTRY_TOKEN_SERVICE:
        return _error(400, "DENIED", f"unknown service {service[:100]!r}: this farm signs for its registry only")
    try:
        scopes = parse_scopes(request.GET.getlist("scope"))
    except BadScope as exc:
        return _error(400, "DENIED", str(exc))
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        account = ANONYMOUS
    else:
        username, password = _credentials(header)
        key = login_throttle.throttle_key(THROTTLE_PREFIX + username, client_address(request))
        if locked := login_throttle.lockout(key):
            minutes = -(-locked.retry_after // 60)
            message = f"too many failed logins: try again in {minutes} minute{'s' * (minutes != 1)}"
            return _error(429, "TOOMANYREQUESTS", message, **{"Retry-After": str(locked.retry_after)})
        account, problem = authenticate(username, password)
        if account is None:
            login_throttle.record_failure(key)
            record("deny", "registry token", label=username[:100] or "(no username)", details={"reason": problem})
            return _error(401, "UNAUTHORIZED", problem, **{"WWW-Authenticate": 'Basic realm="generator registry"'})
        login_throttle.clear(key)
    access = granted(account, scopes, host)
    return JsonResponse(farm_signer().sign(account.subject, access, settings.GENERATOR_REGISTRY_TOKEN_SECONDS))


def _credentials(header: str) -> tuple[str, str]:
    """(username, password) from Basic; from `Token <key>`, the key with no username."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "token":
        return "", encoded.strip()
    if scheme.lower() != "basic":
        return "", ""
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return username, password


def authenticate(username: str, password: str) -> tuple[Account | None, str]:
    """The account the credentials are, or (None, why they are refused)."""
    if not password:
        return None, "send Basic credentials: a username and an API token as the password"
    if is_build_password(password):
        return account_for_build_password(password)
    user, problem = user_for_key(password)
    if user is None:
        return None, problem
    if username and not team_tokens.is_team_key(password) and username != user.get_username():
        return None, "the username is not the API token's user"
    return account_for_user(user), ""


def _error(status: int, code: str, message: str, **headers: str) -> HttpResponse:
    """As registries answer errors (`errors`), with the farm's `detail` and the
    `details` Docker's client shows for a token server's refusal."""
    body = {"errors": [{"code": code, "message": message}], "detail": message, "details": message}
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response
