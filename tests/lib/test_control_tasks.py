"""No control task can hold the control worker (lib/control_tasks.py):
time limits on every task beat sends there, and on PostgreSQL lock and
statement timeouts on their statements; the reaper leaves a locked job for
its next pass and reaps the others."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from celery import current_app
from django.conf import settings
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from builds import tasks
from builds.logs.writer import _insert_lines
from builds.models import BuildJob
from lib.control_tasks import CONTROL_HARD_GRACE, control_task
from scripts import localfarm as lf


def queue_of(task_name: str) -> str:
    return current_app.amqp.router.route({}, task_name)["queue"].name


def test_every_task_beat_sends_to_the_control_worker_has_a_soft_and_a_hard_time_limit():
    current_app.loader.import_default_modules()  # every app's tasks, as a worker has them
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()} | {"farm.report_status"}
    control = sorted(name for name in names if queue_of(name) == "farm")
    assert {"farm.dispatch", "farm.reap", "farm.check_health", "farm.prune_daemons", "audit.prune"} <= set(control)
    for name in control:
        task = current_app.tasks[name]
        assert task.soft_time_limit and task.time_limit == task.soft_time_limit + CONTROL_HARD_GRACE, name
    assert tasks.reap_lost_workers.soft_time_limit == settings.GENERATOR_CONTROL_TASK_SECONDS
    assert tasks.prune_daemons.soft_time_limit == settings.GENERATOR_HOUSEKEEPING_TASK_SECONDS
    # The rest go to the notify worker (threads: its sends end by their own timeouts).
    assert {queue_of(name) for name in names} == {"farm", settings.GENERATOR_NOTIFY_QUEUE}


def test_the_control_worker_runs_two_processes_so_dispatch_goes_on_beside_a_stuck_task(tmp_path):
    argv = lf.control_argv(tmp_path / "schedule")
    assert argv[argv.index("--concurrency") + 1] == "2" and argv[argv.index("--queues") + 1] == "farm"
    assert "--pool" not in argv  # prefork: the hard time limit kills and replaces a stuck process


@control_task("tests.show_limits", seconds=7)
def show_limits() -> tuple[str, str] | None:
    if connection.vendor != "postgresql":
        return None
    connection.close()  # a connection opened inside the task gets them too
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
@override_settings(GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS=0.5)
def test_a_control_tasks_statements_give_up_a_lock_and_are_limited_to_the_tasks_time():
    assert (show_limits.soft_time_limit, show_limits.time_limit) == (7, 7 + CONTROL_HARD_GRACE)
    shown = show_limits()
    if connection.vendor != "postgresql":
        assert shown is None
        return
    assert shown == ("500ms", "7s")
    with connection.cursor() as cursor:  # and nothing left on the session after it
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        assert cursor.fetchone() == ("0", "0")


def lost_job() -> BuildJob:
    return BuildJob.objects.create(
        image="localhost:5000/a/b:1",
        dockerfile="FROM busybox\n",
        status="building",
        attempt=1,
        worker="worker-gone@host",
        lease_expires_at=timezone.now() - timedelta(seconds=5),
    )


@pytest.mark.django_db(transaction=True)
@override_settings(GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS=0.5, GENERATOR_MAX_ATTEMPTS=3)
def test_the_reaper_leaves_a_job_whose_log_a_gone_session_holds_and_reaps_the_others(redis_url):
    held, other = lost_job(), lost_job()
    holding, release = threading.Event(), threading.Event()

    def gone_worker() -> None:  # inserted its next line, never committed (issue 25)
        try:
            with transaction.atomic():
                _insert_lines(held.id, [(1, "a line of the gone worker")])
                holding.set()
                release.wait(10)
                transaction.set_rollback(True)
        finally:
            connections["default"].close()

    if connection.vendor == "postgresql":
        thread = threading.Thread(target=gone_worker)
        thread.start()
        assert holding.wait(10)
    started = time.monotonic()
    tasks.reap_lost_workers()
    took = time.monotonic() - started
    statuses = dict(BuildJob.objects.filter(pk__in=[held.pk, other.pk]).values_list("pk", "status"))
    assert statuses[other.pk] == "queued"
    if connection.vendor == "postgresql":
        assert statuses[held.pk] == "building" and took < 3, (statuses, took)
        release.set()
        thread.join()
        tasks.reap_lost_workers()  # the session is gone: the next pass reaps it
    assert BuildJob.objects.get(pk=held.pk).status == "queued"
