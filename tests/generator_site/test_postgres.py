"""Sessions that cannot outlive their client (generator_site/postgres.py): on
PostgreSQL every connection ends a transaction left idle and probes a silent
TCP peer; SQLite is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction

from builds.logs.writer import _insert_lines
from builds.models import BuildJob, BuildLogLine
from generator_site.postgres import session_options
from lib.control_tasks import statement_limits

ROOT = Path(__file__).resolve().parents[2]


def test_the_options_ask_for_the_timeout_and_keepalives_and_keep_the_urls_own():
    options = session_options(
        {"options": "-c search_path=farm", "sslmode": "require"},
        idle_in_transaction_seconds=2.5,
        keepalive_idle_seconds=30,
        keepalive_interval_seconds=10,
        keepalive_count=3,
    )
    assert options["sslmode"] == "require"
    assert (options["keepalives"], options["keepalives_idle"], options["keepalives_count"]) == (1, 30, 3)
    assert options["tcp_user_timeout"] == 60_000  # 30 + 10 x 3 seconds
    assert options["options"].startswith("-c search_path=farm -c idle_in_transaction_session_timeout=2500ms ")
    assert "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3" in options["options"]


@pytest.mark.django_db
def test_every_session_shows_the_timeout_and_the_keepalives_and_sqlite_is_left_alone():
    options = settings.DATABASES["default"].get("OPTIONS", {})
    if connection.vendor != "postgresql":
        assert "keepalives" not in options and "options" not in options
        assert options["transaction_mode"] == "IMMEDIATE"
        return
    shown = {}
    with connection.cursor() as cursor:
        for name in ("idle_in_transaction_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_count"):
            cursor.execute(f"SHOW {name}")
            shown[name] = cursor.fetchone()[0]
    # The suite's own settings: lease 60 s, heartbeat 10 s, so (60 - 10) / 2.
    assert shown == {
        "idle_in_transaction_session_timeout": "25s",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_count": "3",
    }


@pytest.mark.django_db(transaction=True)
def test_a_log_writers_session_left_inside_its_transaction_is_ended_and_its_lines_free_again():
    """What a build host cut between the log INSERT and its COMMIT leaves behind (issue 25)."""
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", status="building")
    outcome: dict[str, object] = {}

    def vanished_writer() -> None:
        mine = connections["default"]  # this thread's own connection
        if mine.vendor == "postgresql":
            mine.settings_dict = {**mine.settings_dict, "OPTIONS": short_idle_options(0.5)}
        try:
            with transaction.atomic():
                _insert_lines(job.id, [(1, "the cut host's line")])
                outcome["inserted"] = True
                time.sleep(2)  # the host is gone: nothing more comes from it
        except DatabaseError as exc:
            outcome["ended"] = str(exc)
        finally:
            mine.close()

    writer = threading.Thread(target=vanished_writer)
    writer.start()
    while "inserted" not in outcome:
        time.sleep(0.05)
    if connection.vendor == "postgresql":
        time.sleep(1)
        started = time.monotonic()
        with statement_limits(lock_timeout=3, statement_timeout=10):  # the reaper's line, as the reaper writes it
            _insert_lines(job.id, [(1, "[generator] worker lost")])
        assert time.monotonic() - started < 1, "the reaper's line waited on the gone session"
    writer.join()
    if connection.vendor == "postgresql":
        assert "ended" in outcome, outcome
        assert list(BuildLogLine.objects.filter(job=job).values_list("text", flat=True)) == ["[generator] worker lost"]
    else:  # one machine: the writer was never cut off, its transaction committed
        assert list(BuildLogLine.objects.filter(job=job).values_list("text", flat=True)) == ["the cut host's line"]


def short_idle_options(seconds: float) -> dict:
    base = {k: v for k, v in settings.DATABASES["default"]["OPTIONS"].items() if k != "options"}
    return session_options(
        base,
        idle_in_transaction_seconds=seconds,
        keepalive_idle_seconds=settings.GENERATOR_DB_KEEPALIVE_IDLE_SECONDS,
        keepalive_interval_seconds=settings.GENERATOR_DB_KEEPALIVE_INTERVAL_SECONDS,
        keepalive_count=settings.GENERATOR_DB_KEEPALIVE_COUNT,
    )


def settings_process(**env: str) -> subprocess.CompletedProcess:
    """A fresh process reading the settings from this environment."""
    script = "from django.conf import settings; print(settings.GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENERATOR_")}
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, "DJANGO_SETTINGS_MODULE": "generator_site.settings", "GENERATOR_SECRET_KEY": "k", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_the_idle_timeout_follows_the_lease_and_may_not_outlast_it():
    assert settings_process().stdout.strip() == "25.0"  # (60 - 10) / 2
    fast = settings_process(GENERATOR_LEASE_SECONDS="6", GENERATOR_HEARTBEAT_SECONDS="1")
    assert fast.stdout.strip() == "2.5"
    assert settings_process(GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS="40").stdout.strip() == "40.0"
    too_long = settings_process(GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS="55")
    assert too_long.returncode != 0 and "must be gone before its lease runs out" in too_long.stderr
