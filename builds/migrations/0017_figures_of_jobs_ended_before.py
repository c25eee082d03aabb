"""The figures (builds/metrics/figures.py) of the jobs that ended before they were kept:
read once here, so that counters and histograms go on from where /metrics was."""

import bisect
import json
from collections import defaultdict

from django.db import migrations

BOUNDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)  # builds/metrics/figures.py DURATION_BUCKETS, as of this migration
TERMINAL = ("succeeded", "failed", "cancelled")


def _labels(**labels):
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def seed(apps, schema_editor):
    BuildJob = apps.get_model("builds", "BuildJob")
    WebhookDelivery = apps.get_model("builds", "WebhookDelivery")
    MetricCounter = apps.get_model("builds", "MetricCounter")
    MetricBucket = apps.get_model("builds", "MetricBucket")
    DailyJobStats = apps.get_model("builds", "DailyJobStats")
    DailyDaemonStats = apps.get_model("builds", "DailyDaemonStats")
    counters = defaultdict(float)
    buckets = defaultdict(lambda: [0, 0.0])
    daily = defaultdict(lambda: defaultdict(float))
    daemon_daily = defaultdict(lambda: [0, 0.0])
    jobs = BuildJob.objects.filter(status__in=TERMINAL).values_list(
        "status", "repository__full_name", "daemon__name", "created_at", "started_at", "push_started_at", "finished_at"
    )
    for status, repository, daemon, created, started, push_started, finished in jobs.iterator(chunk_size=5000):
        repository, daemon = repository or "", daemon or ""
        counters[("generator_jobs_finished_total", _labels(repository=repository, status=status))] += 1
        observed = {}
        if started and finished:
            observed = {
                "wait": max((started - created).total_seconds(), 0.0),
                "run": max((finished - started).total_seconds(), 0.0),
                "build": max(((push_started or finished) - started).total_seconds(), 0.0),
            }
            if push_started:
                observed["push"] = max((finished - push_started).total_seconds(), 0.0)
        for name, seconds in observed.items():
            labels = _labels() if name == "run" else _labels(repository=repository)  # run: the farm's only
            row = buckets[(f"generator_job_{name}_seconds", labels, bisect.bisect_left(BOUNDS, seconds))]
            row[0] += 1
            row[1] += seconds
        when = (finished or started or created).date()
        if daemon and started:
            daemon_daily[(when, daemon)][0] += 1
            daemon_daily[(when, daemon)][1] += observed.get("run", 0.0)
        day = daily[(when, repository, status)]
        day["count"] += 1
        day["started"] += bool(started)
        day["pushed"] += bool(push_started)
        for name, seconds in observed.items():
            day[f"{name}_seconds"] += seconds
    for event, status_code in WebhookDelivery.objects.values_list("event", "status_code").iterator(chunk_size=5000):
        counters[("generator_webhook_deliveries_total", _labels(event=event, status=str(status_code)))] += 1
    MetricCounter.objects.bulk_create(
        [MetricCounter(name=name, labels=labels, value=value) for (name, labels), value in counters.items()],
        batch_size=1000,
    )
    MetricBucket.objects.bulk_create(
        [MetricBucket(name=n, labels=l, bucket=b, count=c, sum=s) for (n, l, b), (c, s) in buckets.items()],
        batch_size=1000,
    )
    DailyJobStats.objects.bulk_create(
        [
            DailyJobStats(day=day, repository=repository, status=status, **figures)
            for (day, repository, status), figures in daily.items()
        ],
        batch_size=1000,
    )
    DailyDaemonStats.objects.bulk_create(
        [DailyDaemonStats(day=day, daemon=d, count=c, run_seconds=s) for (day, d), (c, s) in daemon_daily.items()],
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [("builds", "0016_figures_kept_as_jobs_end")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
