"""/metrics through prometheus_client, from figures kept as jobs end (builds/metrics/figures.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from builds.jobs import transitions
from builds.metrics import figures as metrics
from builds.models import BuildJob, DailyJobStats, Repository
from pool.models import DockerDaemon


def scrape(client) -> dict:
    """name -> {frozenset(labels): value} of every sample, through Prometheus' own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[name][frozenset(labels.items())]


def run_job(daemon, *, wait: float, build: float, push: float | None, repository=None, outcome="succeed") -> BuildJob:
    """A job through the real transitions, its timestamps set back so that it
    took the durations given when it ends now (give or take the test's own milliseconds)."""
    job = BuildJob.objects.create(image="reg.example/a/b:1", repository=repository)
    assert transitions.assign(job.id, daemon.id)
    assert transitions.claim(job.id, 1, daemon.id, "w", 60)
    if push is not None:
        assert transitions.start_push(job.id, 1, "sha256:x")
    now = timezone.now()
    push_started = now - timedelta(seconds=push) if push is not None else None
    started = now - timedelta(seconds=build + (push or 0))
    BuildJob.objects.filter(pk=job.pk).update(
        created_at=started - timedelta(seconds=wait), started_at=started, push_started_at=push_started
    )
    ended = transitions.succeed(job.id, 1, "sha256:d") if outcome == "succeed" else transitions.fail(job.id, 1, "no")
    assert ended
    return job


@pytest.fixture
def repository(db):
    return Repository.objects.create(
        full_name="o/app", clone_url="https://x.invalid/a.git", webhook_secret="s", image="reg.example/o/app"
    )


def test_histograms_count_jobs_as_they_end(client, daemon, repository):
    run_job(daemon, wait=3, build=20, push=2, repository=repository)
    run_job(daemon, wait=0.5, build=100, push=None, repository=repository, outcome="fail")
    run_job(daemon, wait=40, build=4, push=1)
    samples = scrape(client)
    wait = "generator_job_wait_seconds_bucket"
    assert value(samples, wait, repository="o/app", le="1") == 1
    assert value(samples, wait, repository="o/app", le="5") == 2
    assert value(samples, wait, repository="o/app", le="+Inf") == 2
    assert value(samples, wait, repository="", le="30") == 0
    assert value(samples, wait, repository="", le="60") == 1
    assert value(samples, "generator_job_wait_seconds_sum", repository="o/app") == pytest.approx(3.5, abs=0.5)
    assert value(samples, "generator_job_build_seconds_bucket", repository="o/app", le="30") == 1
    assert value(samples, "generator_job_build_seconds_bucket", repository="o/app", le="120") == 2
    # The failed build never pushed: one push observed for the repository.
    assert value(samples, "generator_job_push_seconds_count", repository="o/app") == 1
    # Run time (build and push) is the farm's only: the three jobs.
    assert value(samples, "generator_job_run_seconds_sum") == pytest.approx(22 + 100 + 5, abs=0.5)
    assert value(samples, "generator_job_run_seconds_count") == 3
    assert value(samples, "generator_jobs_finished_total", repository="o/app", status="succeeded") == 1
    assert value(samples, "generator_jobs_finished_total", repository="o/app", status="failed") == 1
    assert value(samples, "generator_jobs", status="succeeded") == 2
    assert value(samples, "generator_jobs", status="failed") == 1


def test_a_job_is_counted_once_however_often_its_end_is_tried(client, daemon):
    job = run_job(daemon, wait=1, build=1, push=1)
    assert not transitions.succeed(job.id, 1, "sha256:d") and not transitions.fail(job.id, 1, "late")
    assert value(scrape(client), "generator_jobs_finished_total", repository="", status="succeeded") == 1


def test_a_job_cancelled_while_queued_is_counted_but_not_timed(client, daemon):
    job = BuildJob.objects.create(image="reg.example/a/b:1")
    assert transitions.cancel_waiting(job.id, None)
    samples = scrape(client)
    assert value(samples, "generator_jobs_finished_total", repository="", status="cancelled") == 1
    assert "generator_job_wait_seconds_count" not in samples


