"""Scale-out, for real: the web tier in one network and two build hosts in their
own network namespaces, each a `dockerd --tlsverify` and its Celery worker,
joined by veth pairs (tests/netns.py). Builds land on both hosts; one host is
cut off in the middle of a build, and its job and those queued after it finish
on the other.

The web tier (daphne, the control worker with beat, Redis, the registry, the
database) runs in the root namespace, where the test itself and the suite's
PostgreSQL are: only the build hosts are moved out, which is what a worker on
another host means. Nothing listens on or connects to an address outside the
private 10.213.N.0/24 and loopback. The farm has its own database (a SQLite file,
or a PostgreSQL database beside the suite's), migrated and seeded the way an
operator would (`migrate`, `ensureadmin`, `loadpool` with TLS files), so the
suite's own farm, which may run at the same time, never dispatches its jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from builds.engine.cgroups import daemon_cgroup
from lib.egress import parse_destinations
from scripts import localfarm as lf
from scripts import sandbox
from tests.farm.conftest import BUSYBOX_ROOTFS, FAST_TIMINGS, http_get, registry_digest, submit
from tests.netns import Network, TcpRelay, private_network
from tests.tls_certs import tls_set

pytestmark = pytest.mark.farm

HOSTS = ["a", "b"]
DOCKERD_PORT = 2376  # each build host has its own network: the same port on both
QUICK = "FROM busybox\nRUN echo {nonce} > /nonce\n"
SLOW = "FROM busybox\nRUN echo {nonce} && sleep 3\n"
# The build hosts' log writers hold their transaction open after the INSERT of a
# line holding this, in a job's first attempt (builds/logs/writer.py): a cut lands there.
HOLD = "hold-the-log-transaction"
HELD = "FROM busybox\nRUN echo " + HOLD + " {nonce} && sleep 1\n"


@dataclass
class NetnsFarm:
    redis: str  # gateway:port, what the build hosts' workers use
    web: str  # host:port of daphne, on loopback
    registry: str  # gateway:port, what the build hosts push to
    token: str
    network: Network
    supervisor: lf.Supervisor
    daemon_host: dict[str, str]  # daemon name -> build host
    sqlite: bool
    database: str  # the web tier's DATABASE_URL
    worker_env: dict[str, dict[str, str]]  # build host -> its worker's environment

    def registry_headers(self, repository: str, actions: str = "pull") -> dict[str, str]:
        return {}  # its registry, on the private network, runs without auth (as registry_digest asks)


@pytest.fixture(scope="module")
def netns_farm(services_dir, tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("netns"))
    sup = lf.Supervisor(services_dir / "netns-run")  # its own beat schedule and names
    # Exits in reverse: processes stop, the database goes, then the network.
    with private_network(HOSTS) as net, ExitStack() as cleanup:
        cleanup.callback(lf.unmount_below, services_dir / "netns")
        # Callbacks run last first: the farm's own processes stop before what they use.
        cleanup.callback(in_parallel, *(partial(sup.stop, name) for name in ["redis", "registry", *daemons()]))
        cleanup.callback(in_parallel, *(partial(sup.stop, name) for name in ["control", "web", *workers()]))
        web_db, host_db = _database(cleanup, net, root)
        redis_port, registry_port, web_port = lf.free_port(), lf.free_port(), lf.free_port()
        redis_password = uuid.uuid4().hex
        common = {
            **FAST_TIMINGS,
            # The farm's own writes there (signatures and attestations) go over plain HTTP, as the daemons' pushes.
            "GENERATOR_PLAIN_HTTP_REGISTRIES": f"{net.gateway}:{registry_port}",
            "REDIS_URL": f"redis://:{redis_password}@{net.gateway}:{redis_port}/0",
            "GENERATOR_SECRET_KEY": "netns-test-only",
            "GENERATOR_DEBUG": "false",
        }
        worker_env = {
            host: {**common, "DATABASE_URL": host_db, "GENERATOR_VAR_DIR": str(root / f"{host}-var"),
                   "GENERATOR_TEST_HOLD_LOG_TRANSACTION": HOLD}
            for host in HOSTS
        }  # fmt: skip
        # Notifications ride on the control worker here: this test is about the build hosts.
        web_env = {**common, "DATABASE_URL": web_db, "GENERATOR_VAR_DIR": str(root / "web-var"),
                   "GENERATOR_NOTIFY_QUEUE": "farm"}  # fmt: skip
        certs = tls_set(root / "tls", [net.address(h) for h in HOSTS])
        registry = f"{net.gateway}:{registry_port}"
        # Each build host runs its daemon in a sandbox of its own, as make up
        # does: builds reach the registry (allowed) and nothing else of the
        # private network; the TLS API is forwarded from the host's address.
        policies = {host: _sandbox_policy(net, host, registry, root) for host in HOSTS}
        cleanup.callback(lambda: [lf.remove_sandboxes(policy) for policy in policies.values()])
        for host in HOSTS:
            here = services_dir / "netns"
            sandbox.apply_rules(policies[host])
            lf.start_sandboxed_dockerd(
                sup, policies[host], 0, f"dockerd-{host}", here / f"d{host}", here / f"x{host}",
                here / f"s{host}" / "docker.sock", tls_port=DOCKERD_PORT, tls=certs.server,
                insecure_registries=(registry,),  # a plain-HTTP registry on the private network
                cgroup_parent=daemon_cgroup(f"build-{host}"),
            )  # fmt: skip
        pool = {"docker": [_pool_entry(net, host, certs) for host in HOSTS]}
        (root / "pool.json").write_text(json.dumps(pool))
        tokens = []

        def database() -> None:  # as an operator sets one up
            _manage(web_env, "migrate", "--noinput")
            _manage(web_env, "allowregistry", registry)
            _manage(web_env, "ensureteam", "other", "--namespace", f"{registry}/other/")
            tokens.append(_manage(web_env, "ensureadmin", "--password-file", str(root / "pw")).rsplit(": ", 1)[1])
            assert ", TLS, capacity 1" in _manage(web_env, "loadpool", str(root / "pool.json"))

        def daemon_ready(host: str) -> None:
            url = f"tcp://{net.address(host)}:{DOCKERD_PORT}"
            lf.wait_for_dockerd(sup, f"dockerd-{host}", url, tls=certs.client_config())
            lf.ensure_busybox_image(url, BUSYBOX_ROOTFS(), tls=certs.client_config())

        in_parallel(
            database,
            *(partial(daemon_ready, host) for host in HOSTS),
            partial(lf.start_redis, sup, redis_port, root / "redis", also_bind=net.gateway, password=redis_password),
            partial(lf.start_registry, sup, registry_port, root / "registry", host=net.gateway),
        )
        in_parallel(
            partial(lf.start_web, sup, web_port, web_env),
            partial(lf.start_control, sup, web_env),
            # What a worker on another host is given: broker, database, secret key, its own var/.
            *(partial(start_worker, sup, net, host, worker_env[host]) for host in HOSTS),
        )
        yield NetnsFarm(
            redis=f"{net.gateway}:{redis_port}",
            web=f"127.0.0.1:{web_port}",
            registry=registry,
            token=tokens[0],
            network=net,
            supervisor=sup,
            daemon_host={f"build-{h}": h for h in HOSTS},
            sqlite=web_db.startswith("sqlite"),
            database=web_db,
            worker_env=worker_env,
        )


def start_worker(sup: lf.Supervisor, net: Network, host: str, env: dict[str, str]) -> None:
    lf.start_worker(sup, f"worker-{host}", f"build-{host}", f"build.build-{host}", 1, env, netns=net.namespaces[host])


def _sandbox_policy(net: Network, host: str, registry: str, root: Path) -> sandbox.Policy:
    return sandbox.Policy(
        table=f"gs{net.tag}{host}",  # also names the sandbox's namespace: unique on this machine
        prefix="gvs",  # a veth in the build host's own namespace
        allow=parse_destinations([registry]),
        relay_dir=root / f"relay-{host}",
        host_netns=net.namespaces[host],
    )


def workers() -> list[str]:
    return [f"worker-{host}" for host in HOSTS]


def daemons() -> list[str]:
    return [f"dockerd-{host}" for host in HOSTS]


def in_parallel(*calls) -> None:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _pool_entry(net: Network, host: str, certs) -> dict:
    files = certs.client_files
    tls = {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}
    return {"url": net.address(host), "port": str(DOCKERD_PORT), "name": f"build-{host}", "capacity": 1, "tls": tls}


def _database(cleanup: ExitStack, net: Network, root: Path) -> tuple[str, str]:
    """The farm's database URL for the web tier and for the build hosts: the same
    SQLite file, or a fresh PostgreSQL database that the build hosts reach
    through a relay on the gateway (PostgreSQL listens on loopback only)."""
    suite = settings.DATABASES["default"]
    if suite["ENGINE"] == "django.db.backends.sqlite3":
        url = f"sqlite:///{root / 'farm.sqlite3'}"
        return url, url
    name, user = f"test_netns_{net.tag}", suite["USER"]
    password = f":{suite['PASSWORD']}" if suite.get("PASSWORD") else ""
    host, port = suite["HOST"] or "127.0.0.1", int(suite["PORT"] or 5432)
    admin = f"postgresql://{user}{password}@{host}:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    cleanup.callback(drop)
    relay = TcpRelay((net.gateway, 0), (host, port))
    cleanup.callback(relay.close)
    relay_port = relay.address[1]
    return (
        f"postgres://{user}{password}@{host}:{port}/{name}",
        f"postgres://{user}{password}@{net.gateway}:{relay_port}/{name}",
    )


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=lf.ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def api(farm: NetnsFarm, path: str) -> dict:
    status, body = http_get(f"http://{farm.web}/api/v1/{path}", farm.token)
    assert status == 200, body
    return json.loads(body)


def wait_for_job(farm: NetnsFarm, job_id: str, done, *, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api(farm, f"builds/{job_id}/")
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} on {job['daemon']} after {timeout} s: {job['error']}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def build(farm: NetnsFarm, name: str, dockerfile: str) -> str:
    return submit(farm, farm.token, f"{farm.registry}/netns/{name}", dockerfile.format(nonce=uuid.uuid4().hex))


def assert_pushed(farm: NetnsFarm, job: dict, name: str) -> None:
    assert job["status"] == "succeeded", job["error"]
    assert job["digest"] == registry_digest(farm, f"netns/{name}", "latest")


def test_builds_run_on_both_build_hosts_and_a_cut_hosts_jobs_finish_on_the_other(netns_farm):
    farm = netns_farm
    first = [build(farm, f"first-{i}", QUICK) for i in range(2)]  # one slot each: one on each host
    jobs = [wait_for_job(farm, job_id, finished) for job_id in first]
    for index, job in enumerate(jobs):
        assert_pushed(farm, job, f"first-{index}")
    assert {job["daemon"] for job in jobs} == set(farm.daemon_host)

    slow = build(farm, "slow", SLOW)
    running = wait_for_job(farm, slow, lambda job: job["status"] == "building", timeout=30)
    cut, other = running["daemon"], next(name for name in farm.daemon_host if name != running["daemon"])
    after = [build(farm, f"after-{i}", QUICK) for i in range(2)]
    farm.network.cut(farm.daemon_host[cut])
    if farm.sqlite:
        # A SQLite file is not on the network, so a cut cannot take it from the
        # cut host's worker: freeze that worker, as a host that is gone would be.
        os.killpg(farm.supervisor.pid(f"worker-{farm.daemon_host[cut]}"), signal.SIGSTOP)

    final = wait_for_job(farm, slow, finished)
    assert_pushed(farm, final, "slow")
    assert final["daemon"] == other and final["attempt"] == 2
    for index, job_id in enumerate(after):
        job = wait_for_job(farm, job_id, finished)
        assert_pushed(farm, job, f"after-{index}")
        assert job["daemon"] == other
    lost = next(d for d in api(farm, "daemons/")["results"] if d["name"] == cut)
    assert not lost["healthy"] and lost["last_error"]
    # The cut host's worker is stuck (or frozen) on a network that is gone: kill it.
    kill_worker(farm, farm.daemon_host[cut])


def test_a_host_cut_inside_a_log_transaction_delays_only_its_own_build_and_by_no_more_than_the_lease(netns_farm):
    """Issue 25: a host cut between the log writer's INSERT and its COMMIT left its
    session `idle in transaction` holding the next seq; the reaper's `worker lost`
    line waited on it forever, and the one control worker with it. Here the cut
    lands there on purpose (GENERATOR_TEST_HOLD_LOG_TRANSACTION): the session is
    ended by PostgreSQL (idle_in_transaction_session_timeout), another team's build
    is dispatched meanwhile, and the job is requeued within the lease and finishes
    on the other host."""
    farm = netns_farm
    both_hosts_up(farm)
    lease = float(FAST_TIMINGS["GENERATOR_LEASE_SECONDS"])
    held = build(farm, "held", HELD)
    running = wait_for_job(farm, held, lambda job: job["status"] == "building", timeout=30)
    cut, other = running["daemon"], next(name for name in farm.daemon_host if name != running["daemon"])
    host = farm.daemon_host[cut]
    session = held_session(farm, host)
    held_at = time.monotonic()
    if farm.sqlite:
        # A SQLite file is not on the network: the writer's host vanishing is its
        # process dying (which releases the file's lock; a cut would not).
        kill_worker(farm, host)
    else:
        farm.network.cut(host)

    meanwhile = submit(farm, farm.token, f"{farm.registry}/other/meanwhile", QUICK.format(nonce=uuid.uuid4().hex))
    started = wait_for_job(farm, meanwhile, lambda job: job["status"] != "queued", timeout=lease)
    dispatched_after = time.monotonic() - held_at
    requeued = wait_for_job(farm, held, lambda job: job["attempt"] == 2, timeout=3 * lease)
    requeued_after = time.monotonic() - held_at
    print(f"\nheld log transaction: session {session['pid']}; another team's build dispatched", end=" ")
    print(f"{dispatched_after:.1f} s after it,")
    print(f"the held job requeued {requeued_after:.1f} s after it (lease {lease:.0f} s)")
    assert started["daemon"] == other
    # The lease runs from the last heartbeat before the hold, then one reaper pass
    # (every second here) and some slack for a shared machine's scheduling.
    reap_every = float(FAST_TIMINGS["GENERATOR_REAP_INTERVAL"])
    assert requeued_after < lease + reap_every + 3, f"requeued {requeued_after:.1f} s after the hold, lease {lease} s"
    if not farm.sqlite:  # ended by its idle-in-transaction timeout (its exit may lag a moment behind its locks)
        assert wait_until_gone(farm, session), f"the held session {session} outlived its timeout"

    final = wait_for_job(farm, held, finished)
    assert_pushed(farm, final, "held")
    assert final["daemon"] == other and final["attempt"] == 2, requeued
    job = wait_for_job(farm, meanwhile, finished)
    assert job["status"] == "succeeded" and job["daemon"] == other, job["error"]
    log = http_get(f"http://{farm.web}/api/v1/builds/{held}/log/", farm.token)[1]
    assert "worker lost" in log and HOLD in log
    kill_worker(farm, host)  # held forever (or already gone)


def held_session(farm: NetnsFarm, host: str, timeout: float = 30) -> dict:
    """Waits until the build host's worker holds its log transaction open: on
    PostgreSQL its session `idle in transaction` after the log INSERT, on SQLite
    the worker's own word for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if farm.sqlite:
            if "holding a log transaction open" in farm.supervisor.log_path(f"worker-{host}").read_text():
                return {"pid": farm.supervisor.pid(f"worker-{host}")}
        else:
            with psycopg.connect(farm.database, autocommit=True) as connection:
                row = connection.execute(
                    "SELECT pid, backend_start, query FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle in transaction' AND query LIKE 'INSERT INTO \"builds_buildlogline\"%'"
                ).fetchone()
            if row:
                return {"pid": row[0], "backend_start": row[1], "query": row[2][:60]}
        time.sleep(0.1)
    raise AssertionError(f"the worker on {host} never held its log transaction open")


