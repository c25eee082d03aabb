"""/insights/: how the builds went over the last days, in pictures.

Build time and queue wait per repository per day, the success rate, and each
daemon's utilisation, drawn from the figures kept as jobs end (DailyJobStats,
DailyDaemonStats: builds/metrics/figures.py), never from job rows: four aggregate
queries, each bounded by days x repositories shown.

Staff see every repository (and the builds without one); anyone else, their
teams' repositories only (builds/jobs/ownership.py), and the pool's utilisation,
which the pool page shows them too; each of their teams' storage in the farm's
registry against its quota (teams/registry_quota.py). The slowest BuildKit steps come from
StepStats, timed by the worker from the log lines it stores (builds/logs/steps.py).
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.views import redirect_to_login
from django.db.models import ExpressionWrapper, F, FloatField, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from builds.insights.chart_ticks import format_duration
from builds.insights.charts import bar_chart, line_chart
from builds.jobs.ownership import is_staff, team_repositories
from builds.models import DailyDaemonStats, DailyJobStats, StepStats
from lib.http_errors import error_response
from pool.models import DockerDaemon
from teams.models import Team
from teams.registry_quota import describe_use

DEFAULT_DAYS, MAX_DAYS = 30, 90
LINES = 8  # repositories drawn as lines: the busiest
TABLE = 25  # repositories listed with their figures
STEPS = 10
NO_REPOSITORY = "(builds without a repository)"


def insights_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        days = int(request.GET.get("days", DEFAULT_DAYS))
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        return error_response(request, 400, f"days must be a whole number from 1 to {MAX_DAYS}")
    today = timezone.now().date()
    dates = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    stats = DailyJobStats.objects.filter(day__gte=dates[0])
    if not is_staff(request.user):
        stats = stats.filter(repository__in=team_repositories(request.user).values("full_name"))
    context = {"days": days, "max_days": MAX_DAYS, "labels": [d.isoformat() for d in dates]}
    context.update(_repositories(stats, dates))
    context["utilisation"] = _utilisation(dates)
    steps = StepStats.objects.filter(last_seen__gte=dates[0])
    if not is_staff(request.user):
        steps = steps.filter(repository__in=team_repositories(request.user).values("full_name"))
    context["steps"] = _slowest_steps(steps)
    teams = Team.objects.all() if is_staff(request.user) else Team.objects.of(request.user)
    context["registry_teams"] = [(team, describe_use(team)) for team in teams.order_by("slug")]
    return render(request, "builds/insights.html", context)


def _sums(**extra):
    return {
        "jobs": Sum("count"), "started": Sum("started"), "wait": Sum("wait_seconds"), "build": Sum("build_seconds"),
        "succeeded": Sum("count", filter=Q(status="succeeded")), "failed": Sum("count", filter=Q(status="failed")),
        **extra,
    }  # fmt: skip


def _repositories(stats, dates) -> dict:
    totals = list(stats.values("repository").annotate(**_sums()).order_by("-jobs", "repository")[:TABLE])
    for row in totals:
        row["name"] = row["repository"] or NO_REPOSITORY
        row["mean_build"] = _duration(_mean(row["build"], row["started"]))
        row["mean_wait"] = _duration(_mean(row["wait"], row["started"]))
        row["success"] = _rate(row["succeeded"], row["failed"])
    busiest = [row["repository"] for row in totals[:LINES]]
    per_day = stats.filter(repository__in=busiest).values("repository", "day").annotate(**_sums())
    by_key = {(row["repository"], row["day"]): row for row in per_day}

    def series(figure) -> list:
        return [
            (
                name or NO_REPOSITORY,
                [figure(by_key.get((name, day))) if (name, day) in by_key else None for day in dates],
            )
            for name in busiest
        ]

    daily = {row["day"]: row for row in stats.values("day").annotate(**_sums())}
    success = [_rate(daily[d]["succeeded"], daily[d]["failed"]) if d in daily else None for d in dates]
    labels = [d.isoformat() for d in dates]
    return {
        "repositories": totals,
        "build_chart": line_chart(
            "Mean build time per day", labels, series(lambda r: _mean(r["build"], r["started"])), "s"
        ),
        "wait_chart": line_chart(
            "Mean queue wait per day", labels, series(lambda r: _mean(r["wait"], r["started"])), "s"
        ),
        "success_chart": line_chart(
            "Success rate per day (succeeded of succeeded and failed)", labels, [("all shown", success)], "%", top=100
        ),  # fmt: skip
        "jobs_total": sum(row["jobs"] or 0 for row in daily.values()),
    }


def _utilisation(dates):
    """Each daemon's busy time (claim to end of its builds) over its capacity's time in the window."""
    busy = dict(DailyDaemonStats.objects.filter(day__gte=dates[0]).values_list("daemon").annotate(s=Sum("run_seconds")))
    window = len(dates) * 86400
    bars = [
        (daemon.name, 100 * busy.get(daemon.name, 0.0) / (daemon.capacity * window))
        for daemon in DockerDaemon.objects.order_by("name").only("name", "capacity")
    ]
    return bar_chart("Pool utilisation per daemon", bars, "%", top=max(100.0, *(v for _, v in bars))) if bars else ""


def _slowest_steps(steps):
    """The steps of the longest mean, among those run in the window (their figures are of all time)."""
    mean = ExpressionWrapper(F("seconds") / F("count"), output_field=FloatField())
    rows = steps.filter(count__gt=0).annotate(mean=mean).order_by("-mean")[:STEPS]
    bars = [(f"{row.repository or NO_REPOSITORY}: {row.step}", row.mean) for row in rows]
    return bar_chart("Slowest BuildKit steps (mean)", bars, "s", max_label_width=420) if bars else ""


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else format_duration(seconds)


def _mean(total, count):
    return total / count if count else None


def _rate(succeeded, failed):
    succeeded, failed = succeeded or 0, failed or 0
    return 100 * succeeded / (succeeded + failed) if succeeded + failed else None
