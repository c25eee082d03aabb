"""Operators' actions in Django admin: the pool's drain, enable, disable, check now."""

from __future__ import annotations

import pytest

from pool.models import DockerDaemon


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


def act(client, action: str, daemons) -> list[str]:
    response = client.post(
        "/admin/pool/dockerdaemon/", {"action": action, "_selected_action": [d.pk for d in daemons]}, follow=True
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def test_drain_then_enable(admin_client, daemon):
    assert act(admin_client, "drain", [daemon]) == ["1 daemon(s) draining; their waiting jobs move to other daemons."]
    daemon.refresh_from_db()
    assert daemon.draining and not daemon.takes_builds
    act(admin_client, "enable", [daemon])
    daemon.refresh_from_db()
    assert daemon.enabled and not daemon.draining and daemon.takes_builds


def test_disable(admin_client, daemon):
    act(admin_client, "disable", [daemon])
    assert not DockerDaemon.objects.get(pk=daemon.pk).enabled


def test_check_now_records_an_unreachable_daemon(admin_client, daemon, settings):
    settings.GENERATOR_UNHEALTHY_AFTER = 1
    settings.GENERATOR_HEALTH_TIMEOUT = 1
    [message] = act(admin_client, "check_now", [daemon])
    assert message.startswith("unit-daemon: ")
    daemon.refresh_from_db()
    assert not daemon.healthy and daemon.consecutive_failures == 1 and daemon.last_error
    assert daemon.last_checked_at and daemon.last_seen_at is None


def test_the_job_admin_is_read_only(admin_client, daemon):
    response = admin_client.get("/admin/builds/buildjob/add/")
    assert response.status_code == 403


def test_retry_from_the_job_admin(admin_client, daemon):
    from builds.models import BuildJob

    done = BuildJob.objects.create(image="localhost:5000/a/b:latest", dockerfile="FROM busybox\n", status="failed")
    running = BuildJob.objects.create(image="localhost:5000/a/b:latest", dockerfile="FROM busybox\n", status="building")
    response = admin_client.post(
        "/admin/builds/buildjob/", {"action": "retry", "_selected_action": [done.pk, running.pk]}, follow=True
    )
    [message] = [str(m) for m in response.context["messages"]]
    retry = BuildJob.objects.get(retry_of=done)
    assert f"{done.id[:8]}: retried as {retry.id[:8]}" in message
    assert f"{running.id[:8]}: the build is building: only a finished build can be retried" in message


def test_a_registry_password_is_never_shown_stored_encrypted_and_kept_when_left_empty(admin_client, db):
    from builds.models import Registry
    from lib.crypto import decrypt

    admin_client.post(
        "/admin/builds/registry/add/", {"host": "r.example.invalid", "username": "u", "password": "hunter2"}
    )
    registry = Registry.objects.get(host="r.example.invalid")
    stored = registry.password
    assert "hunter2" not in stored and decrypt(stored) == "hunter2"
    page = admin_client.get(f"/admin/builds/registry/{registry.pk}/change/").content.decode()
    assert "hunter2" not in page and stored not in page
    admin_client.post(
        f"/admin/builds/registry/{registry.pk}/change/", {"host": "r.example.invalid", "username": "v", "password": ""}
    )
    registry.refresh_from_db()
    assert (registry.username, registry.password) == ("v", stored)


def test_the_pool_list_shows_each_daemons_load(admin_client, daemon):
    from builds.models import BuildJob

    BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status="building")
    BuildJob.objects.create(image="a/b:latest", dockerfile="FROM busybox\n", daemon=daemon, status="succeeded")
    page = admin_client.get("/admin/pool/dockerdaemon/").content.decode()
    assert '<td class="field-load">1/2</td>' in page