def test_the_figures_roll_back_with_the_transaction_that_ended_the_job(daemon):
    from django.db import transaction

    job = BuildJob.objects.create(image="reg.example/a/b:1")
    with pytest.raises(RuntimeError), transaction.atomic():
        assert transitions.cancel_waiting(job.id, None)
        raise RuntimeError("the caller's transaction fails")
    assert not DailyJobStats.objects.exists()
    assert BuildJob.objects.get(pk=job.pk).status == "queued"


def test_gauges_of_active_jobs_and_daemons(client, daemon):
    other = DockerDaemon.objects.create(name="sick", url="tcp://127.0.0.1:10", capacity=4, healthy=False)
    BuildJob.objects.create(image="a/b:1")
    BuildJob.objects.create(image="a/b:2", daemon=daemon)
    BuildJob.objects.create(image="a/b:3", daemon=daemon, status="building")
    BuildJob.objects.create(image="a/b:4", daemon=other, status="pushing")
    samples = scrape(client)
    assert value(samples, "generator_jobs", status="queued") == 2
    assert value(samples, "generator_jobs", status="building") == 1
    assert value(samples, "generator_jobs_waiting") == 1
    assert value(samples, "generator_daemon_queue_length", daemon="unit-daemon") == 1
    assert value(samples, "generator_daemon_running_builds", daemon="unit-daemon") == 1
    assert value(samples, "generator_daemon_active_builds", daemon="unit-daemon") == 2
    assert value(samples, "generator_daemon_running_builds", daemon="sick") == 1
    assert value(samples, "generator_daemon_up", daemon="unit-daemon") == 1
    assert value(samples, "generator_daemon_up", daemon="sick") == 0
    assert value(samples, "generator_daemon_healthy", daemon="sick") == 0
    assert value(samples, "generator_daemon_capacity", daemon="sick") == 4


def test_the_workers_figures_come_through_redis(client, daemon):
    metrics._redis().delete(*(metrics.REDIS_PREFIX + name for name in metrics.WORKER_COUNTERS))
    metrics.count_worker("generator_worker_log_lines_written_total", "unit-daemon", 500)
    metrics.count_worker("generator_worker_log_lines_written_total", "unit-daemon", 30)
    metrics.count_worker("generator_worker_push_retries_total", "unit-daemon")
    samples = scrape(client)
    assert value(samples, "generator_worker_log_lines_written_total", daemon="unit-daemon") == 530
    assert value(samples, "generator_worker_push_retries_total", daemon="unit-daemon") == 1


def test_a_log_writer_hands_each_stored_batch_on(daemon):
    from builds.logs.writer import LogWriter

    job = BuildJob.objects.create(image="a/b:1")
    stored = []
    writer = LogWriter(job.id, last_seq=0, batch_lines=2, flush_seconds=60, on_stored=stored.append)
    for n in range(5):
        writer.write(f"line {n}")
    writer.flush()
    assert [seq for batch in stored for seq, _ in batch] == [1, 2, 3, 4, 5]
    assert [len(batch) for batch in stored] == [1, 2, 2]  # the first line at once, then batches of 2
    assert BuildJob.objects.get(pk=job.pk).log_line_count == 5


def test_a_scrape_reads_no_job_rows_however_many_ended(client, daemon, repository, django_assert_max_num_queries):
    for n in range(30):
        run_job(daemon, wait=n, build=n * 10, push=1, repository=repository if n % 2 else None)
    with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(4):
        samples = scrape(client)
    assert value(samples, "generator_jobs", status="succeeded") == 30
    job_table = BuildJob._meta.db_table
    reads_of_jobs = [q["sql"] for q in queries if job_table in q["sql"]]
    # One GROUP BY of the active jobs, through the status index; nothing else reads jobs.
    assert (
        len(reads_of_jobs) == 1
        and "GROUP BY" in reads_of_jobs[0]
        and "IN ('queued', 'building', 'pushing')" in reads_of_jobs[0]
    )


def test_webhook_deliveries_are_counted_as_they_are_answered(client, db):
    metrics.add_counter(metrics.DELIVERIES, 1, event="push", status="202")
    metrics.add_counter(metrics.DELIVERIES, 1, event="push", status="202")
    assert value(scrape(client), "generator_webhook_deliveries_total", event="push", status="202") == 2


