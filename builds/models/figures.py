"""The farm's figures, kept as they happen."""

from __future__ import annotations

from django.db import models

# The farm's figures, kept as they happen (builds/metrics/figures.py), so that neither a
# Prometheus scrape nor the insights page reads per-job rows.


class MetricCounter(models.Model):
    """A Prometheus counter's value for one set of labels (e.g. finished jobs of a
    repository and status), added to by the transaction that counts it."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=400, help_text="JSON object, sorted keys.")
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="one_counter_per_labels")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} {self.value}"


class MetricBucket(models.Model):
    """One bucket of a histogram for one set of labels: how many observations fell
    in it (not cumulative) and their sum. `bucket` indexes the family's bounds in
    builds/metrics/figures.py; one past the last is +Inf."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=400, help_text="JSON object, sorted keys.")
    bucket = models.PositiveSmallIntegerField()
    count = models.PositiveBigIntegerField(default=0)
    sum = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels", "bucket"], name="one_row_per_bucket")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels}[{self.bucket}] {self.count}"


class DailyJobStats(models.Model):
    """The jobs that ended on one day (UTC), per repository and status: what the
    insights page draws. '' is the builds without a repository."""

    day = models.DateField()
    repository = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16)
    count = models.PositiveIntegerField(default=0)
    started = models.PositiveIntegerField(default=0, help_text="Of them, how many a worker claimed.")
    pushed = models.PositiveIntegerField(default=0, help_text="Of them, how many reached the push.")
    wait_seconds = models.FloatField(default=0, help_text="Sum, submit to claim, of the started ones.")
    build_seconds = models.FloatField(default=0, help_text="Sum, claim to push (or end).")
    push_seconds = models.FloatField(default=0)
    run_seconds = models.FloatField(default=0, help_text="Sum, claim to end.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "day", "status"], name="one_stats_row_per_key")]
        verbose_name_plural = "daily job stats"

    def __str__(self) -> str:
        return f"{self.day} {self.repository or '-'} {self.status}: {self.count}"


class DailyDaemonStats(models.Model):
    """A daemon's builds that ended on one day (UTC) and their claim-to-end time:
    its busy time, counted on the day a build ended."""

    day = models.DateField()
    daemon = models.CharField(max_length=100)
    count = models.PositiveIntegerField(default=0)
    run_seconds = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["daemon", "day"], name="one_stats_row_per_daemon_day")]
        verbose_name_plural = "daily daemon stats"

    def __str__(self) -> str:
        return f"{self.day} {self.daemon}: {self.count}"


class StepStats(models.Model):
    """A repository's BuildKit step (its title, as `[2/3] RUN make`), timed over
    its builds (builds/logs/steps.py): for the insights page's slowest steps."""

    repository = models.CharField(max_length=200, blank=True)
    step = models.CharField(max_length=200)
    count = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0, help_text="Sum.")
    max_seconds = models.FloatField(default=0)
    last_seen = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "step"], name="one_stats_row_per_step")]
        verbose_name_plural = "step stats"

    def __str__(self) -> str:
        return f"{self.repository or '-'} {self.step}: {self.count}"
