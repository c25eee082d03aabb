"""The farm a benchmark runs against, and the HTTP calls every benchmark makes.

By default a private farm on free ports, started with scripts/localfarm.py as
`make up` and the end-to-end tests start theirs: Redis, a registry, N dockerd
with the same busybox loaded, a SQLite database in a temporary folder (or, with
`--postgres URL`, a new database on that server), daphne, one
Celery worker per daemon, the control worker with beat and the notify worker. Everything stops
and the folder goes when the benchmark ends, so a benchmark never touches the
farm of `make up` (ports 8080/5000/19000/19100).

`--web URL --token T` uses a farm that already runs instead; its processes'
pids are then unknown, so memory is measured only if `--web-pid` and
`--worker-pid` name them.

No Django in the benchmark's own process: it talks to the farm over HTTP and
WebSocket only, as a user would, and changes the pool through the REST API.

    .venv/bin/python bench/rig.py [--daemons 2]

keeps a private farm up until Ctrl-C and prints the options that point a
benchmark at it, and its processes' pids (for a profiler).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from builds.engine.buildkit import find_client  # noqa: E402
from builds.engine.cgroups import daemon_cgroup  # noqa: E402
from lib import registry_keys  # noqa: E402
from scripts import localfarm as lf  # noqa: E402
from scripts import sandbox  # noqa: E402


@dataclass
class Farm:
    web: str  # http://host:port
    token: str
    registry: str  # host:port to push to
    # Process trees to watch for memory: role -> pid of the tree's root.
    pids: dict[str, int] = field(default_factory=dict)
    # Every process of a private farm, for CPU time: name -> pid.
    processes: dict[str, int] = field(default_factory=dict)
    # The farm's own registry tokens (its signing key), for what the bench writes there itself.
    token_source: Callable[[str], str] | None = None
    # A private farm's process logs (NAME.log: worker-0.log, web.log...); None for --web.
    logs: Path | None = None
    # A private farm's PostgreSQL database (postgres://.../name); empty on SQLite and for --web.
    database_url: str = ""

    @property
    def ws(self) -> str:
        return self.web.replace("https://", "wss://").replace("http://", "ws://")

    def call(self, method: str, path: str, body: dict | bytes | None = None, content_type: str = "") -> tuple:
        """(status, decoded JSON or text) of one API request with the token."""
        headers = {"Authorization": f"Token {self.token}"}
        if isinstance(body, dict):
            body, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.web + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body=None, content_type: str = ""):
        status, answer = self.call(method, path, body, content_type)
        if status >= 300:
            raise SystemExit(f"{method} {path}: {status} {answer}")
        return answer

    def daemons(self) -> list[dict]:
        return sorted(self.ok("GET", "/api/v1/daemons/")["results"], key=lambda d: d["name"])

    def set_daemon(self, daemon: dict, *, enabled: bool, draining: bool) -> None:
        self.ok("PATCH", f"/api/v1/daemons/{daemon['id']}/", {"enabled": enabled, "draining": draining})

    @contextlib.contextmanager
    def pool_restored(self) -> Iterator[list[dict]]:
        """The daemons as they are; whatever the benchmark changes is put back."""
        before = self.daemons()
        try:
            yield before
        finally:
            for daemon in before:
                self.set_daemon(daemon, enabled=daemon["enabled"], draining=daemon["draining"])

    def jobs(self, image_prefix: str) -> list[dict]:
        """Every job whose image starts with the prefix, all pages."""
        jobs, page = [], 1
        while True:
            answer = self.ok("GET", f"/api/v1/builds/?image={urllib.parse.quote(image_prefix)}&page={page}")
            jobs += answer["results"]
            if not answer["next"]:
                return jobs
            page += 1

    def count(self, image_prefix: str, status: str) -> int:
        quoted = urllib.parse.quote(image_prefix)
        return self.ok("GET", f"/api/v1/builds/?image={quoted}&status={status}")["count"]


def add_arguments(parser: argparse.ArgumentParser, *, daemons: int) -> None:
    group = parser.add_argument_group("the farm (default: a private one on free ports)")
    group.add_argument("--daemons", type=int, default=daemons, help=f"daemons of the private farm (default {daemons})")
    group.add_argument("--capacity", type=int, default=2, help="builds at once per daemon (default 2)")
    group.add_argument(
        "--postgres",
        metavar="URL",
        default="",
        help="keep the private farm's database on this PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432"
        " (a new database, dropped at the end); default SQLite",
    )
    group.add_argument("--web", help="use the farm at this URL instead, e.g. http://localhost:8080")
    group.add_argument("--token", help="an operator's API token for --web")
    group.add_argument("--registry", default="localhost:5000", help="registry of the --web farm (host:port)")
    group.add_argument(
        "--token-key", default=str(ROOT / "var" / "registry-token.key"),
        help="the --web farm's registry token key (make up's var/registry-token.key), for the bench's own writes",
    )  # fmt: skip
    group.add_argument("--web-pid", type=int, help="daphne's pid in the --web farm, to measure its memory")
    group.add_argument("--worker-pid", type=int, help="a Celery worker's pid in the --web farm")


@contextlib.contextmanager
def farm_from(args: argparse.Namespace) -> Iterator[Farm]:
    if args.web:
        if not args.token:
            raise SystemExit("--web needs --token (an operator's API token)")
        pids = {role: pid for role, pid in (("daphne", args.web_pid), ("worker", args.worker_pid)) if pid}
        key = Path(args.token_key)
        signer = registry_keys.Signer(key, issuer="generator", service="generator-registry") if key.exists() else None
        yield Farm(args.web.rstrip("/"), args.token, args.registry, pids, token_source=signer and signer.farm_token)
        return
    with private_farm(args.daemons, args.capacity, args.postgres) as farm:
        yield farm


@contextlib.contextmanager
def private_farm(daemons: int, capacity: int, postgres: str = "") -> Iterator[Farm]:
    # Short: dockerd's exec root holds unix sockets (108-byte path limit).
    root = Path(tempfile.mkdtemp(prefix="gbench-", dir="/tmp"))
    sup = lf.Supervisor(root / "run")
    say(f"starting a private farm in {root} ({daemons} daemon(s), capacity {capacity})")
    registry_port = lf.free_port()
    # The daemons as make up runs them: each in its sandbox, the registry allowed.
    tag = os.getpid() % 10000
    policy = sandbox.farm_policy(
        f"genbench{tag}", f"gvb{tag}", registry=f"127.0.0.1:{registry_port}", relay_dir=root / "relay"
    )
    with database(root, postgres) as database_url:
        try:
            yield _start(sup, root, daemons, capacity, database_url, policy, registry_port)
        finally:
            workers = [n for n in sup.names() if n.startswith("worker")]
            sup.stop_all(first=["control", "notify", *workers, "web"])
            lf.unmount_below(root)
            lf.remove_sandboxes(policy)
            shutil.rmtree(root, ignore_errors=True)
            say("private farm stopped")


@contextlib.contextmanager
def database(root: Path, postgres: str) -> Iterator[str]:
    """A SQLite file in the farm's folder, or a new database on the PostgreSQL
    server `postgres`, dropped at the end."""
    if not postgres:
        yield f"sqlite:///{root / 'generator.sqlite3'}"
        return
    name = f"gbench_{secrets.token_hex(4)}"
    server = postgres.rstrip("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postmaster_pid(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        data_directory = connection.execute("SHOW data_directory").fetchone()[0]
    return int((Path(data_directory) / "postmaster.pid").read_text().split()[0])


def _start(
    sup: lf.Supervisor, root: Path, daemons: int, capacity: int, database_url: str, policy, registry_port: int
) -> Farm:
    redis_port, web_port = lf.free_port(), lf.free_port()
    lf.start_redis(sup, redis_port, root / "redis")
    # As make up's: the farm is its registry's token server, its key in its var/.
    key, cert = root / "var" / "registry-token.key", root / "var" / "registry-token.crt"
    registry_keys.ensure_key(key, cert)
    token_auth = lf.TokenAuth(realm=f"http://127.0.0.1:{web_port}/v2/token", rootcertbundle=cert)
    lf.start_registry(sup, registry_port, root / "registry", token=token_auth)
    sandbox.apply_rules(policy)
    sockets = [root / f"s{index}" / "docker.sock" for index in range(daemons)]
    names = [f"bench-{index}" for index in range(daemons)]
    for index, socket_path in enumerate(sockets):
        lf.start_sandboxed_dockerd(
            sup, policy, index, f"dockerd-{index}", root / f"d{index}", root / f"x{index}", socket_path,
            cgroup_parent=daemon_cgroup(names[index]),
        )  # fmt: skip
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GENERATOR_SECRET_KEY": secrets.token_urlsafe(40),
        "GENERATOR_DEBUG": "false",
        "GENERATOR_VAR_DIR": str(root / "var"),
        # Commit statuses of webhook builds go to a local server that answers
        # 404 (the registry): a refusal, so they are not retried, and no
        # request leaves the machine.
        "GENERATOR_GITHUB_API_URL": f"http://127.0.0.1:{registry_port}/github",
        "GENERATOR_ALLOW_LOCAL_REPOSITORIES": "true",  # that API base is on loopback
        "GENERATOR_REGISTRY_TOKEN_HOST": f"localhost:{registry_port}",
    }
    (root / "var" / "static").mkdir(parents=True, exist_ok=True)
    manage(env, "migrate", "--noinput")
    pool = {
        "docker": [
            {"name": n, "engine": f"unix://{p}", "capacity": capacity} for n, p in zip(names, sockets, strict=True)
        ]
    }
    (root / "pool.json").write_text(json.dumps(pool))
    manage(env, "loadpool", str(root / "pool.json"))
    token = manage(env, "ensureadmin", "--password-file", str(root / "admin-password")).rsplit(":", 1)[-1].strip()
    # As make up does: builds may push to the rig's registry, and the admin's team owns all of it.
    manage(env, "allowregistry", f"localhost:{registry_port}")
    registry = f"localhost:{registry_port}"
    manage(
        env, "ensureteam", "default", "--namespace", f"{registry}/", "--public-namespace", f"{registry}/library/",
        "--admin", "admin",
    )  # fmt: skip
    rootfs = lf.busybox_rootfs()
    for index, socket_path in enumerate(sockets):
        lf.wait_for_dockerd(sup, f"dockerd-{index}", f"unix://{socket_path}")
        lf.ensure_busybox_image(f"unix://{socket_path}", rootfs)
    lf.start_web(sup, web_port, env)
    for index, name in enumerate(names):
        lf.start_worker(sup, f"worker-{index}", name, f"build.{name}", capacity, env)
    lf.start_control(sup, env)
    lf.start_notify(sup, env)
    pids = {"daphne": sup.pid("web"), **{f"worker-{i}": sup.pid(f"worker-{i}") for i in range(daemons)}}
    processes = {("daphne" if name == "web" else name): sup.pid(name) for name in sup.names()}
    if database_url.startswith("postgres"):
        # The whole server (every database on it): its CPU is the farm's too.
        processes["postgres"] = postmaster_pid(database_url)
    say(f"private farm up: web http://127.0.0.1:{web_port}, registry localhost:{registry_port}")
    signer = registry_keys.Signer(key, issuer=token_auth.issuer, service=token_auth.service)
    return Farm(
        f"http://127.0.0.1:{web_port}",
        token,
        registry,
        pids,
        processes,
        token_source=signer.farm_token,
        logs=sup.run_dir,
        database_url=database_url if database_url.startswith("postgres") else "",
    )


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise lf.StartError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def say(text: str) -> None:
    print(f"== {text}", file=sys.stderr, flush=True)


# --- memory ---------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """The process and all its descendants (a Celery worker's pool children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class MemoryWatch:
    """Samples VmRSS of each watched process tree every 100 ms in a thread.

    A tree's root (daphne; a Celery worker's main process) and its largest
    child (the prefork pool process that runs the build) are kept apart: the
    RSS at the start, the peak sampled, and VmHWM at the end, which catches a
    peak between samples."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._measure("VmRSS")
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _measure(self, key: str) -> dict[str, int]:
        sizes = {}
        for role, pid in self.pids.items():
            sizes[role] = status_kib(pid, key)
            if children := tree(pid)[1:]:
                sizes[f"{role} (largest child)"] = max(status_kib(child, key) for child in children)
        return sizes

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, size in self._measure("VmRSS").items():
                self.peak[name] = max(self.peak.get(name, 0), size)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = self._measure("VmHWM")

    def rows(self) -> list[str]:
        return [
            f"| {name} | {self.start.get(name, 0) / 1024:.0f} MiB | {self.peak[name] / 1024:.0f} MiB"
            f" | {self.hwm.get(name, 0) / 1024:.0f} MiB |"
            for name in self.peak
        ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree so far: its live processes' own,
    and what their children that ended had spent (counted in the parent once
    it reaps them: a PostgreSQL backend per connection, a build's helpers)."""
    ticks = 0
    for member in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK"), sum(values) / os.sysconf("SC_CLK_TCK")


def background_load(seconds: float = 3.0) -> float:
    """The share of the machine's cores busy over a few seconds while the
    benchmark does nothing: other work on the machine, which its figures share
    the cores with."""
    busy, total = machine_busy_seconds()
    time.sleep(seconds)
    busy_after, total_after = machine_busy_seconds()
    return (busy_after - busy) / (total_after - total)


def machine_note() -> str:
    """A line for a benchmark's output: how busy the machine was before it started."""
    idle_share = background_load()
    return (
        f"machine: {os.cpu_count()} cores, {idle_share:.0%} busy with this farm idle (3 s before),"
        f" load average {os.getloadavg()[0]:.1f}"
    )


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def backend_cpu_seconds(database_url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to this one database
    (the farm's pooled connections live through a benchmark's run), by pid. Unlike
    the postmaster's tree, no other database on the server counts."""
    server, _, name = database_url.rstrip("/").rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        rows = connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)).fetchall()
    seconds = {}
    for (pid,) in rows:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = sum(int(value) for value in fields[11:13]) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return seconds


