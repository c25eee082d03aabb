"""Configuration: the seed's runtime.conf and the typed environment readers."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from generator_site.env import env_bool, env_int, env_list
from generator_site.runtime_conf import RuntimeConf, load_runtime_conf
from tests.conftest import ROOT


def test_the_seed_runtime_conf_gives_debug_and_redis(tmp_path):
    conf = tmp_path / "runtime.conf"
    conf.write_text(
        "runmode = prod\nlistenmode = https\nhttpscertfile = c.crt\n\n"
        "[log]\nfilepath = log/containerops-log\n\n[db]\nuri = redis.internal:6380\npasswd = s3cr#t/\ndb = 8\n"
    )
    assert load_runtime_conf(str(conf)) == RuntimeConf(
        debug=False, redis_url="redis://:s3cr%23t%2F@redis.internal:6380/8"
    )


def test_a_missing_runtime_conf_means_the_defaults(tmp_path):
    assert load_runtime_conf(str(tmp_path / "absent.conf")) == RuntimeConf(debug=True, redis_url=None)


def test_a_bad_runmode_stops_start_up(tmp_path):
    conf = tmp_path / "runtime.conf"
    conf.write_text("runmode = staging\n")
    with pytest.raises(ImproperlyConfigured, match="runmode must be dev or prod"):
        load_runtime_conf(str(conf))


def test_the_shipped_runtime_conf_matches_the_embedded_defaults():
    assert load_runtime_conf(str(ROOT / "conf" / "runtime.conf")) == RuntimeConf(
        debug=True, redis_url="redis://127.0.0.1:6379/0"
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
