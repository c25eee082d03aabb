"""Database size per million log lines, before and after the log archive.

Fills a new database with finished jobs whose lines are BuildKit output as the
farm stores it (the lines of tests/logs/*.log, with their step numbers, timings
and digests varied per job), measures it, runs the archive
(builds/logs/archive.py, every job due) and measures again: the database, the
log store's objects, the time to archive and to read an archived log back.

    .venv/bin/python bench/log_archive.py [--lines 1000000] [--postgres postgres://postgres@127.0.0.1:5432]

SQLite by default (a file in a temporary folder); `--postgres` makes a new
database on that server and drops it at the end (bench/rig.py). PostgreSQL keeps
deleted rows' space until VACUUM: the figures after the archive are given both
as they are (the space autovacuum hands to new rows) and after VACUUM FULL
(what a dump or a new server would hold).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = sorted((ROOT / "tests" / "logs").glob("*.log"))


def sample_lines() -> list[str]:
    lines = []
    for path in SAMPLES:
        lines += [line for line in path.read_text().splitlines() if line.strip()]
    return lines


def varied(line: str, rng: random.Random) -> str:
    """The line with this job's own numbers: timings, hashes, ports."""
    line = re.sub(r"[0-9a-f]{64}", lambda _: secrets.token_hex(32), line)
    line = re.sub(r"[0-9a-f]{8}\b", lambda _: secrets.token_hex(4), line)
    return re.sub(r"\b\d+\.\d+\b", lambda _: f"{rng.uniform(0, 300):.3f}", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="log lines in all (default 1,000,000)")
    parser.add_argument("--per-job", type=int, default=500, help="lines per job (default 500)")
    parser.add_argument("--postgres", metavar="URL", default="", help="a PostgreSQL server; default SQLite")
    args = parser.parse_args()

    from bench.rig import database

    root = Path(tempfile.mkdtemp(prefix="glogbench-"))
    try:
        with database(root, args.postgres) as url:
            os.environ.update(
                DATABASE_URL=url,
                GENERATOR_SECRET_KEY="bench",
                GENERATOR_VAR_DIR=str(root / "var"),
                DJANGO_SETTINGS_MODULE="generator_site.settings",
                GENERATOR_LOG_LEVEL="WARNING",
            )
            run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from builds.logs import archive as log_archive
    from builds.logs.writer import _insert_lines, read_lines
    from builds.models import BuildJob

    call_command("migrate", verbosity=0)
    vendor = connection.vendor
    empty = database_bytes(connection)
    rng = random.Random(1)
    pool = sample_lines()
    jobs = max(1, args.lines // args.per_job)
    ended = timezone.now() - timedelta(days=30)
    started = time.monotonic()
    text_bytes = 0
    for number in range(jobs):
        job = BuildJob.objects.create(
            image=f"localhost:5000/bench/app{number % 50}:{number}",
            status="succeeded",
            finished_at=ended,
            log_line_count=args.per_job,
        )
        offset = rng.randrange(len(pool))
        lines = [varied(pool[(offset + i) % len(pool)], rng) for i in range(args.per_job)]
        text_bytes += sum(len(line.encode()) for line in lines)
        with transaction.atomic():
            _insert_lines(job.id, list(enumerate(lines, start=1)))
    total = jobs * args.per_job
    filled = time.monotonic() - started
    vacuum(connection)
    before = database_bytes(connection)
    per_line_before = (before - empty) / total

    started = time.monotonic()
    archived = 0
    while True:
        done, _ = log_archive.archive_due()
        if not done:
            break
        archived += done
    archive_seconds = time.monotonic() - started
    after_raw = database_bytes(connection)
    vacuum(connection, full=True)
    after = database_bytes(connection)
    store = Path(os.environ["GENERATOR_VAR_DIR"]) / "logs"
    stored = sum(path.stat().st_size for path in store.rglob("*.gz"))

    job_id = BuildJob.objects.order_by("?").values_list("id", flat=True).first()
    log_archive._cache.clear()
    started = time.monotonic()
    first, _ = read_lines(job_id, 0, max_lines=100_000, max_bytes=16 << 20)
    cold_ms = (time.monotonic() - started) * 1000
    started = time.monotonic()
    read_lines(job_id, args.per_job // 2, max_lines=1, max_bytes=1)
    warm_ms = (time.monotonic() - started) * 1000

    mib = 1 << 20
    million = 1_000_000 / total
    print(f"database: {vendor}; {jobs:,} finished jobs of {args.per_job} lines = {total:,} lines")
    print(f"  line text: {text_bytes / total:.0f} bytes a line on average ({text_bytes / mib:.1f} MiB)")
    print(f"  filled in {filled:.1f} s; empty database {empty / mib:.1f} MiB")
    print(f"  before: database {before / mib:.1f} MiB, {per_line_before:.0f} bytes per line stored")
    print(f"          = {per_line_before * 1_000_000 / mib:.1f} MiB per million lines")
    print(f"  archive: {archived:,} jobs in {archive_seconds:.1f} s ({total / archive_seconds:,.0f} lines/s)")
    print(
        f"  after:  database {after_raw / mib:.1f} MiB as left (deleted rows' space reusable),"
        f" {after / mib:.1f} MiB after VACUUM{' FULL' if vendor == 'postgresql' else ''}"
    )
    print(
        f"          = {(after - empty) * million / mib:.2f} MiB per million lines in the database"
        f" (the {jobs:,} job rows and their archive rows)"
    )
    print(
        f"          + log store {stored / mib:.1f} MiB = {stored * million / mib:.1f} MiB per million lines"
        f" ({stored / total:.1f} bytes a line, {text_bytes / stored:.1f}x smaller than the text)"
    )
    print(
        f"  read back: a whole {args.per_job}-line log {cold_ms:.1f} ms from the store,"
        f" one line of it {warm_ms:.2f} ms from the reader's cache ({len(first)} lines)"
    )


def database_bytes(connection) -> int:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_database_size(current_database())")
            return cursor.fetchone()[0]
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        return cursor.fetchone()[0]


def vacuum(connection, full: bool = False) -> None:
    """PostgreSQL: VACUUM (FULL) ANALYZE, outside a transaction; SQLite: VACUUM."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM FULL ANALYZE" if full else "VACUUM ANALYZE")
        elif full:
            cursor.execute("VACUUM")


if __name__ == "__main__":
    main()
