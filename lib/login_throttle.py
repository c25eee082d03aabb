"""Login throttling for /accounts/login/ and /admin/login/, kept in Redis.

Failed logins are counted per (username, client address) in a window that
starts at the first failure: GENERATOR_LOGIN_FAILURES of them lock that pair
out until the window ends. While locked, every login POST for that pair answers
429 with Retry-After, before any password is checked, so the right password is
refused too. A successful login clears the count.

Per pair, not per username alone: anyone could then lock an operator out by
failing on purpose. Behind a proxy the address is the proxy's unless daphne is
told to read X-Forwarded-For (`serve.py -- --proxy-headers`, README).

Redis (REDIS_URL) holds the counts, so every daphne process sees the same ones.
If Redis cannot be reached, logins go on unthrottled and the log says so: the
farm cannot build without Redis anyway, and locking everyone out is worse.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from lib.client_address import client_address
from lib.http_errors import error_response

logger = logging.getLogger(__name__)

LOGIN_PATHS = ("/accounts/login/", "/admin/login/")
KEY_PREFIX = "generator:login-failures:"


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def throttle_key(username: str, address: str) -> str:
    # Hashed: usernames are what a client typed, of any length and alphabet.
    digest = hashlib.sha256(f"{username.strip().lower()}\0{address}".encode()).hexdigest()
    return KEY_PREFIX + digest


def _key_for(request: HttpRequest, username: str | None = None) -> str:
    if username is None:
        username = request.POST.get("username", "")
    return throttle_key(username, client_address(request))


@dataclass(frozen=True)
class Lockout:
    retry_after: int  # seconds


def lockout(key: str) -> Lockout | None:
    try:
        client = _redis(settings.REDIS_URL)
        failures, ttl = client.pipeline().get(key).ttl(key).execute()
    except redis.RedisError as exc:
        logger.warning("login throttle: Redis unreachable (%s); login not throttled", exc)
        return None
    if failures is None or int(failures) < settings.GENERATOR_LOGIN_FAILURES:
        return None
    return Lockout(retry_after=max(int(ttl), 1))


def record_failure(key: str) -> None:
    try:
        client = _redis(settings.REDIS_URL)
        # The window starts at the first failure: NX keeps later ones from extending it.
        client.pipeline().incr(key).expire(key, settings.GENERATOR_LOGIN_WINDOW_SECONDS, nx=True).execute()
    except redis.RedisError as exc:
        logger.warning("login throttle: Redis unreachable (%s); failure not counted", exc)


def clear(key: str) -> None:
    try:
        _redis(settings.REDIS_URL).delete(key)
    except redis.RedisError as exc:
        logger.warning("login throttle: Redis unreachable (%s)", exc)


def is_login_post(request: HttpRequest | None) -> bool:
    return request is not None and request.method == "POST" and request.path in LOGIN_PATHS


@receiver(user_login_failed, dispatch_uid="lib.login_throttle.failed")
def _count_failure(sender, credentials, request=None, **kwargs) -> None:
    if is_login_post(request):
        record_failure(_key_for(request, credentials.get("username", "")))


@receiver(user_logged_in, dispatch_uid="lib.login_throttle.succeeded")
def _clear_on_success(sender, request, user, **kwargs) -> None:
    if is_login_post(request):
        clear(_key_for(request))


class LoginThrottleMiddleware:
    """Answers 429 to a login POST whose (username, address) is locked out."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_login_post(request) and (locked := lockout(_key_for(request))):
            minutes = -(-locked.retry_after // 60)
            response = error_response(
                request, 429, f"too many failed logins: try again in {minutes} minute{'s' * (minutes != 1)}"
            )
            response["Retry-After"] = str(locked.retry_after)
            return response
        return self.get_response(request)
