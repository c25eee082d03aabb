"""The farm as a GitHub App: the App's JWT, installation tokens, and which
installation a repository is in.

GitHub's flow (docs: "Authenticating as a GitHub App installation"): a JWT
signed RS256 with the App's private key (iss = the App id, at most 10 minutes
long) buys an installation access token (`POST /app/installations/{id}/access_tokens`),
valid for an hour, which the check-run calls carry. Tokens are cached per
installation in each process and bought again REFRESH_BEFORE seconds before
they expire, so one report never meets a token that expires under it.

The private key is read from GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE at each JWT
(about once an hour per installation): replacing the file rotates it. Neither
the key, the JWT nor a token is ever logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jwt
import requests
from django.conf import settings

from builds.github.statuses import ReportFailed, api_base

JWT_SECONDS = 540  # GitHub allows 600; the margin absorbs clock drift
JWT_BACKDATE = 60  # iat a minute back, as GitHub advises for drifting clocks
REFRESH_BEFORE = 300  # seconds before a token's expiry it is replaced
NOT_INSTALLED_SECONDS = 600  # GitHub's "not installed" on a repository, believed this long
TIMEOUT = 10
HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class AppUnavailable(ReportFailed):
    """GitHub did not answer the App's request, or answered 5xx/429: worth trying again."""


class NotInstalled(Exception):
    """The App is not installed on that repository or installation (any more)."""


def configured() -> bool:
    return bool(settings.GENERATOR_GITHUB_APP_ID and settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE)


class Misconfigured(NotInstalled):
    """The App's key file cannot be read or is not an RSA private key: for the operator to fix."""


def app_jwt(now: float | None = None) -> str:
    """The App's own credential, for the /app endpoints only."""
    now = time.time() if now is None else now
    path = settings.GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE
    claims = {"iat": int(now) - JWT_BACKDATE, "exp": int(now) + JWT_SECONDS, "iss": settings.GENERATOR_GITHUB_APP_ID}
    try:
        return jwt.encode(claims, Path(path).read_bytes(), algorithm="RS256")
    except (OSError, ValueError, TypeError, jwt.PyJWTError) as exc:
        # The reason's class only: a parser's message could quote the file.
        raise Misconfigured(f"GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE {path!r}: {exc.__class__.__name__}") from None


def webhook_signed_by_app(body: bytes, header: str) -> bool:
    """Whether the App's webhook secret signed this body (its deliveries go to the same URL)."""
    secret = settings.GENERATOR_GITHUB_APP_WEBHOOK_SECRET
    if not secret or not header:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode())


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # epoch seconds


class TokenCache:
    """Installation tokens by installation id, bought through `buy` when missing
    or within REFRESH_BEFORE seconds of expiry. Thread-safe: a Celery worker may
    run reports in threads; two buying at once both succeed, the later is kept."""

    def __init__(self, buy: Callable[[int], Token], clock: Callable[[], float] = time.time) -> None:
        self._buy = buy
        self._clock = clock
        self._tokens: dict[int, Token] = {}
        self._lock = threading.Lock()

    def get(self, installation_id: int) -> str:
        with self._lock:
            token = self._tokens.get(installation_id)
        if token is None or token.expires_at - REFRESH_BEFORE <= self._clock():
            token = self._buy(installation_id)
            with self._lock:
                self._tokens[installation_id] = token
        return token.value

    def forget(self, installation_id: int) -> None:
        with self._lock:
            self._tokens.pop(installation_id, None)


def _send(method: str, path: str, *, bearer: str, json: dict | None = None) -> requests.Response:
    try:
        response = requests.request(
            method, f"{api_base()}{path}", json=json, headers={**HEADERS, "Authorization": f"Bearer {bearer}"},
            timeout=TIMEOUT,
        )  # fmt: skip
    except requests.RequestException as exc:
        raise AppUnavailable(f"GitHub did not answer: {exc.__class__.__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise AppUnavailable(f"GitHub answered {response.status_code} to {method} {path}")
    return response


def buy_token(installation_id: int) -> Token:
    path = f"/app/installations/{installation_id}/access_tokens"
    response = _send("POST", path, bearer=app_jwt())
    if response.status_code in (401, 403, 404):
        # 404: uninstalled; 403: suspended; 401: a wrong key or App id (logged by the caller, once).
        raise NotInstalled(f"GitHub refused a token for installation {installation_id}: {response.status_code}")
    if response.status_code != 201:
        raise AppUnavailable(f"GitHub answered {response.status_code} to {path}")
    body = response.json()
    try:
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        return Token(str(body["token"]), expires)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise AppUnavailable(f"GitHub's answer to {path} has no token and expires_at") from None


tokens = TokenCache(buy_token)


class Absences:
    """Repositories GitHub said the App is not on, remembered for NOT_INSTALLED_SECONDS
    per process: a farm whose App is on few of its repositories does not ask
    again at every report (GitHub's rate limit counts each). An installation
    event records a new installation at once (builds/github/check_run_events.py)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def known(self, full_name: str) -> bool:
        with self._lock:
            return self._until.get(full_name.lower(), 0.0) > self._clock()

    def note(self, full_name: str) -> None:
        with self._lock:
            self._until[full_name.lower()] = self._clock() + NOT_INSTALLED_SECONDS


absences = Absences()


def installation_of(full_name: str) -> int:
    """The installation id of the App on owner/name, asked of GitHub; NotInstalled if none."""
    if absences.known(full_name):
        raise NotInstalled(f"the App is not installed on {full_name} (GitHub said so lately)")
    response = _send("GET", f"/repos/{full_name}/installation", bearer=app_jwt())
    if response.status_code in (401, 403, 404):
        absences.note(full_name)
        raise NotInstalled(f"the App is not installed on {full_name} ({response.status_code})")
    installation_id = response.json().get("id") if response.status_code == 200 else None
    if not isinstance(installation_id, int) or isinstance(installation_id, bool):
        raise AppUnavailable(f"GitHub answered {response.status_code} without an installation id")
    return installation_id


def request(method: str, path: str, installation_id: int, json: dict | None = None) -> requests.Response:
    """A call as the installation. A token GitHub refuses (401: revoked) is
    forgotten and the call retried later, which buys a new one (or learns that
    the App is gone: NotInstalled)."""
    response = _send(method, path, bearer=tokens.get(installation_id), json=json)
    if response.status_code == 401:
        tokens.forget(installation_id)
        raise AppUnavailable(f"GitHub refused the installation token of {installation_id}")
    return response
