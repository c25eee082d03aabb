"""What knowing which daemons have a live worker costs, from 8 to 1,000 daemons.

The health check asks it every GENERATOR_HEALTH_INTERVAL (10 s). Now: one Redis
read of the workers' heartbeats (pool/workers.py), a read of the daemons'
names and an UPDATE of those whose answer changed
(pool/health.py:record_workers). Before: a Celery broadcast (`inspect
active_queues`, waiting its 1 s timeout for replies, since it cannot know how
many will come) and a read of every daemon row, an UPDATE per changed one.

    .venv/bin/python bench/liveness.py [--daemons 8,32,128,1000] [--postgres URL]

Starts its own Redis (scripts/localfarm.py) and a SQLite database in a
temporary folder, or a new database on a PostgreSQL server (bench/rig.py). Each
simulated daemon has a worker of its own that beats; in every pass one worker
in ten has gone quiet (its beat is older than the stale time) or come back,
so the UPDATEs have rows to change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import localfarm as lf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", default="8,32,128,1000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--passes", type=int, default=30, help="passes timed per pool size (default 30)")
    parser.add_argument("--postgres", metavar="URL", default="", help="a PostgreSQL server; default SQLite")
    args = parser.parse_args()
    from bench.rig import database

    root = Path(tempfile.mkdtemp(prefix="glive-", dir="/tmp"))
    sup = lf.Supervisor(root / "run")
    try:
        port = lf.free_port()
        lf.start_redis(sup, port, root / "redis")
        with database(root, args.postgres) as url:
            os.environ.update(
                DATABASE_URL=url,
                REDIS_URL=f"redis://127.0.0.1:{port}/0",
                GENERATOR_SECRET_KEY="bench",
                GENERATOR_VAR_DIR=str(root / "var"),
                DJANGO_SETTINGS_MODULE="generator_site.settings",
                GENERATOR_LOG_LEVEL="WARNING",
            )
            run(args)
    finally:
        sup.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from generator_site.celery import app
    from pool import health, workers
    from pool.models import DockerDaemon

    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor}; {args.passes} passes per pool size; medians and maxima in ms\n")
    header = ["daemons", "heartbeats read (Redis)", "record_workers (read, UPDATE the changed)", "now: total p50 / max"]
    header += ["before: per-row loop p50", "before: broadcast p50"]
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    stale = settings.GENERATOR_WORKER_STALE_SECONDS
    for size in args.daemons:
        DockerDaemon.objects.all().delete()
        workers._redis().delete(workers.KEY)
        names = [f"sim{i:04d}" for i in range(size)]
        DockerDaemon.objects.bulk_create(DockerDaemon(name=n, url="tcp://127.0.0.1:9", capacity=2) for n in names)
        read, record, total, old_loop = [], [], [], []
        for number in range(args.passes):
            now = time.time()
            for index, name in enumerate(names):
                quiet = (index + number) % 10 == 0  # a tenth gone quiet this pass, different ones each time
                workers.beat([f"build.{name}"], f"w{index}@host", now=now - (stale + 5 if quiet else 1))
            started = time.perf_counter()
            live = workers.live_queues()
            read_done = time.perf_counter()
            health.record_workers(live)
            done = time.perf_counter()
            read.append(read_done - started)
            record.append(done - read_done)
            total.append(done - started)
            started = time.perf_counter()
            _old_record_workers(DockerDaemon, {q for q in live if not q.endswith("0")})
            old_loop.append(time.perf_counter() - started)
        broadcast = []
        for _ in range(3):
            started = time.perf_counter()
            app.control.inspect(timeout=1.0).active_queues()
            broadcast.append(time.perf_counter() - started)
        print(
            f"| {size:,} | {ms(statistics.median(read))} | {ms(statistics.median(record))} |"
            f" {ms(statistics.median(total))} / {ms(max(total))} | {ms(statistics.median(old_loop))} |"
            f" {ms(statistics.median(broadcast))} (no worker answering) |"
        )


def _old_record_workers(model, served_queues: set[str]) -> None:
    """pool/health.py's record_workers before the heartbeats: every row read, an UPDATE per change."""
    for daemon in model.objects.all():
        online = daemon.queue in served_queues
        if online != daemon.worker_online:
            model.objects.filter(pk=daemon.pk).update(worker_online=online)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


if __name__ == "__main__":
    main()
