"""The pool: loading the seed's pool.json, validating daemons, choosing one."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from pool.models import DockerDaemon, validate_engine_url
from pool.scheduler import choose_daemon


@pytest.fixture
def pool_file(tmp_path):
    def write(data) -> str:
        path = tmp_path / "pool.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        return str(path)

    return write


SEED_POOL = {"docker": [{"url": "127.0.0.1", "port": "19000"}, {"url": "127.0.0.1", "port": "19100"}]}


def test_loadpool_reads_the_seed_format_and_is_idempotent(db, pool_file, monkeypatch):
    monkeypatch.delenv("GENERATOR_DAEMON_SOCKET_DIR", raising=False)
    path = pool_file(SEED_POOL)
    call_command("loadpool", path)
    DockerDaemon.objects.filter(name="127.0.0.1:19100").update(enabled=False)  # an operator's choice
    call_command("loadpool", path)
    daemons = list(DockerDaemon.objects.values_list("name", "url", "capacity", "enabled"))
    assert daemons == [
        ("127.0.0.1:19000", "unix:///run/generator/19000/docker.sock", 2, True),
        ("127.0.0.1:19100", "unix:///run/generator/19100/docker.sock", 2, False),
    ]


def test_a_seed_entry_on_loopback_is_its_daemons_socket_never_its_port(db, pool_file, monkeypatch):
    """A build can make its daemon call any TCP port on loopback: the seed's port
    only names the daemon's socket folder (pool/seed_pool.py)."""
    monkeypatch.setenv("GENERATOR_DAEMON_SOCKET_DIR", "/srv/daemons")
    call_command("loadpool", pool_file({"docker": [{"url": "localhost", "port": "19000"}]}))
    assert DockerDaemon.objects.get().url == "unix:///srv/daemons/19000/docker.sock"


def test_a_seed_entry_on_another_host_without_tls_is_refused(db, pool_file):
    with pytest.raises(CommandError, match="plain TCP"):
        call_command("loadpool", pool_file({"docker": [{"url": "10.0.0.5", "port": "2375"}]}))
    assert not DockerDaemon.objects.exists()


def test_loadpool_takes_numbers_names_and_capacities(db, pool_file):
    call_command("loadpool", pool_file({"docker": [{"url": "127.0.0.5", "port": 2375, "name": "big", "capacity": 8}]}))
    big = DockerDaemon.objects.get(name="big")
    assert big.capacity == 8 and big.url.endswith("/2375/docker.sock")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"pool": []}, 'must hold {"docker"'),
        ({"docker": ["127.0.0.1:19000"]}, "must be an object"),
        ({"docker": [{"url": "127.0.0.1", "port": "http"}]}, "a port from 1 to 65535"),
        ({"docker": [{"url": "127.0.0.1", "port": "70000"}]}, "a port from 1 to 65535"),
        ({"docker": [{"url": "127.0.0.1", "port": "1", "capacity": 0}]}, "capacity must be"),
        (
            {"docker": [{"url": "127.0.0.1", "port": "1"}, {"url": "bad host!", "port": "2"}]},
            "not a Docker Engine address",
        ),
    ],
)
def test_loadpool_refuses_a_bad_file_and_changes_nothing(db, pool_file, data, reason):
    with pytest.raises(CommandError, match=reason):
        call_command("loadpool", pool_file(data))
    assert not DockerDaemon.objects.exists()


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("tcp://127.0.0.1:19000", True),
        ("tcp://build-host-1.example:2376", True),
        ("tcp://[::1]:2375", True),
        ("unix:///var/run/docker.sock", True),
        ("http://127.0.0.1:19000", False),
        ("tcp://127.0.0.1", False),
        ("tcp://127.0.0.1:0", False),
        ("unix://relative.sock", False),
    ],
)
def test_engine_urls_are_checked(url, valid):
    if valid:
        validate_engine_url(url)
    else:
        with pytest.raises(ValidationError):
            validate_engine_url(url)


def test_the_least_loaded_daemon_for_its_capacity_wins():
    small = DockerDaemon(pk=1, name="small", capacity=1)
    large = DockerDaemon(pk=2, name="large", capacity=4)
    assert choose_daemon([small, large], {}) == small  # ties: fewer running, then older
    assert choose_daemon([small, large], {2: 1}) == small  # 0/1 beats 1/4
    assert choose_daemon([small, large], {1: 0, 2: 0}) == small
    assert choose_daemon([large, small], {1: 1, 2: 3}) == large  # small is full


def test_only_daemons_that_take_builds_and_have_room_are_chosen():
    sick = DockerDaemon(pk=1, name="sick", capacity=4, healthy=False)
    draining = DockerDaemon(pk=2, name="draining", capacity=4, draining=True)
    off = DockerDaemon(pk=3, name="off", capacity=4, enabled=False)
    full = DockerDaemon(pk=4, name="full", capacity=2)
    assert choose_daemon([sick, draining, off, full], {4: 2}) is None
    assert choose_daemon([sick, draining, off, full], {4: 1}) == full
    assert choose_daemon([], {}) is None


def test_the_daemon_with_a_warm_cache_wins_while_it_has_room():
    cold = DockerDaemon(pk=1, name="cold", capacity=2)
    warm = DockerDaemon(pk=2, name="warm", capacity=2)
    assert choose_daemon([cold, warm], {2: 1}, prefer=2) == warm
    assert choose_daemon([cold, warm], {2: 2}, prefer=2) == cold


def test_a_build_that_needs_a_whole_daemon_gets_only_an_idle_one():
    busy = DockerDaemon(pk=1, name="busy", url="unix:///b", capacity=4)
    idle = DockerDaemon(pk=2, name="idle", url="unix:///i", capacity=2)
    assert choose_daemon([busy, idle], {1: 1}, prefer=1, whole=True) == idle
    assert choose_daemon([busy, idle], {1: 1, 2: 1}, whole=True) is None
    assert choose_daemon([busy, idle], {1: 1, 2: 1}) == busy  # 1/4 beats 1/2


def test_a_daemon_has_its_own_queue():
    assert DockerDaemon(name="127.0.0.1:19000").queue == "build.127.0.0.1:19000"


def test_loadpool_sets_a_group_only_where_the_entry_names_one(db, pool_file):
    call_command("loadpool", pool_file({"docker": [{"url": "127.0.0.1", "port": "1", "group": "secure"}]}))
    assert DockerDaemon.objects.get().group == "secure"
    DockerDaemon.objects.update(group="operators-choice")
    call_command("loadpool", pool_file({"docker": [{"url": "127.0.0.1", "port": "1"}]}))
    assert DockerDaemon.objects.get().group == "operators-choice"
