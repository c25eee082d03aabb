"""Submit and dispatch against a long history: does a submit slow down as jobs pile up?

    .venv/bin/python bench/history.py [--jobs 1000000] [--recent 100000] [--submits 200]
        [--postgres postgres://postgres@127.0.0.1:5432]

Fills a fresh database (a SQLite file, or a new database on the PostgreSQL
server given, dropped at the end) with `--jobs` finished builds, `--recent` of
them given a daemon in the last hour, spread over ten teams and 1,000 image
repositories, the rest over the weeks before; one INSERT ... SELECT per 100,000
rows, so a million takes a minute, not an hour. Then a user of the team that
owns the namespace submits `--submits` builds through the seed API (`GET
/b1/build`, Django's test client, in this process: token, checks, quotas, job,
audit) with every check on: the team has a concurrency and an hourly limit (so
the quota counts run), and two daemons have room (so the dispatch pass after
the commit gives the build one, looking for the warm daemon). The submits go
to builds of the image repositories of the history.

Printed: the submit's time p50 / p95 / max (the answer and the dispatch pass
after its commit, as daphne spends it), the queries per submit, and the time
of each query kind summed over the run: a query that reads the history shows
at the top. No Celery worker: the dispatched builds' messages go to an
in-memory broker. A private Redis is started for the dispatcher's ask counter.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from scripts import localfarm as lf  # noqa: E402

CHUNK = 100_000
TEAMS = 10
IMAGES = 1000
REGISTRY = "localhost:5000"


def setup(folder: Path, database_url: str, redis_url: str) -> None:
    os.environ.setdefault("GENERATOR_SECRET_KEY", "bench-only")
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    # Classic: a BuildKit build has its daemon to itself, and two daemons would take only two.
    os.environ["GENERATOR_DEFAULT_BUILDER"] = "classic"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from generator_site.celery import app

    app.conf.broker_url = "memory://"  # no worker consumes the dispatched builds
    contexts = {**settings.STORAGES["contexts"], "OPTIONS": {"location": str(folder / "contexts")}}
    logs = {**settings.STORAGES["logs"], "OPTIONS": {"location": str(folder / "logs")}}
    settings.STORAGES = {**settings.STORAGES, "contexts": contexts, "logs": logs}
    settings.ALLOWED_HOSTS = ["*"]
    settings.STATIC_ROOT = folder / "static"
    call_command("migrate", verbosity=0)


def the_farm():
    """Two daemons with room, ten teams (the first owns the registry's namespace,
    with limits on) and a user of it with a token."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from rest_framework.authtoken.models import Token

    from builds.models import Registry
    from pool.models import DockerDaemon
    from teams.models import Membership, Namespace, Team

    Registry.objects.create(host=REGISTRY)
    daemons = [
        DockerDaemon.objects.create(name=f"history-{n}", url="tcp://127.0.0.1:9", capacity=30_000) for n in range(2)
    ]
    teams = [Team.objects.create(slug=f"team-{n}", name=f"Team {n}") for n in range(TEAMS)]
    first = teams[0]
    first.max_concurrent_builds, first.max_builds_per_hour, first.over_limit = 100_000, 1_000_000, "reject"
    first.save()
    Namespace.objects.create(team=first, prefix=f"{REGISTRY}/")
    user = get_user_model().objects.create(username="submitter")
    user.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
    Membership.objects.create(team=first, user=user, role="member")
    return daemons, teams, user, Token.objects.create(user=user).key