class CpuMeter:
    """CPU seconds each farm process tree, this benchmark's own process (the
    client), and the whole machine spent between enter and exit: where the time
    goes, and how much went to anything else (the builds' containers, and
    whatever else runs on the machine). With `database_url`, also the CPU of that
    database's own backends (`database_seconds`): a backend that ends during the
    run loses what it spent, one that starts counts whole."""

    def __init__(self, processes: dict[str, int], database_url: str = "") -> None:
        self.processes = processes
        self.database_url = database_url
        self.database_seconds: float | None = None

    def __enter__(self) -> CpuMeter:
        self._backends = backend_cpu_seconds(self.database_url) if self.database_url else {}
        self._start = {name: cpu_seconds(pid) for name, pid in self.processes.items()}
        self._start["client"] = own_cpu_seconds()
        self._machine = machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.spent = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.processes.items()}
        self.spent["client"] = own_cpu_seconds() - self._start["client"]
        if self.database_url:
            after = backend_cpu_seconds(self.database_url)
            self.database_seconds = sum(seconds - self._backends.get(pid, 0.0) for pid, seconds in after.items())
        busy, total = machine_busy_seconds()
        capacity = total - self._machine[1]
        self.machine_busy = busy - self._machine[0]
        self.machine_share = self.machine_busy / capacity
        # Containers are children of containerd's shims, outside every tree above.
        self.other_share = max(0.0, self.machine_busy - sum(self.spent.values())) / capacity

    def grouped(self) -> dict[str, float]:
        """Seconds by kind of process: worker-0 and worker-1 are "worker", and so on."""
        groups: dict[str, float] = {}
        for name, seconds in self.spent.items():
            kind = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
            groups[kind] = groups.get(kind, 0.0) + seconds
        return dict(sorted(groups.items(), key=lambda item: -item[1]))


