"""How far one web tier, Redis and PostgreSQL carry the farm: a simulated pool of
many daemons whose builds complete at once, so only scheduling, the workers'
bookkeeping and the database are loaded. Prints the tables of docs/scaling.md.

    .venv/bin/python bench/scale.py [--daemons 8,32,128] [--backlog 400] [--rates 5,10,20]

It starts its own processes on free ports with scripts/localfarm.py, as the
end-to-end tests do: Redis, a PostgreSQL role and database `generator_scale`
on the machine's server (127.0.0.1:5432, made and dropped here; no other
database is touched), daphne, the control worker with beat, `--workers` Celery workers
that each consume the queues of a share of the daemons, and bench/fake_engine.py
answering the Docker Engine API of every daemon on its own port. Settings are
the defaults (docs/deploy.md) unless an option says otherwise.

Phases:
1. health: `check_pool` timed over 8/32/128 enabled daemons;
2. backlog, per pool size: `--backlog` jobs wait while the pool drains, then
   the pool opens and the bench measures how fast the backlog goes, timing a
   dispatch pass every second against the number still waiting;
3. steady rates: builds submitted through the REST API at each `--rates`
   builds/s for `--seconds`, on the largest pool: dispatch latency
   (created_at -> started_at), submit latency, and whether the farm keeps up;
4. long builds: `--long-seconds` builds filling every slot of `--long-daemons`
   daemons, against the database's connection limit (`--connection-limit`,
   also what the bench takes of the shared server at most); `--only-long`
   runs this phase alone.
CPU of each process group is read from /proc around every phase, and the
connections to PostgreSQL are counted per process with `ss`. docs/scaling.md
reads the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")

from scripts import localfarm as lf  # noqa: E402

DATABASE = "generator_scale"
# The machine's server trusts loopback connections (no password).
ADMIN = "postgres://postgres@127.0.0.1:5432"
SERVER = f"postgres://{DATABASE}@127.0.0.1:5432"
TICK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"== {datetime.now(UTC):%H:%M:%S} {text}", file=sys.stderr, flush=True)


# --- the processes ----------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    sup: lf.Supervisor
    web: str
    workers: list[str]
    env: dict[str, str] = field(default_factory=dict)
    daemon_names: list[str] = field(default_factory=list)


def recreate_database(connection_limit: int) -> None:
    """The bench's database, owned by a role of its own that is no superuser, so
    that the database's connection limit holds: the bench never takes more of
    the shared server's max_connections than that."""
    import psycopg

    with psycopg.connect(f"{ADMIN}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [DATABASE]).fetchone():
            conn.execute(f"CREATE ROLE {DATABASE} LOGIN")
        conn.execute(f"CREATE DATABASE {DATABASE} OWNER {DATABASE} CONNECTION LIMIT {int(connection_limit)}")


def drop_database() -> None:
    import psycopg

    with psycopg.connect(f"{ADMIN}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"DROP ROLE IF EXISTS {DATABASE}")


def start_stack(root: Path, args: argparse.Namespace) -> Stack:
    """Everything but Django in this process; answers once every process is ready."""
    sup = lf.Supervisor(root / "run")
    redis_port, web_port = lf.free_port(), lf.free_port()
    lf.start_redis(sup, redis_port, root / "redis")
    ports_file = root / "engine-ports.txt"
    engine = [
        lf.venv_bin("python"),
        str(ROOT / "bench" / "fake_engine.py"),
        "--daemons",
        str(max([*args.daemons, args.long_daemons])),
    ]
    sup.start("engine", [*engine, "--ports-file", str(ports_file), "--lines", str(args.lines)])
    lf.wait_until(ports_file.exists, timeout=30, what="the fake engine", log=sup.log_path("engine"))
    env = {
        "DATABASE_URL": f"{SERVER}/{DATABASE}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GENERATOR_SECRET_KEY": secrets.token_urlsafe(40),
        "GENERATOR_DEBUG": "false",
        "GENERATOR_VAR_DIR": str(root / "var"),
        "GENERATOR_DB_CONN_MAX_AGE": str(args.conn_max_age),
        "GENERATOR_INSECURE_LOOPBACK_ENGINES": "true",  # the simulated engines listen on TCP
        "GENERATOR_BUILD_CGROUPS": "false",  # no RUN step runs on a simulated engine
        "GENERATOR_ATTESTATIONS": "false",  # no image to read, no registry to sign into
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from builds.models import Registry

    Registry.objects.get_or_create(host="localhost:5000")  # the allow-list: the simulated engines push anywhere
    stack = Stack(root, sup, f"http://127.0.0.1:{web_port}", [], env)
    stack.daemon_names = make_pool(ports_file.read_text().split())
    lf.start_web(sup, web_port, env)
    lf.start_control(sup, env)
    shares = [stack.daemon_names[k :: args.workers] for k in range(args.workers)]
    for index, names in enumerate(shares):
        name = f"worker-{index}"
        argv = lf.worker_argv(f"scale-{index}", ",".join(f"build.{n}" for n in names), args.concurrency)
        sup.start(name, argv, env=env)
        stack.workers.append(name)
    for name in stack.workers:
        lf.wait_until(lambda n=name: "ready." in sup.log_path(n).read_text(), timeout=90, what=name)
    return stack


def make_pool(ports: list[str]) -> list[str]:
    from pool.models import DockerDaemon

    names = [f"sim{index:03d}" for index in range(1, len(ports) + 1)]
    DockerDaemon.objects.bulk_create(
        DockerDaemon(name=name, url=f"tcp://127.0.0.1:{port}", capacity=2, enabled=False)
        for name, port in zip(names, ports, strict=True)
    )
    return names


def open_pool(stack: Stack, size: int, *, draining: bool) -> None:
    """The first `size` daemons take builds (or drain); the others are disabled."""
    from pool.models import DockerDaemon

    first = stack.daemon_names[:size]
    DockerDaemon.objects.filter(name__in=first).update(enabled=True, draining=draining, healthy=True)
    DockerDaemon.objects.exclude(name__in=first).update(enabled=False)


# --- CPU ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _processes() -> dict[int, tuple[int, str, float, float]]:
    """pid -> (parent, command, own CPU s, reaped children's CPU s)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields, command = _stat(int(entry.name)), ""
        with contextlib.suppress(OSError):
            command = (entry / "comm").read_text().strip()
        if fields and command:
            own = (int(fields[11]) + int(fields[12])) / TICK
            reaped = (int(fields[13]) + int(fields[14])) / TICK
            found[int(entry.name)] = (int(fields[1]), command, own, reaped)
    return found


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each group: a process tree's live members plus
    what its exited children left in their parents' counters. PostgreSQL is the
    machine's server: all its processes count, whatever database they serve."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, *_rest) in procs.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int | None) -> float:
        total, todo = 0.0, [pid] if pid in procs else []
        while todo:
            current = todo.pop()
            total += procs[current][2] + procs[current][3]
            todo += children.get(current, [])
        return total

    postmasters = [
        p
        for p, (parent, cmd, *_r) in procs.items()
        if cmd == "postgres" and procs.get(parent, (0, ""))[1] != "postgres"
    ]
    return {
        "daphne": tree(stack.sup.pid("web")),
        "build workers": sum(tree(stack.sup.pid(name)) for name in stack.workers),
        "control + beat": tree(stack.sup.pid("control")),
        "Redis": tree(stack.sup.pid("redis")),
        "PostgreSQL": sum(tree(pid) for pid in postmasters),
        "fake engine": tree(stack.sup.pid("engine")),
    }


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Percent of one core, per group, over `seconds`."""
    return {name: 100 * (after[name] - before[name]) / seconds for name in after}


# --- the control worker's own timings (structured log lines) ---------------------------

_TASK_DONE = re.compile(r'^time=(\S+) .*msg="Task ([\w.]+)\[[^\]]+\] succeeded in ([0-9.e-]+)s')


def task_seconds(stack: Stack, process: str, task: str, since: datetime, until: datetime) -> list[float]:
    """How long each run of a task took in a worker, from its log (celery.app.trace's line)."""
    seconds = []
    for line in stack.sup.log_path(process).read_text(errors="replace").splitlines():
        match = _TASK_DONE.match(line)
        if match and match[2] == task:
            at = datetime.fromisoformat(match[1].replace("Z", "+00:00"))
            if since <= at <= until:
                seconds.append(float(match[3]))
    return seconds


# --- phases ---------------------------------------------------------------------------


def health_passes(stack: Stack, sizes: list[int]) -> list[dict]:
    from django.conf import settings

    from pool import health

    rows = []
    for size in sizes:
        open_pool(stack, size, draining=True)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            health.check_pool(
                api_version=settings.GENERATOR_DOCKER_API_VERSION,
                timeout=settings.GENERATOR_HEALTH_TIMEOUT,
                unhealthy_after=settings.GENERATOR_UNHEALTHY_AFTER,
            )
            timings.append(time.perf_counter() - started)
        rows.append({"daemons": size, "median": statistics.median(timings), "max": max(timings)})
        say(f"health check over {size} daemons: {statistics.median(timings) * 1000:.0f} ms")
    return rows


def counts() -> dict[str, int]:
    from django.db.models import Count, Q

    from builds.models import BuildJob

    return BuildJob.objects.aggregate(
        waiting=Count("id", filter=Q(status="queued", daemon__isnull=True)),
        assigned=Count("id", filter=Q(status="queued", daemon__isnull=False)),
        running=Count("id", filter=Q(status__in=["building", "pushing"])),
        finished=Count("id", filter=Q(status__in=["succeeded", "failed", "cancelled"])),
        failed=Count("id", filter=Q(status__in=["failed", "cancelled"])),
    )


DOCKERFILE = "FROM busybox\nRUN true\n"


def image_for(run: str, index: int) -> str:
    # 50 image repositories, a tag per build: no per-image limit holds a build back.
    return f"localhost:5000/scale/app{index % 50}:{run}-{index}"


def backlog_phase(stack: Stack, size: int, backlog: int, lines: int, timeout: float) -> dict:
    """`backlog` jobs wait while the pool drains; then it opens. Throughput from the
    jobs' own timestamps; a dispatch pass timed every half second meanwhile."""
    from django.db.models import Max
    from django.utils import timezone

    from builds.jobs.dispatch import dispatch
    from builds.jobs.services import BuildRequest, submit
    from builds.models import BuildJob

    run = f"b{size}-l{lines}"
    open_pool(stack, size, draining=True)
    started = time.perf_counter()
    for index in range(backlog):
        labels = {"fake-engine.lines": str(lines)}
        submit(BuildRequest(image=image_for(run, index), dockerfile=DOCKERFILE, labels=labels, builder="classic"))
    submit_rate = backlog / (time.perf_counter() - started)
    jobs = BuildJob.objects.filter(image__contains=f":{run}-")
    say(f"{backlog} jobs waiting; opening {size} daemons")
    cpu_before, since, opened = cpu_seconds(stack), datetime.now(UTC), time.perf_counter()
    database_before = database_counters()
    opened_at = timezone.now()
    open_pool(stack, size, draining=False)
    passes = []  # (waiting before the pass, jobs it assigned, seconds)
    sessions = []  # (PostgreSQL sessions of the farm, those waiting for a lock)
    while (done := jobs.exclude(finished_at=None).count()) < backlog and time.perf_counter() - opened < timeout:
        waiting = jobs.filter(status="queued", daemon=None).count()
        sessions.append(pg_sessions())
        pass_started = time.perf_counter()
        assigned = dispatch()
        passes.append((waiting, assigned, time.perf_counter() - pass_started))
        time.sleep(0.5)
    elapsed = time.perf_counter() - opened
    cpu_used = {name: after - cpu_before[name] for name, after in cpu_seconds(stack).items()}
    database_used = {name: after - database_before[name] for name, after in database_counters().items()}
    until = datetime.now(UTC)
    span = (jobs.aggregate(last=Max("finished_at"))["last"] - opened_at).total_seconds()
    say(f"{size} daemons, {lines} lines: {done} of {backlog} builds in {span:.1f} s")
    return {
        "daemons": size,
        "lines": lines,
        "builds": done,
        "seconds": span,
        "per_minute": done / span * 60,
        "submit_rate": submit_rate,
        "passes": passes,
        "beat_dispatch": task_seconds(stack, "control", "farm.dispatch", since, until),
        "beat_health": task_seconds(stack, "control", "farm.check_health", since, until),
        "run_build": [s for w in stack.workers for s in task_seconds(stack, w, "builds.run_build", since, until)],
        "cpu": {name: 100 * used / elapsed for name, used in cpu_used.items()},
        "cpu_ms_per_build": {name: 1000 * used / max(done, 1) for name, used in cpu_used.items()},
        "failed": jobs.exclude(status="succeeded").exclude(finished_at=None).count(),
        "why_not": why_not_succeeded(jobs),
        "database_per_build": {name: used / max(done, 1) for name, used in database_used.items()},
        "sessions": sessions,
    }


def database_counters() -> dict[str, int]:
    """The bench database's own counters (pg_stat_database: every session on it,
    not the rest of the shared server): sessions opened, transactions, rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # counters as of now, not of this transaction's start
        cursor.execute(
            "SELECT sessions, xact_commit + xact_rollback, tup_returned + tup_fetched,"
            " tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()"
        )
        values = cursor.fetchone()
    return dict(zip(DATABASE_COUNTERS, values, strict=True))


DATABASE_COUNTERS = ["sessions", "transactions", "rows read", "rows written"]


def why_not_succeeded(jobs) -> dict[str, int]:
    """The reasons of the builds that ended otherwise, their numbers cut out, and how many gave each."""
    reasons: dict[str, int] = {}
    for error in jobs.exclude(status="succeeded").exclude(finished_at=None).values_list("error", flat=True):
        reason = re.sub(r"[0-9a-f]{12,}|\d+", "N", error)[:160]
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def connections_by_group(stack: Stack) -> dict[str, int]:
    """Open TCP connections to PostgreSQL, by the farm's process group holding them."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "( dport = :5432 )"], capture_output=True, text=True
    ).stdout
    procs = _processes()
    roots = {stack.sup.pid("web"): "daphne", stack.sup.pid("control"): "control + beat", os.getpid(): "this bench"}
    roots.update({stack.sup.pid(name): "build workers" for name in stack.workers})
    found: dict[str, int] = {}
    for pid in map(int, re.findall(r"pid=(\d+)", out)):
        current = pid
        while current in procs and current not in roots:
            current = procs[current][0]
        if current in roots:
            found[roots[current]] = found.get(roots[current], 0) + 1
    return found


def refusals(stack: Stack) -> int:
    """Connections PostgreSQL refused to the farm's processes, from their logs."""
    logs = [path for path in stack.sup.run_dir.glob("*.log") if path.stem not in ("redis", "engine")]
    text = "".join(path.read_text(errors="replace") for path in logs)
    return text.count("too many connections") + text.count("too many clients")


def pg_sessions() -> tuple[int, int]:
    """The farm's sessions on its database (not this one), and how many wait for a lock."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()


def rate_phase(stack: Stack, token: str, rate: float, seconds: float, settle: float) -> dict:
    from builds.models import BuildJob

    run = f"r{rate:g}-{secrets.token_hex(3)}"
    submits: list[float] = []
    lock = threading.Lock()

    def submit(index: int) -> None:
        body = json.dumps({"image": image_for(run, index), "dockerfile": DOCKERFILE}).encode()
        request = urllib.request.Request(
            f"{stack.web}/api/v1/builds/",
            data=body,
            method="POST",
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        with lock:
            submits.append(time.perf_counter() - started)

    total = int(rate * seconds)
    cpu_before, began = cpu_seconds(stack), time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        for index in range(total):
            # Open loop: the n-th build leaves at n/rate whatever the answers take.
            time.sleep(max(0.0, began + index / rate - time.perf_counter()))
            pool.submit(submit, index)
    sent_for = time.perf_counter() - began
    connections = connections_by_group(stack)
    deadline = time.perf_counter() + settle
    jobs = BuildJob.objects.filter(image__contains=f":{run}-")
    while jobs.exclude(finished_at=None).count() < total and time.perf_counter() < deadline:
        time.sleep(0.5)
    elapsed = time.perf_counter() - began
    cpu = cpu_share(cpu_before, cpu_seconds(stack), elapsed)
    rows = list(jobs.values("created_at", "started_at", "finished_at", "status"))
    started = [r for r in rows if r["started_at"]]
    finished = [r for r in rows if r["finished_at"]]
    waits = sorted((r["started_at"] - r["created_at"]).total_seconds() for r in started)
    ends = sorted((r["finished_at"] - r["created_at"]).total_seconds() for r in finished)
    say(f"{rate:g}/s: {len(finished)} of {total} finished; wait p50 {pct(waits, 0.5) * 1000:.0f} ms")
    return {
        "rate": rate,
        "sent": total,
        "sent_for": sent_for,
        "finished": len(finished),
        "succeeded": sum(r["status"] == "succeeded" for r in rows),
        "backlog_at_end": total - len(finished),
        "submit": sorted(submits),
        "waits": waits,
        "ends": ends,
        "cpu": cpu,
        "elapsed": elapsed,
        "connections": connections,
    }


def long_builds_phase(stack: Stack, args: argparse.Namespace) -> dict:
    """Builds that take `--long-seconds`, filling every slot of `--long-daemons`
    daemons at once: each running build holds a database session for its whole
    length. The database's connection limit (`--connection-limit`, below what
    the builds need) shows what happens at PostgreSQL's max_connections without
    taking the shared server's connections from anyone else. The build workers
    switch to Celery's thread pool here: a process per running build would not
    fit this machine."""
    from django.db.models import Max, Min

    from builds.jobs.services import BuildRequest, submit
    from builds.models import BuildJob

    size, seconds = args.long_daemons, args.long_seconds
    builds = size * 2
    for name in stack.workers:
        stack.sup.stop(name)
    shares = [stack.daemon_names[:size][k :: args.workers] for k in range(args.workers)]
    threads = -(-builds // args.workers)
    stack.workers = []
    for index, names in enumerate(shares):
        name = f"threads-{index}"
        argv = lf.worker_argv(f"threads-{index}", ",".join(f"build.{n}" for n in names), threads)
        stack.sup.start(name, [*argv, "--pool", "threads"], env=stack.env)
        stack.workers.append(name)
    for name in stack.workers:
        lf.wait_until(lambda n=name: "ready." in stack.sup.log_path(n).read_text(), timeout=90, what=name)
    refused_before = refusals(stack)
    open_pool(stack, size, draining=True)
    run = f"long{seconds:g}"
    labels = {"fake-engine.seconds": str(seconds)}
    for index in range(builds):
        submit(BuildRequest(image=image_for(run, index), dockerfile=DOCKERFILE, labels=labels, builder="classic"))
    jobs = BuildJob.objects.filter(image__contains=f":{run}-")
    say(f"{builds} builds of {seconds:g} s waiting; opening {size} daemons, connection limit {args.connection_limit}")
    open_pool(stack, size, draining=False)
    started, samples = time.perf_counter(), []  # (running builds, farm sessions)
    by_group: dict[str, int] = {}  # connections per process group, at the most sessions seen
    while jobs.exclude(finished_at=None).count() < builds and time.perf_counter() - started < seconds * 4 + 180:
        running = jobs.filter(status__in=["building", "pushing"]).count()
        samples.append((running, pg_sessions()[0]))
        if samples[-1][1] >= max(c for _, c in samples):
            by_group = connections_by_group(stack)
        time.sleep(1)
    elapsed = time.perf_counter() - started
    refused = refusals(stack) - refused_before
    span = jobs.aggregate(first=Min("created_at"), last=Max("finished_at"))
    say(f"long builds: {jobs.filter(status='succeeded').count()} of {builds} succeeded in {elapsed:.0f} s")
    return {
        "daemons": size,
        "builds": builds,
        "seconds": seconds,
        "limit": args.connection_limit,
        "elapsed": (span["last"] - span["first"]).total_seconds() if span["last"] else elapsed,
        "succeeded": jobs.filter(status="succeeded").count(),
        "retried": jobs.filter(attempt__gt=1).count(),
        "max_running": max((r for r, _ in samples), default=0),
        "max_sessions": max((c for _, c in samples), default=0),
        "refused": refused,
        "whole_logs": whole_logs(jobs),
        "by_group": by_group,
    }


def whole_logs(jobs) -> int:
    """Jobs whose stored lines are exactly 1..log_line_count: nothing lost, nothing twice."""
    from django.db.models import Count, Max

    from builds.models import BuildLogLine

    expected = dict(jobs.values_list("id", "log_line_count"))
    rows = (
        BuildLogLine.objects.filter(job_id__in=list(expected)).values("job_id").annotate(n=Count("id"), last=Max("seq"))
    )
    return sum(1 for row in rows if row["n"] == row["last"] == expected[row["job_id"]])


def pct(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def database_figures() -> dict:
    from django.db import connection

    from builds.models import BuildJob, BuildLogLine

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        (database,) = cursor.fetchone()
        sizes = {}
        for table in ("builds_buildjob", "builds_buildlogline"):
            cursor.execute("SELECT pg_total_relation_size(%s)", [table])
            (sizes[table],) = cursor.fetchone()
    jobs, lines = BuildJob.objects.count(), BuildLogLine.objects.count()
    return {"database": database, "jobs": jobs, "lines": lines, **sizes}


def operator_token() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_superuser("scale", password=secrets.token_urlsafe(12))
    return Token.objects.create(user=user).key


# --- report ---------------------------------------------------------------------------


def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


CPU_GROUPS = ["daphne", "build workers", "control + beat", "Redis", "PostgreSQL", "fake engine"]


def report(
    args, machine: dict, health: list, backlogs: list, rates: list, db: dict, empty: dict, long: dict | None
) -> None:
    print(f"## Measured {machine['date']} on {machine['host']}\n")
    print(f"`{machine['command']}`\n")
    print(
        f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory']}; load average before"
        f" {machine['load_before']}, after {machine['load_after']}. {args.workers} build workers x concurrency"
        f" {args.concurrency}, capacity 2 per daemon, GENERATOR_DB_CONN_MAX_AGE={args.conn_max_age}.\n"
    )
    print("### Health check pass (probe every enabled daemon, record it), timed in the bench\n")
    table(["daemons", "median", "max"], [[r["daemons"], ms(r["median"]), ms(r["max"])] for r in health])

    print("### A backlog drained (builds that take no time)\n")
    table(
        [
            "daemons",
            "engine lines per build",
            "builds",
            "seconds",
            "builds/min",
            "not succeeded",
            "run_build task p50",
            "p95",
        ],
        [
            [
                r["daemons"],
                r["lines"],
                r["builds"],
                f"{r['seconds']:.1f}",
                f"{r['per_minute']:.0f}",
                r["failed"],
                ms(pct(r["run_build"], 0.5)),
                ms(pct(r["run_build"], 0.95)),
            ]
            for r in backlogs
        ],
    )
    print("CPU during the backlog, percent of one core (2 cores = 200 %), and CPU ms per build:\n")
    table(
        ["daemons", "lines", *CPU_GROUPS],
        [
            [
                r["daemons"],
                r["lines"],
                *(f"{r['cpu'][g]:.0f} % / {r['cpu_ms_per_build'][g]:.1f} ms" for g in CPU_GROUPS),
            ]
            for r in backlogs
        ],
    )

    print("The bench database's counters per build (pg_stat_database; the CPU above is the whole server's):\n")
    table(
        ["daemons", "lines", *DATABASE_COUNTERS],
        [
            [r["daemons"], r["lines"], *(f"{r['database_per_build'][k]:.1f}" for k in DATABASE_COUNTERS)]
            for r in backlogs
        ],
    )
    for r in backlogs:
        for reason, number in sorted(r["why_not"].items(), key=lambda item: -item[1]):
            print(f"- {r['daemons']} daemons: {number} not succeeded: {reason}")
    print()
    print("PostgreSQL sessions of the farm during the backlog, sampled every half second:\n")
    table(
        ["daemons", "lines", "sessions mean", "max", "waiting for a lock: mean", "max"],
        [
            [
                r["daemons"],
                r["lines"],
                f"{statistics.fmean(c for c, _ in r['sessions']):.1f}",
                max(c for c, _ in r["sessions"]),
                f"{statistics.fmean(w for _, w in r['sessions']):.1f}",
                max(w for _, w in r["sessions"]),
            ]
            for r in backlogs
            if r["sessions"]
        ],
    )

    print("### Dispatch passes during the backlogs (timed in the bench, beside the workers' own)\n")
    buckets: dict[str, list] = {}
    for r in backlogs:
        for waiting, assigned, seconds in r["passes"]:
            buckets.setdefault(_bucket(waiting), []).append((assigned, seconds))
    table(
        ["jobs waiting", "passes", "assigned per pass (median)", "pass p50", "pass max"],
        [
            [key, len(v), statistics.median(a for a, _ in v), ms(pct([s for _, s in v], 0.5)), ms(max(s for _, s in v))]
            for key, v in sorted(buckets.items(), key=lambda kv: _BUCKETS.index(kv[0]))
        ],
    )
    print("The first pass of each backlog, which fills the opened pool:\n")
    table(
        ["daemons", "waiting", "assigned", "duration"],
        [[r["daemons"], r["passes"][0][0], r["passes"][0][1], ms(r["passes"][0][2])] for r in backlogs if r["passes"]],
    )
    print("The control worker's beat tasks during the backlogs (from its log):\n")
    table(
        ["daemons", "farm.dispatch runs", "p50", "max", "farm.check_health runs", "p50"],
        [
            [
                r["daemons"],
                len(r["beat_dispatch"]),
                ms(pct(r["beat_dispatch"], 0.5)),
                ms(max(r["beat_dispatch"], default=0)),
                len(r["beat_health"]),
                ms(pct(r["beat_health"], 0.5)),
            ]
            for r in backlogs
        ],
    )

    print(f"### Steady submission through the REST API, {max(args.daemons)} daemons, {args.seconds:g} s each\n")
    table(
        [
            "builds/s sent",
            "sent",
            "finished",
            "left",
            "submit p50",
            "submit p95",
            "dispatch latency p50",
            "p95",
            "p99",
            "created->finished p95",
        ],
        [
            [
                f"{r['rate']:g}",
                r["sent"],
                r["finished"],
                r["backlog_at_end"],
                ms(pct(r["submit"], 0.5)),
                ms(pct(r["submit"], 0.95)),
                ms(pct(r["waits"], 0.5)),
                ms(pct(r["waits"], 0.95)),
                ms(pct(r["waits"], 0.99)),
                ms(pct(r["ends"], 0.95)),
            ]
            for r in rates
        ],
    )
    table(
        ["builds/s sent", *(f"CPU % {g}" for g in CPU_GROUPS)],
        [[f"{r['rate']:g}", *(f"{r['cpu'][g]:.0f}" for g in CPU_GROUPS)] for r in rates],
    )

    for r in rates:
        print(f"Connections to PostgreSQL as the {r['rate']:g}/s submits ended: {_groups(r['connections'])}.  ")
    print()
    print("### Database (PostgreSQL 15, sizes with indexes and TOAST)\n")
    jobs, lines = db["jobs"], db["lines"]
    grown = db["database"] - empty["database"]
    table(
        ["jobs", "log lines", "database grew by", "per build", "build_job table per row", "log line table per line"],
        [
            [
                jobs,
                lines,
                mib(grown),
                f"{grown / max(jobs, 1) / 1024:.1f} KiB",
                f"{db['builds_buildjob'] / max(jobs, 1):.0f} B",
                f"{db['builds_buildlogline'] / max(lines, 1):.0f} B",
            ]
        ],
    )

    if long:
        report_long(long)


def report_long(long: dict) -> None:
    if long:
        print(f"### Builds that take {long['seconds']:g} s, every slot of {long['daemons']} daemons at once\n")
        table(
            [
                "builds",
                "connection limit",
                "most running at once",
                "most sessions",
                "succeeded",
                "took a second attempt",
                "connections refused (log lines)",
                "logs whole (seq 1..N, N = the job's count)",
                "first submit to last end",
            ],
            [
                [
                    long["builds"],
                    long["limit"],
                    long["max_running"],
                    long["max_sessions"],
                    long["succeeded"],
                    long["retried"],
                    long["refused"],
                    long["whole_logs"],
                    f"{long['elapsed']:.0f} s",
                ]
            ],
        )
        print(f"Connections to PostgreSQL at the most sessions, by process: {_groups(long['by_group'])}.\n")


def _groups(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


_BUCKETS = ["0", "1-49", "50-199", "200-999", ">= 1000"]


def _bucket(waiting: int) -> str:
    if waiting >= 1000:
        return ">= 1000"
    if waiting >= 200:
        return "200-999"
    if waiting >= 50:
        return "50-199"
    return "1-49" if waiting else "0"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def machine_facts(argv: list[str]) -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    memory = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        // 2**20
    )
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": f"{platform.node()} ({platform.platform()})",
        "command": " ".join([".venv/bin/python", "bench/scale.py", *argv]),
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory": f"{memory} GiB RAM",
        "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", default="8,32,128", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backlog", type=int, default=400, help="jobs per backlog phase (default 400)")
    parser.add_argument("--rates", default="5,10,20", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=20, help="length of each steady-rate phase")
    parser.add_argument("--workers", type=int, default=4, help="Celery worker processes for the build queues")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes per worker")
    parser.add_argument("--lines", type=int, default=20, help="log lines the fake engine prints per build")
    parser.add_argument("--chatty-lines", type=int, default=500, help="lines per build of a last, smaller backlog")
    parser.add_argument("--long-seconds", type=float, default=30, help="length of the long builds (0: no such phase)")
    parser.add_argument("--long-daemons", type=int, default=32, help="daemons (x2 slots) the long builds fill")
    parser.add_argument("--connection-limit", type=int, default=40, help="connections the bench's database takes")
    parser.add_argument("--conn-max-age", type=int, default=0, help="GENERATOR_DB_CONN_MAX_AGE of every process")
    parser.add_argument("--only-long", action="store_true", help="run the long builds phase only")
    parser.add_argument("--keep", action="store_true", help="keep the database and the folder afterwards")
    args = parser.parse_args()
    machine = machine_facts(sys.argv[1:])
    root = Path(tempfile.mkdtemp(prefix="gscale-", dir="/tmp"))
    say(f"folder {root}; database {DATABASE}")
    recreate_database(args.connection_limit)
    sup = lf.Supervisor(root / "run")
    try:
        stack = start_stack(root, args)
        say("farm up")
        token = operator_token()
        if args.only_long:
            long = long_builds_phase(stack, args)
            machine["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"## Measured {machine['date']} on {machine['host']}\n\n`{machine['command']}`\n")
            print(f"Load average before {machine['load_before']}, after {machine['load_after']}.\n")
            report_long(long)
            return
        empty = database_figures()
        health = health_passes(stack, args.daemons)
        backlogs = [backlog_phase(stack, size, args.backlog, args.lines, timeout=600) for size in args.daemons]
        if args.chatty_lines:
            chatty = backlog_phase(stack, max(args.daemons), args.backlog // 4, args.chatty_lines, timeout=600)
            backlogs.append(chatty)
        open_pool(stack, max(args.daemons), draining=False)
        rates = [rate_phase(stack, token, rate, args.seconds, settle=30) for rate in args.rates]
        db = database_figures()
        long = long_builds_phase(stack, args) if args.long_seconds else None
        machine["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        report(args, machine, health, backlogs, rates, db, empty, long)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        sup.stop_all(first=["control", *(n for n in sup.names() if n.startswith("worker")), "web"])
        if not args.keep:
            drop_database()
            shutil.rmtree(root, ignore_errors=True)
        say("stopped")


if __name__ == "__main__":
    main()
