"""/healthz, /readyz and /metrics for load balancers and Prometheus."""

from __future__ import annotations


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