def wait_until_gone(farm: NetnsFarm, session: dict, timeout: float = 5) -> bool:
    """Whether the session (its pid and start: a pid is used again) leaves pg_stat_activity within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(farm.database, autocommit=True) as connection:
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
            if connection.execute(query, [session["pid"], session["backend_start"]]).fetchone()[0] == 0:
                return True
        time.sleep(0.1)
    return False


def kill_worker(farm: NetnsFarm, host: str) -> None:
    """SIGKILL, and wait until it is gone: a worker still dying is not started again."""
    farm.supervisor.kill(f"worker-{host}")
    deadline = time.monotonic() + 10
    while farm.supervisor.pid(f"worker-{host}") is not None:
        assert time.monotonic() < deadline, f"worker-{host} outlived SIGKILL by 10 s"
        time.sleep(0.05)


def both_hosts_up(farm: NetnsFarm, timeout: float = 60) -> None:
    """Plugs a host cut by a test before back in, restarts its worker, and waits
    until both daemons are healthy with a worker online."""
    for host in HOSTS:
        farm.network.plug(host)
        if farm.supervisor.pid(f"worker-{host}") is None:
            start_worker(farm.supervisor, farm.network, host, farm.worker_env[host])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemons = api(farm, "daemons/")["results"]
        if all(d["healthy"] and d["worker_online"] for d in daemons if d["name"] in farm.daemon_host):
            return
        time.sleep(0.3)
    raise AssertionError(f"build hosts not back after {timeout} s: {daemons}")


def test_a_build_on_a_build_host_reaches_the_registry_and_nothing_else_of_the_network(netns_farm):
    """The web tier's Redis listens on the private network (with a password);
    a build's daemon is refused it, below the build, while its push goes through."""
    farm = netns_farm
    redis_host = farm.redis.split(":")[0]
    refused = build(farm, "steal", f"FROM busybox\nADD http://{farm.redis}/ /x\n")
    job = wait_for_job(farm, refused, finished)
    assert job["status"] == "failed" and redis_host in job["error"] and "egress policy" in job["error"], job["error"]
    job = wait_for_job(farm, build(farm, "allowed", QUICK), finished)
    assert_pushed(farm, job, "allowed")
