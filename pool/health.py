"""Is each daemon alive? Pings every daemon at once and records what it saw.

A daemon that fails `unhealthy_after` checks in a row, or that a worker lost in
the middle of a build, takes no new builds until it answers again; so does one
whose queue no live worker consumes. This module
knows no jobs: moving the jobs of a sick daemon is the dispatcher's business.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import docker
import requests
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from pool.models import DockerDaemon, queue_for
from pool.platforms import from_engine
from pool.tls import client_settings

QUEUE_PREFIX = queue_for("")


@dataclass(frozen=True)
class Probe:
    ok: bool
    latency_ms: float | None = None
    version: str = ""
    error: str = ""
    platform: str = ""


def probe(daemon: DockerDaemon, *, api_version: str, timeout: float) -> Probe:
    started = time.monotonic()
    try:
        api = docker.APIClient(**client_settings(daemon), version=api_version, timeout=timeout)
        try:
            api.ping()
            latency = (time.monotonic() - started) * 1000
            report = api.version()
            version = report.get("Version", "")
            # The engine's own word on what it runs natively (Go's names: linux, amd64).
            platform = from_engine(report.get("Os", ""), report.get("Arch", ""))
        finally:
            api.close()
    except requests.exceptions.SSLError as exc:
        reason = _ssl_reason(str(exc))
        return Probe(ok=False, error=f"TLS handshake failed: {reason} (check the pool entry's CA, certificate and key)")
    except Exception as exc:  # any failure to answer is the daemon's ill health
        return Probe(ok=False, error=f"{exc.__class__.__name__}: {exc}"[:500])
    return Probe(ok=True, latency_ms=round(latency, 2), version=version, platform=platform)


def _ssl_reason(message: str) -> str:
    """OpenSSL's own words ("tlsv1 alert unknown ca") from inside requests' wrapping."""
    if "EOF occurred in violation of protocol" in message:  # TLS 1.3: the refusal comes as a hang-up
        return "the daemon ended the handshake (does it trust the CA of the client certificate?)"
    match = re.search(r"\[SSL: \w+\] ([^(']+)", message)
    return match[1].strip() if match else message[:300]


def record(daemon: DockerDaemon, result: Probe, *, unhealthy_after: int) -> None:
    now = timezone.now()
    if result.ok:
        DockerDaemon.objects.filter(pk=daemon.pk).update(
            healthy=True,
            consecutive_failures=0,
            last_checked_at=now,
            last_seen_at=now,
            latency_ms=result.latency_ms,
            engine_version=result.version,
            native_platform=result.platform,
            last_error="",
        )
        return
    failures = daemon.consecutive_failures + 1
    DockerDaemon.objects.filter(pk=daemon.pk).update(
        healthy=failures < unhealthy_after,
        consecutive_failures=F("consecutive_failures") + 1,
        last_checked_at=now,
        latency_ms=None,
        last_error=result.error,
    )


def check_pool(*, api_version: str, timeout: float, unhealthy_after: int) -> dict[str, Probe]:
    """Probes every enabled daemon in parallel (one slow daemon delays no other)."""
    daemons = list(DockerDaemon.objects.filter(enabled=True))
    if not daemons:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(daemons), 16)) as pool:
        results = list(pool.map(lambda d: probe(d, api_version=api_version, timeout=timeout), daemons))
    for daemon, result in zip(daemons, results, strict=True):
        record(daemon, result, unhealthy_after=unhealthy_after)
    return {d.name: r for d, r in zip(daemons, results, strict=True)}


def record_workers(served_queues: set[str]) -> None:
    """Which daemons have a live worker on their queue (pool/workers.py): a daemon
    without one takes no builds (they would wait for nobody). One read of the
    names, and an UPDATE for those whose answer changed (none most of the time)."""
    served = {queue.removeprefix(QUEUE_PREFIX) for queue in served_queues if queue.startswith(QUEUE_PREFIX)}
    changed: dict[bool, list[str]] = {True: [], False: []}
    for name, online in DockerDaemon.objects.values_list("name", "worker_online").iterator(chunk_size=2000):
        if (name in served) != online:
            changed[not online].append(name)
    for online, names in changed.items():
        if names:
            DockerDaemon.objects.filter(name__in=names).update(worker_online=online)


def check_now(daemon: DockerDaemon) -> Probe:
    """One daemon, checked and recorded at once (the operators' "check now")."""
    result = probe(daemon, api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=settings.GENERATOR_HEALTH_TIMEOUT)
    record(daemon, result, unhealthy_after=settings.GENERATOR_UNHEALTHY_AFTER)
    return result


def mark_unreachable(daemon_id: int, reason: str) -> None:
    """A worker lost this daemon mid-build: stop sending it builds until a check sees it again."""
    DockerDaemon.objects.filter(pk=daemon_id).update(
        healthy=False,
        consecutive_failures=F("consecutive_failures") + 1,
        last_checked_at=timezone.now(),
        last_error=reason[:500],
    )
