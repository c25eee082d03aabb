"""Configuration: the seed's runtime.conf and the typed environment readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from generator_site.env import env_bool, env_int, env_list
from generator_site.runtime_conf import RuntimeConf, load_runtime_conf
from tests.conftest import ROOT


def test_the_seed_runtime_conf_gives_runmode_and_redis(tmp_path):
    conf = tmp_path / "runtime.conf"
    conf.write_text(
        "runmode = prod\nlistenmode = https\nhttpscertfile = c.crt\n\n"
        "[log]\nfilepath = log/containerops-log\n\n[db]\nuri = redis.internal:6380\npasswd = s3cr#t/\ndb = 8\n"
    )
    assert load_runtime_conf(str(conf)) == RuntimeConf(
        runmode="prod", redis_url="redis://:s3cr%23t%2F@redis.internal:6380/8"
    )


def test_a_missing_runtime_conf_means_the_defaults(tmp_path):
    assert load_runtime_conf(str(tmp_path / "absent.conf")) == RuntimeConf(runmode="dev", redis_url=None)


def test_a_bad_runmode_stops_start_up(tmp_path):
    conf = tmp_path / "runtime.conf"
    conf.write_text("runmode = staging\n")
    with pytest.raises(ImproperlyConfigured, match="runmode must be dev or prod"):
        load_runtime_conf(str(conf))


def test_the_shipped_runtime_conf_matches_the_embedded_defaults():
    assert load_runtime_conf(str(ROOT / "conf" / "runtime.conf")) == RuntimeConf(
        runmode="dev", redis_url="redis://127.0.0.1:6379/0"
    )


def test_environment_readers_refuse_bad_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL must be true or false"):
        env_bool("X_BOOL", False)
    with pytest.raises(ImproperlyConfigured, match="X_INT must be a whole number"):
        env_int("X_INT", 1)
    assert env_list("X_LIST", []) == ["a", "b", "c"]
    assert env_bool("X_UNSET", True) is True


def settings_with(**env: str) -> dict:
    """The settings a fresh process reads from this environment (settings.py runs once per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENERATOR_") and k != "DJANGO_SETTINGS_MODULE"}
    names = ["DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER", "SECURE_HSTS_SECONDS"]
    script = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {names!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, "DJANGO_SETTINGS_MODULE": "generator_site.settings", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_debug_is_off_unless_asked_for_by_name(tmp_path):
    conf = tmp_path / "runtime.conf"
    conf.write_text("runmode = dev\n")
    assert settings_with(GENERATOR_RUNTIME_CONF=str(conf), GENERATOR_SECRET_KEY="k")["DEBUG"] is False
    assert settings_with(GENERATOR_SECRET_KEY="k")["DEBUG"] is False  # the shipped conf says dev too
    assert settings_with(GENERATOR_RUNTIME_CONF=str(conf), GENERATOR_DEBUG="true")["DEBUG"] is True


def secret_key_with(var_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.SECRET_KEY)"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("GENERATOR_")},
            "DJANGO_SETTINGS_MODULE": "generator_site.settings",
            "GENERATOR_VAR_DIR": str(var_dir),
            **env,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_production_settings_need_a_secret_key(tmp_path):
    result = secret_key_with(tmp_path)
    assert result.returncode != 0 and "GENERATOR_SECRET_KEY must be set" in result.stderr


def test_the_secret_key_make_up_made_is_read_from_var(tmp_path):
    (tmp_path / "secret_key").write_text("made-by-make-up\n")
    assert secret_key_with(tmp_path).stdout.strip() == "made-by-make-up"
    assert secret_key_with(tmp_path, GENERATOR_SECRET_KEY="from-env").stdout.strip() == "from-env"


def test_secure_cookies_and_the_proxy_header_only_when_served_over_https():
    plain = settings_with(GENERATOR_SECRET_KEY="k")
    assert plain == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "SECURE_HSTS_SECONDS": 0,
    }
    https = {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_HSTS_SECONDS": 0,
    }
    assert settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_HTTPS="true") == https
    assert settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_SITE_URL="https://farm.example") == https
    assert (
        settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_SITE_URL="https://farm.example", GENERATOR_HTTPS="false")
        == plain
    )
    assert (
        settings_with(GENERATOR_SECRET_KEY="k", GENERATOR_HTTPS="true", GENERATOR_HSTS_SECONDS="3600")[
            "SECURE_HSTS_SECONDS"
        ]
        == 3600
    )
