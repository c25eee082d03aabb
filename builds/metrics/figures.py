"""The farm's figures, kept as they happen and read as aggregates.

A Prometheus scrape (builds/metrics/ops.py) and the insights page never read per-job rows:

- When a job ends, `record_end` adds it, in the transaction that ends it
  (builds/jobs/transitions.py), to the counters of finished jobs per repository and
  status, to histograms of its wait, run, build and push seconds per repository
  (one row per bucket), and to the day's figures per repository and daemon
  (DailyJobStats, DailyDaemonStats: for /insights/). Four upserts, from the
  job's row as the ending transaction read it.
- Jobs not yet ended are counted by status with one GROUP BY over the status
  index, restricted to the active states: a bounded number of rows.
- The workers' own figures (log lines written, push retries) are counted in
  Redis (`HINCRBY`, per daemon). Workers run on other hosts, where no exporter
  of theirs can be scraped, and they all reach Redis already (it is Celery's
  broker); prometheus_client's multiprocess mode shares files between the
  processes of one host only. Redis losing them (a restart without
  persistence) is a counter reset, which Prometheus' rate() expects.
  Builds running per daemon come from the job rows their workers claimed.

Histogram bounds are part of the stored rows (a row holds a bucket's index):
change a family's bounds only with a migration that moves its rows.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import cache

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from builds.models import BuildJob, DailyDaemonStats, DailyJobStats, MetricBucket, MetricCounter, StepStats
from pool.gauges import daemon_families
from pool.models import DockerDaemon

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)

# Histogram families: name -> (help, labels). `repository` is '' for builds without one.
# A scrape costs about its number of samples (13 per histogram and label set):
# the run time, which is build plus push, is the farm's only.
HISTOGRAMS = {
    "generator_job_wait_seconds": ("From submit to a worker's claim, for jobs that ended.", ("repository",)),
    "generator_job_run_seconds": ("From claim to the end, for jobs that ended.", ()),
    "generator_job_build_seconds": ("From claim to the push (or the end, for a build that failed).", ("repository",)),
    "generator_job_push_seconds": ("From the start of the push to the end.", ("repository",)),
}
FINISHED = "generator_jobs_finished_total"
DELIVERIES = "generator_webhook_deliveries_total"
COUNTER_HELP = {
    FINISHED: "Jobs that ended, by repository and status.",
    DELIVERIES: "Verified webhook deliveries by event and answer status.",
}

# The workers' own counters, in Redis: one hash per family, one field per daemon.
WORKER_COUNTERS = {
    "generator_worker_log_lines_written_total": "Log lines the workers stored, by daemon.",
    "generator_worker_push_retries_total": "Pushes tried again after a registry's transient error, by daemon.",
    "generator_worker_prepulls_total": "Images pulled onto a daemon to warm it after a push elsewhere, by daemon.",
    "generator_worker_prepull_bytes_total": "Compressed bytes those pulls fetched from the registry, by daemon.",
    "generator_worker_prepull_milliseconds_total": "Milliseconds those pulls took, by daemon.",
}
REDIS_PREFIX = "generator:metrics:"


def _labels(**labels: str) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


# --- kept as jobs end ---------------------------------------------------------------


# What `record_end` reads of the job that ended (builds/jobs/transitions.py reads it, in that transaction).
ENDED_FIELDS = ("status", "repository__full_name", "daemon__name", "created_at", "started_at", "push_started_at",
                "finished_at")  # fmt: skip


def record_end(ended: dict) -> None:
    """Adds a job that has just ended (its ENDED_FIELDS) to the figures. Call inside the
    transaction that ended it, so that the figures and the job's status commit together."""
    status, created, started = ended["status"], ended["created_at"], ended["started_at"]
    push_started, finished = ended["push_started_at"], ended["finished_at"]
    repository, daemon = ended["repository__full_name"] or "", ended["daemon__name"] or ""
    labels = {name: _labels(**({"repository": repository} if names else {})) for name, (_, names) in HISTOGRAMS.items()}
    observed: dict[str, float] = {}
    if started and finished:
        observed["generator_job_wait_seconds"] = max((started - created).total_seconds(), 0.0)
        observed["generator_job_run_seconds"] = max((finished - started).total_seconds(), 0.0)
        observed["generator_job_build_seconds"] = max(((push_started or finished) - started).total_seconds(), 0.0)
        if push_started:
            observed["generator_job_push_seconds"] = max((finished - push_started).total_seconds(), 0.0)
    add_counter(FINISHED, 1, repository=repository, status=status)
    _observe([(name, labels[name], seconds) for name, seconds in observed.items()])
    _add_daily(finished or started or created, repository, daemon, status, started, push_started, observed)


