"""What a Prometheus scrape of /metrics costs with a million finished jobs in the table.

    .venv/bin/python bench/metrics_scrape.py [--jobs 1000000] [--postgres postgres://postgres@127.0.0.1:5432]

Makes a database as the other benchmarks do (bench/rig.py: a SQLite file in a
temporary folder, or a new database on the PostgreSQL server, dropped at the
end) and its own Redis, fills the job table with `--jobs` finished jobs of
`--repositories` repositories on `--daemons` daemons (bulk inserts, not the
service: only the rows matter), plus a few active ones. The figures the farm
keeps as jobs end are then made from those rows by the migration that does so
for a farm's older jobs (builds/migrations/0015), itself timed.

Then, in this process, through the view itself (no HTTP):
- before: /metrics as main had it (the commit this branch left main at, read
  from git), which reads every finished job's timestamps on each scrape;
- after: /metrics now (builds/metrics/figures.py);
- what ending a job costs now (the transition, its figures included).
Prints the medians; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import rig  # noqa: E402
from scripts import localfarm as lf  # noqa: E402

# The commit of main this branch began from: its ops.py (then in builds/, now in builds/metrics/) is "before".
BEFORE_COMMIT = "c43bd5f"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repositories", type=int, default=50)
    parser.add_argument("--daemons", type=int, default=32)
    parser.add_argument("--postgres", default="", help="a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes timed after (before: 3)")
    parser.add_argument("--profile", action="store_true", help="print where one scrape spends its time")
    parser.add_argument("--no-before", action="store_true", help="skip main's scrape (minutes at a million jobs)")
    args = parser.parse_args()
    print(rig.machine_note())
    with tempfile.TemporaryDirectory(prefix="gmetrics-") as folder:
        root = Path(folder)
        sup = lf.Supervisor(root / "run")
        try:
            port = lf.free_port()
            lf.start_redis(sup, port, root / "redis")
            with rig.database(root, args.postgres) as database_url:
                os.environ.update(
                    DATABASE_URL=database_url,
                    REDIS_URL=f"redis://127.0.0.1:{port}/0",
                    GENERATOR_SECRET_KEY=secrets.token_urlsafe(40),
                    GENERATOR_VAR_DIR=str(root / "var"),
                    DJANGO_SETTINGS_MODULE="generator_site.settings",
                )
                run(args)
        finally:
            sup.stop_all()


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    call_command("migrate", "builds", "0014", verbosity=0)  # 0015 runs again once the jobs are in
    print(f"database: {connection.vendor}, {args.jobs:,} finished jobs, {args.repositories} repositories,"
          f" {args.daemons} daemons")  # fmt: skip
    started = time.perf_counter()
    fill(args)
    print(f"filled in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    call_command("migrate", verbosity=0)  # 0015 makes the figures of the jobs already ended
    print(f"figures of the ended jobs made (migration 0015) in {time.perf_counter() - started:.1f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    from django.test import RequestFactory

    from builds.metrics import ops

    request = RequestFactory().get("/metrics")
    after = timed(lambda: ops.metrics(request), args.scrapes)
    body = ops.metrics(request).content
    print(
        f"after:  /metrics median {ms(after)} (min {min(after) * 1000:.1f} ms, {len(after)} scrapes),"
        f" {len(body):,} bytes"
    )
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(lambda: [ops.metrics(request) for _ in range(10)])
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    if not args.no_before:
        before_view = main_metrics_view()
        before = timed(lambda: before_view(request), 3)
        print(f"before: /metrics median {ms(before)} (min {min(before) * 1000:.1f} ms, 3 scrapes)")
    print(f"ending a job (transitions.fail, figures included): median {ms(end_jobs(200))} over 200 jobs")
    from builds.logs.writer import _background_publisher

    _background_publisher().drain(timeout=30)  # the status events of those jobs, before Redis stops


def fill(args: argparse.Namespace) -> None:
    """Bulk inserts: repositories, daemons, then the jobs in batches of 10,000."""
    from django.db import connection, transaction

    from builds.models import BuildJob, Repository
    from pool.models import DockerDaemon

    repositories = Repository.objects.bulk_create(
        Repository(
            full_name=f"org/app{n}",
            clone_url=f"https://x.invalid/app{n}.git",
            webhook_secret="s",
            image=f"registry.example/org/app{n}",
        )  # fmt: skip
        for n in range(args.repositories)
    )
    daemons = DockerDaemon.objects.bulk_create(
        DockerDaemon(name=f"d{n:03}", url=f"tcp://127.0.0.1:{20000 + n}", capacity=2) for n in range(args.daemons)
    )
    fields = [f for f in BuildJob._meta.concrete_fields]
    varying = {"id", "image", "repository_id", "daemon_id", "status", "created_at", "started_at", "push_started_at",
               "finished_at", "log_line_count"}  # fmt: skip
    constant = {f.attname: f.get_db_prep_save(f.get_default(), connection) for f in fields if f.attname not in varying}
    adapt = connection.ops.adapt_datetimefield_value
    quote = connection.ops.quote_name
    columns = [f.column for f in fields]
    sql = (
        f"INSERT INTO {quote(BuildJob._meta.db_table)} ({', '.join(quote(c) for c in columns)})"
        f" VALUES ({', '.join(['%s'] * len(columns))})"
    )
    origin = datetime.now(UTC) - timedelta(days=90)
    statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
    batch: list[tuple] = []
    for n in range(args.jobs):
        created = origin + timedelta(seconds=n * 90 * 86400 / args.jobs)
        started = created + timedelta(seconds=n % 97)
        push_started = started + timedelta(seconds=30 + n % 600)
        status = statuses[n % len(statuses)]
        values = {
            "id": uuid.uuid4().hex,
            "image": f"registry.example/org/app{n % args.repositories}:{n}",
            "repository_id": repositories[n % args.repositories].id if n % 5 else None,
            "daemon_id": daemons[n % args.daemons].id,
            "status": status,
            "created_at": adapt(created),
            "started_at": adapt(started),
            "push_started_at": adapt(push_started) if status == "succeeded" else None,
            "finished_at": adapt(push_started + timedelta(seconds=n % 20)),
            "log_line_count": 30,
            **constant,
        }
        batch.append(tuple(values[f.attname] for f in fields))
        if len(batch) == 10_000 or n == args.jobs - 1:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, batch)
            batch = []
    for n in range(40):  # a few active jobs, waiting and running
        BuildJob.objects.create(image=f"registry.example/org/live:{n}", status=["queued", "building"][n % 2],
                                daemon=daemons[n % args.daemons] if n % 4 else None)  # fmt: skip


def main_metrics_view():
    """main's /metrics view, from git, run against this database."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE_COMMIT}:builds/ops.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("builds._ops_of_main")
    module.__package__ = "builds"
    exec(compile(source, f"{BEFORE_COMMIT}:builds/ops.py", "exec"), module.__dict__)
    return module.metrics


def end_jobs(count: int) -> list[float]:
    from builds.jobs import transitions
    from builds.models import BuildJob
    from pool.models import DockerDaemon

    daemon = DockerDaemon.objects.first()
    times = []
    for n in range(count):
        job = BuildJob.objects.create(image=f"registry.example/org/end:{n}", status="building", daemon=daemon,
                                      started_at=datetime.now(UTC))  # fmt: skip
        started = time.perf_counter()
        transitions.fail(job.id, 1, "bench")
        times.append(time.perf_counter() - started)
    return times


def timed(call, times: int) -> list[float]:
    call()  # warm: imports, connections
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def ms(durations: list[float]) -> str:
    return f"{statistics.median(durations) * 1000:.1f} ms"


if __name__ == "__main__":
    main()
