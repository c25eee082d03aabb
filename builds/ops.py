"""For load balancers and monitoring: /healthz, /readyz, /metrics (Prometheus text).

Unauthenticated on purpose, like most exporters: they say how many jobs are in
which state and whether the daemons are healthy, nothing about their contents.
Put them behind the load balancer's own network if that is too much.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse

from pool import housekeeping
from pool.models import DockerDaemon

from .models import BuildJob, WebhookDelivery

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database(), "redis": _redis(), "daemons": _daemons()}
    ready = all(ok for ok, _ in checks.values())
    body = {"ready": ready, "checks": {name: detail for name, (_, detail) in checks.items()}}
    return JsonResponse(body, status=200 if ready else 503)


def _database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return False, f"unreachable: {exc.__class__.__name__}"
    return True, "ok"


def _redis() -> tuple[bool, str]:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except Exception as exc:
        return False, f"unreachable: {exc.__class__.__name__}"
    return True, "ok"


def _daemons() -> tuple[bool, str]:
    usable = [d for d in DockerDaemon.objects.all() if d.takes_builds]
    if not usable:
        return False, "no healthy, enabled daemon with a worker"
    return True, f"{len(usable)} taking builds"


def metrics(request: HttpRequest) -> HttpResponse:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("generator_jobs", "gauge", "Build jobs by status.")
    counts = dict(BuildJob.objects.values_list("status").annotate(n=Count("id")))
    for status in BuildJob.Status.values:
        lines.append(f'generator_jobs{{status="{status}"}} {counts.get(status, 0)}')

    family("generator_jobs_waiting", "gauge", "Queued jobs waiting for a daemon with room.")
    lines.append(f"generator_jobs_waiting {BuildJob.objects.filter(status='queued', daemon__isnull=True).count()}")

    active = Q(jobs__status__in=BuildJob.ACTIVE)
    queued = Q(jobs__status=BuildJob.Status.QUEUED)
    daemons = DockerDaemon.objects.annotate(active=Count("jobs", filter=active), queued=Count("jobs", filter=queued))
    family("generator_daemon_queue_length", "gauge", "Jobs given to a daemon and not yet claimed.")
    family_lines = []
    for daemon in daemons:
        label = f'daemon="{_escape(daemon.name)}"'
        family_lines.append((label, daemon))
        lines.append(f"generator_daemon_queue_length{{{label}}} {daemon.queued}")
    family("generator_daemon_active_builds", "gauge", "Active builds (queued, building, pushing) per daemon.")
    lines += [f"generator_daemon_active_builds{{{label}}} {d.active}" for label, d in family_lines]
    family("generator_daemon_capacity", "gauge", "Concurrent builds a daemon takes.")
    lines += [f"generator_daemon_capacity{{{label}}} {d.capacity}" for label, d in family_lines]
    family("generator_daemon_up", "gauge", "1 if the daemon takes builds (enabled, healthy, worker online).")
    lines += [f"generator_daemon_up{{{label}}} {int(d.takes_builds)}" for label, d in family_lines]

    finished = BuildJob.objects.filter(started_at__isnull=False)
    _histogram(
        lines,
        family,
        "generator_job_wait_seconds",
        "From submit to a worker's claim.",
        finished.values_list("created_at", "started_at"),
    )
    _histogram(
        lines,
        family,
        "generator_job_run_seconds",
        "From claim to the end, for finished jobs.",
        finished.filter(finished_at__isnull=False).values_list("started_at", "finished_at"),
    )

    family("generator_webhook_deliveries_total", "counter", "Verified webhook deliveries by event and answer status.")
    deliveries = WebhookDelivery.objects.values_list("event", "status_code").annotate(n=Count("id"))
    for event, status_code, n in deliveries:
        lines.append(f'generator_webhook_deliveries_total{{event="{_escape(event)}",status="{status_code}"}} {n}')
    lines += daemon_disk_lines()
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4; charset=utf-8")


def daemon_disk_lines() -> list[str]:
    """Each daemon's disk use, limits and last prune (pool/housekeeping.py), as gauges."""
    lines = []
    for name, help_text, samples in housekeeping.disk_gauges():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{daemon="{_escape(daemon)}"}} {value:.0f}' for daemon, value in samples]
    return lines


def _histogram(lines, family, name: str, help_text: str, pairs) -> None:
    family(name, "histogram", help_text)
    durations = [(end - start).total_seconds() for start, end in pairs]
    for bound in DURATION_BUCKETS:
        lines.append(f'{name}_bucket{{le="{bound}"}} {sum(1 for d in durations if d <= bound)}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {len(durations)}')
    lines.append(f"{name}_sum {sum(durations):.3f}")
    lines.append(f"{name}_count {len(durations)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