def add_counter(name: str, amount: float, **labels: str) -> None:
    table = connection.ops.quote_name(MetricCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, labels, value) VALUES (%s, %s, %s)"
            f" ON CONFLICT (name, labels) DO UPDATE SET value = {table}.value + excluded.value",
            [name, _labels(**labels), amount],
        )


def _observe(observations: list[tuple[str, str, float]]) -> None:
    if not observations:
        return
    table = connection.ops.quote_name(MetricBucket._meta.db_table)
    rows = [
        (name, labels, bisect.bisect_left(DURATION_BUCKETS, value), 1, value) for name, labels, value in observations
    ]
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} (name, labels, bucket, "count", "sum") VALUES {values}'
            f' ON CONFLICT (name, labels, bucket) DO UPDATE SET "count" = {table}."count" + excluded."count",'
            f' "sum" = {table}."sum" + excluded."sum"',
            [value for row in rows for value in row],
        )


def _add_daily(when, repository, daemon, status, started, push_started, observed: dict[str, float]) -> None:
    sums = ("wait_seconds", "build_seconds", "push_seconds", "run_seconds")
    _upsert(
        DailyJobStats,
        {"day": when.date(), "repository": repository, "status": status},
        {
            "count": 1, "started": int(bool(started)), "pushed": int(bool(push_started)),
            **{name: observed.get(f"generator_job_{name}", 0.0) for name in sums},
        },
    )  # fmt: skip
    if daemon and started:
        _upsert(
            DailyDaemonStats,
            {"day": when.date(), "daemon": daemon},
            {"count": 1, "run_seconds": observed.get("generator_job_run_seconds", 0.0)},
        )


def _upsert(model, key: dict, added: dict) -> None:
    """INSERT, or add to the row of that key (both PostgreSQL and SQLite take ON CONFLICT)."""
    table = connection.ops.quote_name(model._meta.db_table)
    columns = [*key, *added]
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in added)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
            [*key.values(), *added.values()],
        )


def record_steps(repository: str, timings: dict[str, float], day) -> None:
    """Adds one build's step timings (builds/logs/steps.py) to its repository's: one statement."""
    if not timings:
        return
    table = connection.ops.quote_name(StepStats._meta.db_table)
    rows = [(repository, step, 1, seconds, seconds, day) for step, seconds in timings.items()]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (repository, step, count, seconds, max_seconds, last_seen) VALUES {values}"
            f" ON CONFLICT (repository, step) DO UPDATE SET count = {table}.count + excluded.count,"
            f" seconds = {table}.seconds + excluded.seconds,"
            f" max_seconds = {greatest}({table}.max_seconds, excluded.max_seconds), last_seen = excluded.last_seen",
            [value for row in rows for value in row],
        )


# --- the workers' own figures -------------------------------------------------------


@cache
def _redis() -> redis.Redis:
    # redis-py's pool notices a fork and reconnects in the child.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


_REDIS_PAUSE = 30.0  # seconds without counting after Redis failed to answer
_redis_down_until = 0.0


def count_worker(name: str, daemon: str, amount: int = 1) -> None:
    """A worker's counter (WORKER_COUNTERS): never fails a build, and slows it
    at most once per pause while Redis does not answer (a job's log lines are
    counted once it has ended, builds/worker/runner.py)."""
    global _redis_down_until
    if time.monotonic() < _redis_down_until:
        return
    try:
        _redis().hincrby(REDIS_PREFIX + name, daemon, amount)
    except redis.RedisError:
        _redis_down_until = time.monotonic() + _REDIS_PAUSE
        logger.warning("could not count %s in Redis; not counting for %g s", name, _REDIS_PAUSE, exc_info=True)


# --- read on a scrape ---------------------------------------------------------------