@dataclass
class Plain:
    build: float
    push: float

    @property
    def total(self) -> float:
        return self.build + self.push


class PlainCLI:
    """What a user does by hand, the figure the farm is held to: the docker CLI
    (BuildKit by default) against the daemon's socket, `docker build` then
    `docker push`. Its own `folder` is its DOCKER_CONFIG. Its pushes carry a registry
    token for the repository, as the farm's worker gives its daemon one
    (builds/registry/accounts.py: a sandboxed daemon cannot reach the token
    server); without the farm's signing key, a login with the API token."""

    def __init__(self, farm: Farm, engine: str, user: str, builder: str, folder: Path) -> None:
        self.cli = find_client().path
        self.farm, self.engine, self.builder, self.folder = farm, engine, builder, folder
        self.login = base64.b64encode(f"{user}:{farm.token}".encode()).decode()
        buildkit = "1" if builder == "buildkit" else "0"
        self.env = {**os.environ, "DOCKER_CONFIG": str(folder), "DOCKER_BUILDKIT": buildkit}

    def run(self, image: str, stdin: bytes) -> Plain:
        started = time.perf_counter()
        progress = ["--progress=plain"] if self.builder == "buildkit" else []
        self._cli(["build", *progress, "--tag", image, "-"], stdin)
        built = time.perf_counter()
        self._authorize(image)
        self._cli(["push", image], b"")
        return Plain(build=built - started, push=time.perf_counter() - built)

    def _authorize(self, image: str) -> None:
        registry, _, path = image.rsplit(":", 1)[0].partition("/")
        if self.farm.token_source:
            entry = {"registrytoken": self.farm.token_source(f"repository:{path}:pull,push")}
        else:
            entry = {"auth": self.login}
        (self.folder / "config.json").write_text(json.dumps({"auths": {registry: entry}}))

    def _cli(self, args: list[str], stdin: bytes) -> None:
        argv = [self.cli, "--host", self.engine, *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, env=self.env)
        if result.returncode != 0:
            raise SystemExit(f"docker {args[0]}: {(result.stderr or result.stdout).decode()[-2000:]}")


def small_build_context(nonce: str, sleep: float = 0) -> bytes:
    """A tar context of `FROM busybox` + a `RUN` + a `COPY` of a nonce file: its
    last step is new to every daemon's cache. With `sleep`, the COPY comes first
    and the RUN, uncached after it, waits that many seconds (a build that waits
    rather than computes)."""
    steps = ["RUN echo built > /built", "COPY nonce.txt /nonce.txt"]
    if sleep:
        steps = ["COPY nonce.txt /nonce.txt", f"RUN sleep {sleep:g} && cp /nonce.txt /built"]
    files = {
        "Dockerfile": "FROM busybox\n" + "".join(f"{step}\n" for step in steps),
        "nonce.txt": nonce,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A private farm on free ports that stays up until Ctrl-C or SIGTERM: run a benchmark against"
        " it with the --web, --token and --registry it prints, or attach a profiler to the pids it prints."
    )
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--postgres", metavar="URL", default="", help="a PostgreSQL server for the database")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds, so the farm is stopped
    with private_farm(args.daemons, args.capacity, args.postgres) as farm:
        print(f"--web {farm.web} --token {farm.token} --registry {farm.registry}", flush=True)
        print(" ".join(f"{name}={pid}" for name, pid in farm.processes.items()), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