def test_metrics_need_no_login_as_before(client, db):
    # Like most exporters: counts, no contents (docs/deploy.md).
    client.logout()
    assert client.get("/metrics").status_code == 200


def test_the_days_figures_per_repository_and_daemon(daemon, repository):
    from builds.models import DailyDaemonStats

    run_job(daemon, wait=2, build=10, push=4, repository=repository)
    run_job(daemon, wait=6, build=30, push=None, repository=repository, outcome="fail")
    rows = {row.status: row for row in DailyJobStats.objects.filter(repository="o/app")}
    assert (rows["succeeded"].count, rows["succeeded"].pushed, rows["failed"].pushed) == (1, 1, 0)
    assert rows["succeeded"].wait_seconds == pytest.approx(2, abs=0.01)
    assert rows["failed"].build_seconds == pytest.approx(30, abs=0.5)
    busy = DailyDaemonStats.objects.get(daemon="unit-daemon", day=timezone.now().date())
    assert busy.count == 2 and busy.run_seconds == pytest.approx(44, abs=1)


def test_the_migration_counts_the_jobs_that_ended_before_figures_were_kept(client, daemon, repository):
    import importlib

    from django.apps import apps

    seed = importlib.import_module("builds.migrations.0017_figures_of_jobs_ended_before").seed
    now = timezone.now()
    for wait, run, status in [(2, 50, "succeeded"), (20, 400, "failed"), (0, 0, "cancelled")]:
        started = now - timedelta(seconds=run) if status != "cancelled" else None
        job = BuildJob.objects.create(image="a/b:1", repository=repository, daemon=daemon, status=status)
        BuildJob.objects.filter(pk=job.pk).update(
            created_at=(started or now) - timedelta(seconds=wait), started_at=started, finished_at=now
        )
    seed(apps, None)
    samples = scrape(client)
    assert value(samples, "generator_jobs_finished_total", repository="o/app", status="cancelled") == 1
    assert value(samples, "generator_job_run_seconds_bucket", le="60") == 1
    assert value(samples, "generator_job_run_seconds_bucket", le="600") == 2
    assert value(samples, "generator_job_wait_seconds_sum", repository="o/app") == pytest.approx(22)
    assert DailyJobStats.objects.get(repository="o/app", status="failed").run_seconds == pytest.approx(400)


def test_the_grafana_dashboard_asks_only_for_metrics_the_farm_exposes(client, daemon, repository):
    import json
    import re
    from pathlib import Path

    run_job(daemon, wait=1, build=1, push=1, repository=repository)
    metrics.count_worker("generator_worker_log_lines_written_total", "unit-daemon")
    metrics.count_worker("generator_worker_push_retries_total", "unit-daemon")
    metrics.add_counter(metrics.DELIVERIES, 1, event="push", status="202")
    DockerDaemon.objects.filter(pk=daemon.pk).update(latency_ms=3)
    exposed = set(scrape(client))
    dashboard = json.loads((Path(__file__).parents[3] / "docs" / "grafana-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"generator_[a-z_]+", target["expr"])
    }
    assert len(dashboard["panels"]) >= 10 and asked
    assert asked - exposed == set()


def test_a_worker_counts_nothing_for_a_while_once_redis_fails(settings, monkeypatch):
    import time

    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    client = metrics._redis
    client.cache_clear()
    monkeypatch.setattr(metrics, "_redis_down_until", 0.0)
    try:
        metrics.count_worker("generator_worker_log_lines_written_total", "d", 5)  # fails, pauses
        assert metrics._redis_down_until > time.monotonic() + 25
        asked = []
        monkeypatch.setattr(metrics, "_redis", lambda: asked.append(1))
        for _ in range(100):
            metrics.count_worker("generator_worker_log_lines_written_total", "d", 5)
        assert asked == []  # no connection tried during the pause
        monkeypatch.setattr(metrics, "_redis_down_until", time.monotonic() - 1)
        with pytest.raises(AttributeError):  # after it, Redis is asked again (here: the stand-in)
            metrics.count_worker("generator_worker_log_lines_written_total", "d", 5)
        assert asked == [1]
    finally:
        client.cache_clear()  # the next test's client, with its Redis