class FarmCollector:
    """prometheus_client's custom collector: a handful of aggregate queries per scrape."""

    def describe(self) -> list:
        return []  # not collected at registration, when there may be no database yet

    def collect(self) -> Iterator[Metric]:
        daemons = list(DockerDaemon.objects.all())
        active = _active_jobs()
        counters = [
            (name, json.loads(labels), value)
            for name, labels, value in MetricCounter.objects.values_list("name", "labels", "value")
        ]
        yield from _job_gauges(active, counters)
        yield from daemon_families(daemons)  # up, healthy, capacity... (pool/gauges.py)
        yield from _daemon_load(daemons, active)
        yield from _counters(counters)
        yield from _histograms()
        yield from _worker_counters()


def _active_jobs() -> dict[tuple[int | None, str], int]:
    """(daemon id, status) -> jobs, for the active states only (the status index)."""
    rows = (
        BuildJob.objects.filter(status__in=BuildJob.ACTIVE).values_list("daemon_id", "status").annotate(n=Count("id"))
    )
    return {(daemon_id, status): n for daemon_id, status, n in rows.order_by()}


def _job_gauges(active: dict, counters: list[tuple[str, dict, float]]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "generator_jobs",
        "Jobs by status: the active ones now, the ended ones counted as they ended.",
        labels=["status"],
    )
    by_status: dict[str, float] = defaultdict(float)
    for (_, status), n in active.items():
        by_status[status] += n
    for name, labels, value in counters:
        if name == FINISHED:
            by_status[labels["status"]] += value
    for status in BuildJob.Status.values:
        jobs.add_metric([status], by_status[status])
    yield jobs
    waiting = sum(n for (daemon_id, status), n in active.items() if daemon_id is None and status == "queued")
    yield GaugeMetricFamily("generator_jobs_waiting", "Queued jobs waiting for a daemon with room.", value=waiting)


def _daemon_load(daemons: list[DockerDaemon], active: dict) -> Iterator[Metric]:
    families = {
        "generator_daemon_queue_length": ("Jobs given to a daemon and not yet claimed.", ("queued",)),
        "generator_daemon_running_builds": (
            "Builds its workers are running (building or pushing).",
            ("building", "pushing"),
        ),
        "generator_daemon_active_builds": ("Active builds (queued, building, pushing) per daemon.", BuildJob.ACTIVE),
    }
    for name, (help_text, statuses) in families.items():
        family = GaugeMetricFamily(name, help_text, labels=["daemon"])
        for daemon in daemons:
            family.add_metric([daemon.name], sum(active.get((daemon.id, s), 0) for s in statuses))
        yield family


def _counters(counters: list[tuple[str, dict, float]]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for name, labels, value in sorted(counters, key=lambda c: (c[0], sorted(c[1].items()))):
        if name not in families:
            families[name] = CounterMetricFamily(
                name.removesuffix("_total"), COUNTER_HELP.get(name, name), labels=sorted(labels)
            )
        families[name].add_metric([labels[k] for k in sorted(labels)], value)
    yield from families.values()


def _histograms() -> Iterator[Metric]:
    rows: dict[str, dict[str, dict[int, tuple[int, float]]]] = defaultdict(lambda: defaultdict(dict))
    for name, labels, bucket, count, total in MetricBucket.objects.values_list(
        "name", "labels", "bucket", "count", "sum"
    ):
        rows[name][labels][bucket] = (count, total)
    for name, (help_text, names) in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, help_text, labels=names)
        for labels, buckets in sorted(rows[name].items()):
            values = json.loads(labels)
            family.add_metric([values.get(label, "") for label in names], *_cumulative(buckets))
        yield family


def _cumulative(buckets: dict[int, tuple[int, float]]) -> tuple[list[tuple[str, float]], float]:
    seen, pairs = 0, []
    for index, bound in enumerate((*DURATION_BUCKETS, float("inf"))):
        seen += buckets.get(index, (0, 0.0))[0]
        pairs.append(("+Inf" if bound == float("inf") else str(bound), seen))
    return pairs, sum(total for _, total in buckets.values())


def _worker_counters() -> Iterator[Metric]:
    try:
        with _redis().pipeline(transaction=False) as pipe:
            for name in WORKER_COUNTERS:
                pipe.hgetall(REDIS_PREFIX + name)
            answers: Iterable[dict] = pipe.execute()
    except redis.RedisError:
        logger.warning("could not read the workers' counters from Redis", exc_info=True)
        return
    for (name, help_text), values in zip(WORKER_COUNTERS.items(), answers, strict=True):
        family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=["daemon"])
        for daemon, value in sorted(values.items()):
            family.add_metric([daemon.decode()], float(value))
        yield family
