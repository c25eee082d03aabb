"""The whole farm, for real: a registry, two dockerd, daphne, a Celery worker per
daemon, the control worker (beat) and the notify worker, all started by the same
code as `make up` (scripts/localfarm.py), on free ports, sharing the test
database file and the test Redis."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from builds.engine.cgroups import daemon_cgroup
from builds.models import Registry
from lib import registry_keys
from lib.egress import parse_destinations
from pool.models import DockerDaemon, queue_for
from scripts import localfarm as lf
from scripts import sandbox
from teams import tokens
from teams.models import Namespace, Team
from tests.fake_github import FakeGitHub
from tests.netns import Outside, outside_host

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items) -> None:
    """Every test under tests/farm/ is a farm test (`-m "not farm"` leaves them out).
    A `pytestmark` here would mark nothing: pytest reads it in test modules only.
    The hook sees the whole session's items: only those below this directory get it."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.farm)


TOKEN_KEY, TOKEN_CERT = "registry-token.key", "registry-token.crt"  # in GENERATOR_VAR_DIR, as make up's


@dataclass
class Farm:
    web: str  # host:port of daphne
    registry: str  # host:port to push to
    registry_port: int
    daemons: list[tuple[str, str]]  # (name, engine URL)
    supervisor: lf.Supervisor
    services_dir: Path
    env: dict[str, str]
    web_port: int
    redis_port: int
    policy: sandbox.Policy
    outside: Outside
    # Daemon index -> bytes of a filesystem of its own for its data root (as make
    # up gives each daemon); without an entry, a folder on the host's filesystem.
    data_disks: dict[int, int] = field(default_factory=dict)

    @property
    def token_auth(self) -> lf.TokenAuth:
        """The registry's auth.token, as make up's: the farm's web signs its tokens."""
        return lf.TokenAuth(realm=f"http://{self.web}/v2/token", rootcertbundle=self.services_dir / "var" / TOKEN_CERT)

    @property
    def signer(self) -> registry_keys.Signer:
        key = self.services_dir / "var" / TOKEN_KEY
        return registry_keys.Signer(key, issuer=self.token_auth.issuer, service=self.token_auth.service)

    def registry_headers(self, repository: str, actions: str = "pull") -> dict[str, str]:
        """What the farm's own reads of its registry send: a token it signed."""
        return {"Authorization": f"Bearer {self.signer.farm_token(f'repository:{repository}:{actions}')}"}

    def pull_auth(self, image: str) -> dict[str, str]:
        """docker-py's auth_config for a farm daemon's pull of `image` (REGISTRY/PATH):
        a token the daemon sends as it is, since its sandbox does not reach the token server."""
        repository = image.removeprefix(f"{self.registry}/")
        return {"registrytoken": self.signer.farm_token(f"repository:{repository}:pull")}

    def ensure_running(self) -> None:
        """Starts whatever is not running (a fault test killed it); idempotent."""
        sup, root = self.supervisor, self.services_dir
        if not lf.redis_answers(self.redis_port):
            lf.start_redis(sup, self.redis_port, root / "redis")
        registry_keys.ensure_key(root / "var" / TOKEN_KEY, root / "var" / TOKEN_CERT)
        lf.start_registry(sup, self.registry_port, root / "registry", token=self.token_auth)
        sandbox.apply_rules(self.policy)
        for index, (name, url) in enumerate(self.daemons):
            socket_path = Path(url.removeprefix("unix://"))
            dirs = root / f"d{index}", root / f"x{index}", socket_path
            lf.start_sandboxed_dockerd(
                sup,
                self.policy,
                index,
                f"dockerd-{index}",
                *dirs,
                cgroup_parent=daemon_cgroup(name),
                disk_bytes=self.data_disks.get(index, 0),
            )
        for index, (_, url) in enumerate(self.daemons):
            lf.wait_for_dockerd(sup, f"dockerd-{index}", url)
            lf.ensure_busybox_image(url, BUSYBOX_ROOTFS())
        lf.start_web(sup, self.web_port, self.env)
        for index, (name, _) in enumerate(self.daemons):
            lf.start_worker(sup, f"worker-{index}", name, queue_for(name), 2, self.env)
        lf.start_control(sup, self.env)
        lf.start_notify(sup, self.env, concurrency=2)  # a lean farm: two sends at once are enough here

    def give_data_disk(self, daemon_name: str, size_bytes: int) -> None:
        """Restarts the daemon with its data root on a new filesystem of
        `size_bytes` (scripts/localfarm.py, mount_data_disk), or with 0 back on
        its folder, whose images are as it left them."""
        index = [name for name, _ in self.daemons].index(daemon_name)
        self.supervisor.stop(f"dockerd-{index}")
        lf.unmount_below(self.services_dir / f"d{index}")
        (self.services_dir / f"d{index}" / "data.img").unlink(missing_ok=True)
        if size_bytes:
            self.data_disks[index] = size_bytes
        else:
            self.data_disks.pop(index, None)
        self.ensure_running()

    def restart_with(self, **settings: str) -> None:
        """The farm's own processes (web, workers, control, notify) again with
        these settings added to their environment ("" takes one away)."""
        for name in ["control", "notify", "web", *(f"worker-{i}" for i in range(len(self.daemons)))]:
            self.supervisor.stop(name)
        for name, value in settings.items():
            if value:
                self.env[name] = value
            else:
                self.env.pop(name, None)
        self.ensure_running()

    def worker_of(self, daemon_name: str) -> str:
        return f"worker-{[name for name, _ in self.daemons].index(daemon_name)}"

    def dockerd_of(self, daemon_name: str) -> str:
        return f"dockerd-{[name for name, _ in self.daemons].index(daemon_name)}"


