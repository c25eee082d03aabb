"""Fixtures shared by every test.

The suite runs against real services it starts itself: its own Redis on a free
port (never the machine's), and for the end-to-end tests (tests/farm/) the whole
farm. The test database is a file, so that daphne and the Celery workers, in
other processes, share it with the tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from scripts import localfarm as lf

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GENERATOR_SHARED_DIR", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared test data folder {SHARED} is missing (set GENERATOR_SHARED_DIR)")
    return SHARED


@pytest.fixture(scope="session")
def services_dir() -> Path:
    # Short: dockerd exec roots under it hold unix sockets (108-byte path limit).
    # Not under pytest's own temporary folder, which pytest keeps at 0700: a
    # user-namespace-remapped daemon's root must traverse to its data root.
    folder = Path(tempfile.mkdtemp(prefix="gsvc-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def supervisor(services_dir):
    sup = lf.Supervisor(services_dir / "run")
    yield sup
    workers = [n for n in sup.names() if n.startswith("worker")]
    sup.stop_all(first=["control", "notify", *workers, "web"])
    lf.unmount_below(services_dir)


@pytest.fixture(scope="session")
def redis_url(supervisor, services_dir) -> str:
    port = lf.free_port()
    lf.start_redis(supervisor, port, services_dir / "redis")
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings(redis_url, services_dir):
    """Points Celery and the channel layer of this process at the test Redis, and
    keeps files out of the checkout's var/."""
    from generator_site.celery import app

    settings.STATIC_ROOT = services_dir / "static"
    settings.STATIC_ROOT.mkdir()
    contexts = {**settings.STORAGES["contexts"], "OPTIONS": {"location": str(services_dir / "contexts")}}
    logs = {**settings.STORAGES["logs"], "OPTIONS": {"location": str(services_dir / "logs")}}
    settings.STORAGES = {**settings.STORAGES, "contexts": contexts, "logs": logs}
    settings.REDIS_URL = redis_url
    settings.CELERY_BROKER_URL = redis_url
    app.conf.broker_url = redis_url
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """The test database, always: pytest-django makes it only for the aliases its
    `django_db` tests name, and the end-to-end tests use it without that mark
    (tests/farm/conftest.py). Without this they would run on the real database."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"}, serialized_aliases=set())
    yield
    with django_db_blocker.unblock():
        _disconnect_stragglers()
        teardown_databases(config, verbosity=0)


def _disconnect_stragglers() -> None:
    """PostgreSQL will not drop a database anyone is connected to; a process the
    end-to-end tests killed may have left a session behind."""
    from django.db import connection, connections

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    connections.close_all()


@pytest.fixture
def daemon(db):
    from pool.models import DockerDaemon

    # Nothing listens here: enough for tests that stop before a build runs.
    return DockerDaemon.objects.create(name="unit-daemon", url="tcp://127.0.0.1:9", capacity=2)


def _user(username: str, **flags):
    # get_or_create: the end-to-end tests share rows across tests (tests/farm/conftest.py).
    # No `db` here (pytest-django's django_user_model would bring it): the
    # end-to-end tests must not run inside a transaction the farm cannot see.
    user, _ = get_user_model().objects.get_or_create(username=username, defaults=flags)
    user.api_token = Token.objects.get_or_create(user=user)[0].key
    return user


@pytest.fixture
def database(db):
    """Database access for the user fixtures: the test's transaction here; the
    end-to-end tests override it with the farm's autocommit (tests/farm/conftest.py)."""


@pytest.fixture
def allowed_registry(database):
    """The registry the unit tests push to, on the allow-list: builds push only to
    registries with a row. (The end-to-end tests allow their farm's own.)"""
    from builds.models import Registry

    return Registry.objects.get_or_create(host="localhost:5000")[0]


@pytest.fixture
def operator(database, allowed_registry):
    # The user who submits in most tests: the registry comes with it.
    return _user("operator", is_staff=True, is_superuser=True)


@pytest.fixture
def team(database, allowed_registry):
    """The team that owns the test registry's namespace (as `make up` makes one)."""
    from teams.models import Namespace, Team

    team = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    Namespace.objects.get_or_create(prefix="localhost:5000/", defaults={"team": team})
    return team


def member_of(team, user, role: str = "member"):
    from teams.models import Membership

    Membership.objects.get_or_create(team=team, user=user, defaults={"role": role})
    return user


@pytest.fixture
def reader(database, team):
    # A member of the default team without the right to build: reads its builds.
    return member_of(team, _user("reader"))


@pytest.fixture
def teams(db, allowed_registry):
    """Team A owns localhost:5000/team-a/, team B localhost:5000/team-b/ (tests/teams/test_teams.py)."""
    from teams.models import Namespace, Team

    a = Team.objects.create(slug="team-a", name="Team A")
    b = Team.objects.create(slug="team-b", name="Team B")
    Namespace.objects.create(team=a, prefix="localhost:5000/team-a/")
    Namespace.objects.create(team=b, prefix="localhost:5000/team-b/")
    return a, b


def builder(name: str, team, role: str = "member"):
    """A member of `team` with the right to build."""
    from django.contrib.auth.models import Permission

    user = member_of(team, _user(name), role)
    user.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
    return user


@pytest.fixture
def alice(teams):
    return builder("alice", teams[0])


@pytest.fixture
def bob(teams):
    return builder("bob", teams[1])


@pytest.fixture
def carol(teams):
    return builder("carol", teams[0], role="admin")


@pytest.fixture
def dave(teams):
    return builder("dave", teams[0])


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests last: once the farm is up, its control worker writes to
    the shared test database every second (health checks mark daemons without a
    worker), which must not reach the unit tests' rows.

    Tests marked `postgres` (they ask PostgreSQL's planner) are deselected on
    another database: `make test`'s PostgreSQL pass runs them."""
    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        elsewhere = [item for item in items if item.get_closest_marker("postgres")]
        if elsewhere:
            config.hook.pytest_deselected(items=elsewhere)
            items[:] = [item for item in items if not item.get_closest_marker("postgres")]
    items.sort(key=lambda item: "farm" in item.path.relative_to(ROOT).parts[:2])
