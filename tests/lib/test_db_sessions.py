"""A running build holds a database session only while it writes.

The log writer's pump is the build's waiting room: a quiet build lets its
connection go after GENERATOR_DB_IDLE_SECONDS and opens one for its next line.
On PostgreSQL the session itself is checked in pg_stat_activity. A write that
meets a lost or locked database is tried again, not failed.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.db import connection, connections

from builds.logs.writer import LogWriter
from builds.models import BuildJob, BuildLogLine
from lib import db_sessions

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(team):
    return BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", status="building")


def session_alive(pid: int) -> bool:
    """From a connection of this thread's own: is the backend `pid` still there?"""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] == 1


def test_a_build_that_waits_on_its_daemon_holds_no_session(job, settings):
    settings.GENERATOR_DB_IDLE_SECONDS = 0.3
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=0.05)
    builds_connection = connections["default"]  # the pump's caller's: the build's thread
    seen: dict[str, object] = {}

    def build(emit):
        emit("Step 1/2 : RUN sleep 2")
        time.sleep(0.15)  # stored, and the session still open: it was just used
        seen["open while writing"] = builds_connection.connection is not None
        if connection.vendor == "postgresql":
            seen["backend"] = builds_connection.connection.info.backend_pid
        time.sleep(1.0)  # the step runs silently: the daemon works, the build waits
        seen["open while waiting"] = builds_connection.connection is not None
        if connection.vendor == "postgresql":
            seen["backend alive while waiting"] = session_alive(seen["backend"])
            connections["default"].close()
        emit("Step 2/2 : done")
        return "built"

    assert writer.pump(build) == "built"
    assert seen["open while writing"] is True
    assert seen["open while waiting"] is False
    if connection.vendor == "postgresql":
        assert seen["backend alive while waiting"] is False
    stored = list(BuildLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text"))
    assert stored == [(1, "Step 1/2 : RUN sleep 2"), (2, "Step 2/2 : done")]
    assert BuildJob.objects.get(pk=job.pk).log_line_count == 2


def test_a_chatty_build_keeps_its_session_between_lines(job, settings):
    settings.GENERATOR_DB_IDLE_SECONDS = 5
    writer = LogWriter(job.id, last_seq=0, batch_lines=500, flush_seconds=0.05)
    builds_connection = connections["default"]
    opened: set[int] = set()

    def build(emit):
        for n in range(10):
            emit(f"line {n}")
            time.sleep(0.1)  # quiet spells shorter than the idle time
            opened.add(id(builds_connection.connection))
        return None

    writer.pump(build)
    assert len(opened) == 1  # one connection, never let go and opened again
    assert BuildLogLine.objects.filter(job=job).count() == 10


def test_a_write_that_meets_a_lost_or_locked_database_is_tried_again(job):
    writer = LogWriter(job.id, last_seq=0, batch_lines=1, flush_seconds=60)
    writer.write("before")
    release = threading.Event()
    if connection.vendor == "postgresql":
        # The server ends the build's session (a restart, an administrator).
        pid = connection.connection.info.backend_pid

        def other():
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            connections["default"].close()
            release.set()
    else:
        # Another writer holds SQLite's write lock for a second; the build's
        # connection gives up at once instead of waiting its 30 s.
        connection.connection.execute("PRAGMA busy_timeout = 50")
        path = connection.settings_dict["NAME"]

        def other():
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            release.set()
            time.sleep(1.0)
            locker.execute("ROLLBACK")
            locker.close()

    thread = threading.Thread(target=other)
    thread.start()
    assert release.wait(5)
    writer.write("after")  # fails once (killed session / locked), then goes in
    thread.join()
    stored = list(BuildLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text"))
    assert stored == [(1, "before"), (2, "after")]


def test_retrying_gives_up_after_its_time_and_never_inside_a_transaction(job):
    from django.db import OperationalError, transaction

    attempts = []

    def locked():
        attempts.append(time.monotonic())
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM a_table_that_is_not_there")

    with pytest.raises(Exception) as raised:
        db_sessions.retrying(locked, "read", seconds=0.5)
    if connection.vendor == "sqlite":  # "no such table" is an OperationalError there
        assert isinstance(raised.value, OperationalError)
        assert len(attempts) > 1
        attempts.clear()
        with transaction.atomic(), pytest.raises(OperationalError):
            db_sessions.retrying(locked, "read", seconds=5)
        assert len(attempts) == 1
    else:  # PostgreSQL calls it a programming error: not retried
        assert len(attempts) == 1
