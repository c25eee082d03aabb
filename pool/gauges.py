"""The daemons' own gauges for /metrics, from their rows (no jobs: builds/metrics/figures.py
adds the builds each daemon runs). Gauges of a daemon's other figures (its disk
use, when it was last pruned) belong here, one family each."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from pool.disk_prune import disk_gauges
from pool.models import DockerDaemon


def daemon_families(daemons: list[DockerDaemon]) -> Iterator[Metric]:
    gauges = {
        "generator_daemon_up": (
            "1 if the daemon takes builds (enabled, healthy, worker online).",
            lambda d: d.takes_builds,
        ),
        "generator_daemon_healthy": ("1 if the daemon answered its last health checks.", lambda d: d.healthy),
        "generator_daemon_worker_online": (
            "1 if a live worker consumes the daemon's queue.",
            lambda d: d.worker_online,
        ),
        "generator_daemon_enabled": ("1 if an operator lets the daemon take builds.", lambda d: d.enabled),
        "generator_daemon_draining": (
            "1 if the daemon finishes its builds and takes no new ones.",
            lambda d: d.draining,
        ),
        "generator_daemon_capacity": ("Concurrent builds a daemon takes.", lambda d: d.capacity),
    }
    for name, (help_text, value) in gauges.items():
        family = GaugeMetricFamily(name, help_text, labels=["daemon"])
        for daemon in daemons:
            family.add_metric([daemon.name], float(value(daemon)))
        yield family
    latency = GaugeMetricFamily(
        "generator_daemon_latency_seconds", "The last health check's round trip to the daemon.", labels=["daemon"]
    )
    for daemon in daemons:
        if daemon.latency_ms is not None:
            latency.add_metric([daemon.name], daemon.latency_ms / 1000)
    yield latency
    for name, help_text, samples in disk_gauges(daemons):
        family = GaugeMetricFamily(name, help_text, labels=["daemon"])
        for daemon_name, value in samples:
            family.add_metric([daemon_name], value)
        yield family
