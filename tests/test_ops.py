"""/healthz, /readyz and /metrics for load balancers and Prometheus."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from builds.models import BuildJob, Repository, WebhookDelivery


def test_healthz_says_the_process_is_alive(client):
    response = client.get("/healthz")
    assert (response.status_code, response.content) == (200, b"ok\n")


def test_readyz_checks_database_redis_and_daemons(client, daemon):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "daemons": "1 taking builds"}


def test_readyz_is_503_without_a_daemon_that_takes_builds(client, daemon):
    daemon.healthy = False
    daemon.save()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["daemons"] == "no healthy, enabled daemon with a worker"


def test_readyz_is_503_when_redis_is_unreachable(client, daemon, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["redis"].startswith("unreachable")


def test_metrics_in_prometheus_text_format(client, daemon):
    now = timezone.now()
    BuildJob.objects.create(image="a/b:1", status="queued")
    BuildJob.objects.create(image="a/b:2", status="queued", daemon=daemon)
    BuildJob.objects.create(
        image="a/b:3",
        status="succeeded",
        daemon=daemon,
        started_at=now - timedelta(seconds=10),
        finished_at=now,
    )
    BuildJob.objects.filter(image="a/b:3").update(created_at=now - timedelta(seconds=12))
    repository = Repository.objects.create(
        full_name="a/b", clone_url="https://x.invalid/a.git", webhook_secret="s", image="a/b"
    )
    WebhookDelivery.objects.create(delivery_id="1", event="push", repository=repository, status_code=202, result="x")
    text = client.get("/metrics").content.decode()
    assert 'generator_jobs{status="queued"} 2' in text and 'generator_jobs{status="succeeded"} 1' in text
    assert "generator_jobs_waiting 1" in text
    assert 'generator_daemon_queue_length{daemon="unit-daemon"} 1' in text
    assert 'generator_daemon_active_builds{daemon="unit-daemon"} 1' in text
    assert 'generator_daemon_up{daemon="unit-daemon"} 1' in text
    assert (
        'generator_job_wait_seconds_bucket{le="1"} 0' in text and 'generator_job_wait_seconds_bucket{le="5"} 1' in text
    )
    assert 'generator_job_run_seconds_bucket{le="15"} 1' in text and "generator_job_run_seconds_count 1" in text
    assert 'generator_webhook_deliveries_total{event="push",status="202"} 1' in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
