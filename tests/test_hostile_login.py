"""Login throttling: failed logins for one username from one address, past
GENERATOR_LOGIN_FAILURES in the window, answer 429 with Retry-After, and the
right password is refused too until the window ends. Counts live in the test
Redis, as the farm's live in its own."""

from __future__ import annotations

import time

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client

from lib.login_throttle import KEY_PREFIX
from scripts import localfarm as lf

PASSWORD = "a long enough password 1"


@pytest.fixture(autouse=True)
def no_counts(settings):
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(KEY_PREFIX + "*"):
        client.delete(key)


@pytest.fixture
def alice(db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for many logins
    return get_user_model().objects.create_user("alice", password=PASSWORD, is_staff=True)


def log_in(path: str, password: str, address: str = "10.0.0.1", username: str = "alice"):
    client = Client()
    response = client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)
    return response, client


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_failures_past_the_limit_are_429_and_the_right_password_is_refused_too(alice, path):
    for _ in range(5):
        response, _ = log_in(path, "wrong")
        assert response.status_code == 200  # the form again, with its error
    response, client = log_in(path, "wrong")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 15 * 60
    assert response["Content-Type"].startswith("text/html")
    assert b"too many failed logins" in response.content

    response, client = log_in(path, PASSWORD)
    assert response.status_code == 429
    assert not logged_in(client)


def test_the_lockout_is_for_that_username_from_that_address_only(alice):
    get_user_model().objects.create_user("bob", password=PASSWORD)
    for _ in range(5):
        log_in("/accounts/login/", "wrong")
    assert log_in("/accounts/login/", PASSWORD)[0].status_code == 429
    response, client = log_in("/accounts/login/", PASSWORD, address="10.0.0.2")
    assert response.status_code == 302 and logged_in(client)
    response, client = log_in("/accounts/login/", PASSWORD, username="bob")
    assert response.status_code == 302 and logged_in(client)


def test_a_successful_login_clears_the_count(alice):
    for _ in range(4):
        log_in("/accounts/login/", "wrong")
    assert log_in("/accounts/login/", PASSWORD)[0].status_code == 302
    for _ in range(4):
        assert log_in("/accounts/login/", "wrong")[0].status_code == 200
    log_in("/accounts/login/", "wrong")  # the fifth since the success
    assert log_in("/accounts/login/", PASSWORD)[0].status_code == 429


def test_the_lockout_ends_with_the_window(alice, settings):
    settings.GENERATOR_LOGIN_WINDOW_SECONDS = 3
    for _ in range(5):
        log_in("/accounts/login/", "wrong")
    response, _ = log_in("/accounts/login/", PASSWORD)
    assert response.status_code == 429 and int(response["Retry-After"]) <= 3
    deadline = time.monotonic() + 10
    while (response := log_in("/accounts/login/", PASSWORD)[0]).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 302


def test_without_redis_logins_go_on_unthrottled(alice, settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{lf.free_port()}/0"  # nothing listens there
    for _ in range(6):
        assert log_in("/accounts/login/", "wrong")[0].status_code == 200
    response, client = log_in("/accounts/login/", PASSWORD)
    assert response.status_code == 302 and logged_in(client)
    assert "login throttle: Redis unreachable" in caplog.text