def fill(jobs: int, recent: int, daemons, teams, user) -> None:
    """`jobs` finished builds: row x (from 1) was given its daemon x * 3600 / recent
    seconds ago while x <= recent, then 2 seconds apart before that hour."""
    from django.db import connection

    from builds.models import BuildJob

    postgres = connection.vendor == "postgresql"

    def ago(seconds: str) -> str:
        if postgres:
            return f"(now() - ({seconds}) * interval '1 second')"
        return f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || ({seconds}) || ' seconds')"

    seconds = f"CASE WHEN x <= {recent} THEN x * 3600.0 / {max(recent, 1)} ELSE 3600 + (x - {recent}) * 2 END"
    # Run with parameters: a literal % is written %% (both backends take it so).
    varying = {
        "id": "lpad(to_hex(x), 32, '0')" if postgres else "printf('%%032x', x)",
        "image": f"'{REGISTRY}/history/app-' || (x %% {IMAGES}) || ':' || x",
        "untagged_image": f"'{REGISTRY}/history/app-' || (x %% {IMAGES})",
        "team_id": f"{teams[0].pk} + (x %% {TEAMS})",
        "daemon_id": f"{daemons[0].pk} + (x %% 2)",
        "status": "'succeeded'",
        "created_at": ago(f"{seconds} + 5"),
        "dispatched_at": ago(seconds),
        "started_at": ago(seconds),
        "push_started_at": ago(f"{seconds} - 1"),
        "finished_at": ago(f"{seconds} - 2"),
        "submitted_by_id": str(user.pk),
        "dockerfile": "'FROM busybox\nRUN echo history\n'",
        "builder": "'classic'",
    }
    columns, values, params = [], [], []
    for field in BuildJob._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.column in varying:
            values.append(varying[field.column])
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
    for start in range(0, jobs, CHUNK):
        end = min(jobs, start + CHUNK)
        numbers = f"WITH RECURSIVE n(x) AS (SELECT {start + 1} UNION ALL SELECT x + 1 FROM n WHERE x < {end})"
        sql = f"INSERT INTO builds_buildjob ({', '.join(columns)}) {numbers} SELECT {', '.join(values)} FROM n"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        print(f"  {end:,} jobs", file=sys.stderr, flush=True)
    if postgres:  # as autovacuum would have by then; nothing runs ANALYZE on a SQLite farm
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE builds_buildjob")


def kind_of(sql: str) -> str:
    """A query's shape, its literals taken out: the same query of every submit adds up."""
    shape = re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", sql)
    return re.sub(r"\s+", " ", shape)[:160]


# The phases of a submit, timed by wrapping the function each calls by the name
# it calls it: (module, name). Whatever is not here is Django's (middleware,
# the view, the job's INSERT and the commit).
PHASES = {
    "token": ("builds.seed_api", "user_for_token_header"),
    "permission": ("builds.seed_api", "can_submit"),
    "registry allowed": ("builds.jobs.services", "check_registry_allowed"),
    "team (ownership)": ("builds.jobs.ownership", "team_for_build"),
    "quotas": ("builds.jobs.quotas", "check_submit"),
    "pool exists": ("builds.jobs.services", "ensure_pool_exists_or_raise"),
    "audit event": ("builds.jobs.services", "audit"),
    "dispatch pass": ("builds.jobs.dispatch_soon", "dispatch"),
}