_rootfs: list[bytes] = []


def BUSYBOX_ROOTFS() -> bytes:  # noqa: N802  (a constant, made once on first use)
    if not _rootfs:
        _rootfs.append(lf.busybox_rootfs())
    return _rootfs[0]


def farm_database_url() -> str:
    """The test database pytest-django made, as a URL for the farm's processes."""
    db = settings.DATABASES["default"]
    assert "test" in str(db["NAME"]), f"refusing to run the farm on {db['NAME']}, not a test database"
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# Seconds, not minutes, so that the fault tests see failures handled quickly.
FAST_TIMINGS = {
    "GENERATOR_BUILD_TIMEOUT": "20",
    "GENERATOR_LEASE_SECONDS": "6",
    "GENERATOR_HEARTBEAT_SECONDS": "1",
    "GENERATOR_DISPATCH_INTERVAL": "1",
    "GENERATOR_REAP_INTERVAL": "1",
    "GENERATOR_HEALTH_INTERVAL": "1",
    "GENERATOR_HEALTH_TIMEOUT": "2",
    "GENERATOR_UNHEALTHY_AFTER": "1",
    "GENERATOR_DISPATCH_STALE_SECONDS": "8",
    "GENERATOR_PUSH_TRIES": "4",
    "GENERATOR_PUSH_BACKOFF_SECONDS": "1",
    "GENERATOR_SCHEDULE_INTERVAL": "1",
    "GENERATOR_BASE_IMAGE_INTERVAL": "1",
    "GENERATOR_FAIR_SHARE_SECONDS": "5",
    "GENERATOR_FAIR_SHARE_INTERVAL": "1",
}


GITHUB_APP_WEBHOOK_SECRET = "the farm's GitHub App's webhook secret"


@pytest.fixture(scope="session")
def fake_github():
    github = FakeGitHub()
    yield github
    github.close()


