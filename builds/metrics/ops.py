"""For load balancers and monitoring: /healthz, /readyz, /metrics (Prometheus text).

Unauthenticated on purpose, like most exporters: they say how many jobs are in
which state and whether the daemons are healthy, nothing about their contents.
Put them behind the load balancer's own network if that is too much.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, generate_latest

from builds.metrics.figures import FarmCollector
from pool.models import DockerDaemon

# Only the farm's figures: the web process' own (the default registry's Python
# and process collectors) would differ from one daphne process to the next.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
_registry = CollectorRegistry(auto_describe=False)
_registry.register(FarmCollector())


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
    """Prometheus' text format, from aggregates only (builds/metrics/figures.py)."""
    # The classic text format (0.0.4), which every Prometheus reads; the names are ASCII.
    return HttpResponse(generate_latest(_registry), content_type=TEXT_FORMAT)