class PhaseTimer:
    """Wall time, this thread's CPU time (what a busy machine inflates least) and
    queries of each phase, summed over the submits."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.queries: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        import importlib

        from django.db import connection

        for phase, (module_name, name) in PHASES.items():
            module = importlib.import_module(module_name)
            setattr(module, name, self._timed(phase, getattr(module, name), connection))

    def _timed(self, phase: str, function, connection):
        def timed(*args, **kwargs):
            queries, started, cpu = len(connection.queries_log), time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
                self.cpu[phase] += time.thread_time() - cpu
                self.queries[phase] += len(connection.queries_log) - queries

        return timed


def submit_many(token: str, count: int, *, drained: bool = False, phases: PhaseTimer | None = None) -> Submits:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from builds.models import BuildJob

    client = Client()
    headers = {"Authorization": f"Token {token}"}
    dockerfile = base64.b64encode(b"FROM busybox\nRUN echo submitted\n").decode()
    run = secrets.token_hex(3)
    done = Submits()
    for n in range(count):
        params = {"imagename": f"{REGISTRY}/history/app-{n % IMAGES}:{run}-{n}", "dockerfile": dockerfile}
        passes = phases.seconds["dispatch pass"] if phases else 0.0
        with CaptureQueriesContext(connection) as captured:
            started, cpu = time.perf_counter(), time.thread_time()
            response = client.get("/b1/build", params, headers=headers)
            done.times.append(time.perf_counter() - started)
            done.cpu += time.thread_time() - cpu
        if phases:  # in daphne the pass runs after the answer (builds/jobs/dispatch_soon.py)
            done.answers.append(done.times[-1] - (phases.seconds["dispatch pass"] - passes))
        if response.status_code != 200:
            raise SystemExit(f"submit {n}: {response.status_code} {response.content[:300]!r}")
        done.queries += len(captured.captured_queries)
        for query in captured.captured_queries:
            done.per_kind[kind_of(query["sql"])] += float(query["time"])
    given = BuildJob.objects.filter(image__contains=f":{run}-", daemon__isnull=False).count()
    if given != (0 if drained else count):
        raise SystemExit(f"{given} of the {count} submitted builds were given a daemon")
    return done


@dataclasses.dataclass
class Submits:
    times: list[float] = dataclasses.field(default_factory=list)  # wall seconds of each
    answers: list[float] = dataclasses.field(default_factory=list)  # the same without the dispatch pass
    cpu: float = 0.0  # this thread's CPU seconds, all of them
    queries: int = 0  # all of them
    per_kind: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))  # database seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--recent", type=int, default=100_000, help="of --jobs, given a daemon in the last hour")
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--postgres", metavar="URL", default="", help="a PostgreSQL server, e.g. postgres://...:5432")
    parser.add_argument(
        "--drained",
        action="store_true",
        help="both daemons draining, as bench/submission.py sets them: the pass after a submit gives no build a daemon",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="history-"))
    supervisor = lf.Supervisor(folder / "run")
    server, name = args.postgres.rstrip("/"), f"bench_history_{secrets.token_hex(4)}"
    try:
        port = lf.free_port()
        lf.start_redis(supervisor, port, folder / "redis")
        if server:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
                connection.execute(f"CREATE DATABASE {name}")
        setup(
            folder,
            f"{server}/{name}" if server else f"sqlite:///{folder}/history.sqlite3",
            f"redis://127.0.0.1:{port}/0",
        )
        daemons, teams, user, token = the_farm()
        if args.drained:
            type(daemons[0]).objects.update(draining=True)
        started = time.perf_counter()
        fill(args.jobs, args.recent, daemons, teams, user)
        filled = time.perf_counter() - started
        submit_many(token, 5, drained=args.drained)  # connections, caches, the first queries' plans
        phases = PhaseTimer()
        phases.install()
        done = submit_many(token, args.submits, drained=args.drained, phases=phases)
    finally:
        from django.db import connections

        connections.close_all()
        if server:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
                connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        supervisor.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
    database = "PostgreSQL" if server else "SQLite"
    print(f"\n{database}, {args.jobs:,} jobs ({args.recent:,} in the last hour), filled in {filled:.0f} s")
    each = args.submits
    ms = [t * 1000 for t in done.times]
    room = "no daemon with room (--drained)" if args.drained else "two daemons with room"
    queries = done.queries / each
    print(f"{each} submits (GET /b1/build and the dispatch pass after it, {room}), {queries:.1f} queries each:")
    p50, p95 = percentile(ms, 0.5), percentile(ms, 0.95)
    print(f"  p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms")
    answers = [t * 1000 for t in done.answers]
    p50, p95 = percentile(answers, 0.5), percentile(answers, 0.95)
    print(f"  the answer alone (in daphne the dispatch pass runs after it): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    database_ms = sum(done.per_kind.values()) * 1000 / each
    print(f"  of which waiting for the database {database_ms:.1f} ms per submit (mean); the rest is Python")
    print(f"  CPU of this process per submit: {done.cpu * 1000 / each:.2f} ms")
    print("per phase (quotas run twice: before the job's transaction and in it, with the team's row locked):")
    print("| phase | queries per submit | CPU ms per submit | wall ms per submit |")
    print("| --- | --- | --- | --- |")
    for phase in PHASES:
        cpu, wall, queries = (phases.cpu[phase], phases.seconds[phase], phases.queries[phase])
        print(f"| {phase} | {queries / each:.1f} | {cpu * 1000 / each:.2f} | {wall * 1000 / each:.2f} |")
    rest_cpu, rest_wall = done.cpu - sum(phases.cpu.values()), sum(done.times) - sum(phases.seconds.values())
    rest_queries = done.queries - sum(phases.queries.values())
    print(
        f"| the rest (Django's request and middleware, the checks, the job's INSERT, the commit)"
        f" | {rest_queries / each:.1f} | {rest_cpu * 1000 / each:.2f} | {rest_wall * 1000 / each:.2f} |"
    )
    print("the queries that took longest, summed over the submits (ms per submit):")
    for kind, seconds in sorted(done.per_kind.items(), key=lambda item: -item[1])[:6]:
        print(f"  {seconds * 1000 / each:7.2f}  {kind}")


if __name__ == "__main__":
    main()