@pytest.fixture(scope="session")
def farm(supervisor, services_dir, redis_url, django_db_setup, fake_github, cleanup) -> Farm:
    registry_port = lf.free_port()
    env = {
        "GENERATOR_GITHUB_API_URL": fake_github.url,
        # The farm's GitHub App: check runs on the repositories the fake says it is installed on.
        "GENERATOR_GITHUB_APP_ID": str(fake_github.app_id),
        "GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE": str(fake_github.write_private_key(services_dir / "github-app.pem")),
        "GENERATOR_GITHUB_APP_WEBHOOK_SECRET": GITHUB_APP_WEBHOOK_SECRET,
        "GENERATOR_SITE_URL": "http://generator.example.invalid",
        "GENERATOR_ALLOW_LOCAL_REPOSITORIES": "true",
        "DATABASE_URL": farm_database_url(),
        "REDIS_URL": redis_url,
        "GENERATOR_SECRET_KEY": "end-to-end-tests-only",
        "GENERATOR_DEBUG": "false",
        "GENERATOR_VAR_DIR": str(services_dir / "var"),
        **FAST_TIMINGS,
        # Long enough that a build waiting behind a hung notification would show
        # (test_notifications.py); a send never waits on it otherwise.
        "GENERATOR_NOTIFY_TIMEOUT": "15",
        # The farm is its registry's token server, as make up's (builds/registry/token_server.py).
        "GENERATOR_REGISTRY_TOKEN_HOST": f"localhost:{registry_port}",
    }
    tag = secrets.token_hex(2)
    outside = cleanup.enter_context(outside_host(f"gentest{tag}"))
    policy = sandbox.Policy(
        table=f"gentest{tag}",
        prefix=f"gvt{tag}",
        # The registry, and what the attacker tests fetch from on purpose
        # (tests/farm/test_containment.py): a mirror on loopback and one routed.
        allow=parse_destinations([f"127.0.0.1:{registry_port}", *outside.allowed]),
        relay_dir=services_dir / "relay",
    )
    cleanup.callback(lf.remove_sandboxes, policy)
    cleanup.callback(supervisor.stop_all)
    farm = Farm(
        web=f"127.0.0.1:{(web_port := lf.free_port())}",
        registry=f"localhost:{registry_port}",
        registry_port=registry_port,
        daemons=[(f"farm-{i}", f"unix://{services_dir}/s{i}/docker.sock") for i in range(2)],
        supervisor=supervisor,
        services_dir=services_dir,
        env=env,
        web_port=web_port,
        redis_port=int(redis_url.rsplit(":", 1)[1].split("/")[0]),
        policy=policy,
        outside=outside,
    )
    farm.ensure_running()
    yield farm
    # The processes that hold database connections stop before pytest-django
    # drops the test database (PostgreSQL refuses while anyone is connected).
    for name in ["control", "notify", "web", *(f"worker-{i}" for i in range(len(farm.daemons)))]:
        supervisor.stop(name)


@pytest.fixture(scope="session")
def cleanup():
    """Undone at the end of the session, last in first out."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def farm_db(farm, django_db_blocker):
    """The end-to-end tests use the test database as the farm's processes do: in
    autocommit, rows kept from test to test. (Emptying the tables after each test
    would TRUNCATE under live workers and beat: PostgreSQL deadlocks on that.)
    They run after every other test (tests/conftest.py), so no row of theirs
    reaches a unit test."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def database(farm_db):
    """The user fixtures' database access: autocommit, visible to the farm."""


@pytest.fixture
def farm_pool(farm, farm_db):
    """The farm's daemons as rows, enabled and not draining; its registry allowed
    and owned by team `default` (as `make up` does), so its members read its builds."""
    for host in (farm.registry, "localhost:1"):  # localhost:1: test_end_to_end pushes there to fail on purpose
        Registry.objects.get_or_create(host=host)
        team = Team.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
        Namespace.objects.get_or_create(prefix=f"{host}/", defaults={"team": team})
    return [
        DockerDaemon.objects.update_or_create(
            name=name, defaults={"url": url, "capacity": 2, "enabled": True, "draining": False}
        )[0]
        for name, url in farm.daemons
    ]


@pytest.fixture
def token(farm_pool, operator) -> str:
    return operator.api_token


def team_token(farm: Farm, slug: str, note: str) -> str:
    """A team (made once) owning its own namespace in the farm's registry, and a new token of it."""
    team = Team.objects.get_or_create(slug=slug, defaults={"name": slug})[0]
    Namespace.objects.get_or_create(prefix=f"{farm.registry}/{slug}/", defaults={"team": team})
    return tokens.issue(team, note)[1]


# --- a client, as a user of the farm would write it ------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def submit(farm: Farm, token: str, image: str, dockerfile: str, *, seed_mode: bool = False) -> str:
    fields = {"imagename": image}
    if seed_mode:
        fields.update(mode="dockerfile", context=b64(dockerfile))
    else:
        fields["dockerfile"] = b64(dockerfile)
    status, body = http_get(f"http://{farm.web}/b1/build?{urllib.parse.urlencode(fields)}", token)
    assert status == 200, body
    return body


def api_build(farm: Farm, token: str, body: dict) -> str:
    """A build submitted as JSON to the REST API: its job id."""
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["id"]


# BuildKit's plain progress puts its step and time before each line a RUN step prints.
_BUILDKIT_PREFIX = re.compile(r"^#\d+ \d+\.\d+ ")


def printed(lines: list[str]) -> list[str]:
    """The log's lines with BuildKit's `#5 0.412 ` prefix taken off what RUN steps
    printed (the classic builder prints them bare): for tests of the build's output."""
    return [_BUILDKIT_PREFIX.sub("", text) for text in lines]


def build_processes(daemon_name: str) -> list[str]:
    """The command lines of the processes running in a daemon's builds: RUN steps
    of either builder run below the daemon's cgroup (builds/engine/cgroups.py), and
    BuildKit's show in no `docker ps`."""
    commands = []
    for procs in Path("/sys/fs/cgroup/pids", daemon_cgroup(daemon_name).lstrip("/")).rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with suppress(OSError):  # it ended meanwhile
                commands.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip())
    return commands


def wait_for(predicate, what: str, *, timeout: float = 60, interval: float = 0.2):
    """Poll until `predicate()` is truthy and return its value, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def steps_running(seconds: int) -> int:
    """`sleep SECONDS` processes on this host, natively or under QEMU (whose
    command line puts the interpreter first): a RUN step of a build, seen from below."""
    return sum(1 for cmdline in Path("/proc").glob("[0-9]*/cmdline") if _read(cmdline).endswith(f"sleep\0{seconds}\0"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Followed:
    lines: list[tuple[int, str]]
    statuses: list[str]
    end: dict | None
    close_code: int | None
    platforms: dict[int, str] = field(default_factory=dict)  # seq -> the platform its line carried


def follow(farm: Farm, job_id: str, token: str | None, *, after: int = 0, headers: dict | None = None) -> Followed:
    """Reads the WebSocket log until the server closes it."""
    lines, statuses, end, platforms = [], [], None, {}
    all_headers = {"Authorization": f"Token {token}"} if token else {}
    all_headers.update(headers or {})
    url = f"ws://{farm.web}/b1/build/log/ws/{job_id}" + (f"?after={after}" if after else "")
    with connect(url, additional_headers=all_headers, open_timeout=10, close_timeout=5) as ws:
        for message in _messages(ws):
            frame = json.loads(message)
            if frame["type"] == "log":
                lines += [(line["seq"], line["text"]) for line in frame["lines"]]
                platforms.update((line["seq"], line["platform"]) for line in frame["lines"] if "platform" in line)
            elif frame["type"] == "status":
                statuses.append(frame["status"])
            else:
                end = frame
    return Followed(lines, statuses, end, ws.close_code, platforms)


def _messages(ws, limit: float = 120):
    deadline = time.monotonic() + limit
    while True:
        try:
            yield ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except ConnectionClosed:
            return
        except TimeoutError:
            raise AssertionError(f"the log stream did not end within {limit} s") from None


def engine(url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, version="1.41", timeout=60)


def registry_digest(farm: Farm, repository: str, tag: str) -> str | None:
    request = urllib.request.Request(
        f"http://{farm.registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json", **farm.registry_headers(repository)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
