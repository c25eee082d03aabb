"""Daemon housekeeping without a daemon: the disk policy in pool.json, the API and
admin, a daemon marked full (as when a build meets "no space left on device"), and
the figures on the pool page and /metrics. Pruning a real daemon is
tests/farm/test_housekeeping.py; a real full disk is not practical here, so the
daemon's error text stands in for it."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from builds.engine.docker import BuildFailed, PushFailed
from builds.jobs.daemon_usage import protected_on
from builds.models import BuildJob
from builds.worker import runner
from pool import disk_prune as housekeeping
from pool.disk_prune import DiskUse, PruneResult, disk_use, is_disk_full
from pool.models import DockerDaemon
from pool.scheduler import choose_daemon

MIB = 1 << 20


@pytest.fixture
def pool_file(tmp_path):
    def write(data) -> str:
        path = tmp_path / "pool.json"
        path.write_text(json.dumps(data))
        return str(path)

    return write


def entry(**more) -> dict:
    return {"name": "d1", "engine": "unix:///run/d1/docker.sock", **more}


def test_loadpool_sets_a_disk_policy_and_an_entry_without_one_keeps_the_operators(db, pool_file):
    call_command("loadpool", pool_file({"docker": [entry(disk={"images_mb": 500, "build_cache_mb": 0})]}))
    daemon = DockerDaemon.objects.get(name="d1")
    assert (daemon.images_limit_mb, daemon.build_cache_limit_mb) == (500, 0)
    assert (daemon.images_limit_bytes, daemon.build_cache_limit_bytes) == (500 * MIB, 0)

    DockerDaemon.objects.filter(pk=daemon.pk).update(images_limit_mb=700)
    call_command("loadpool", pool_file({"docker": [entry()]}))
    assert DockerDaemon.objects.get(name="d1").images_limit_mb == 700

    call_command("loadpool", pool_file({"docker": [entry(disk={"build_cache_mb": 64})]}))
    daemon = DockerDaemon.objects.get(name="d1")
    assert (daemon.images_limit_mb, daemon.build_cache_limit_mb) == (None, 64)  # left out: the farm's default


@pytest.mark.parametrize(
    "disk, reason",
    [
        ({"images_mb": -1}, "disk.images_mb must be a whole number of MiB"),
        ({"images_mb": "5G"}, "disk.images_mb must be a whole number of MiB"),
        ({"build_cache_mb": True}, "disk.build_cache_mb must be a whole number of MiB"),
        ({"volumes_mb": 5}, "disk must be"),
        ([5], "disk must be"),
    ],
)
def test_loadpool_refuses_a_bad_disk_policy(db, pool_file, disk, reason):
    with pytest.raises(CommandError, match=reason):
        call_command("loadpool", pool_file({"docker": [entry(disk=disk)]}))
    assert not DockerDaemon.objects.exists()


def test_a_daemon_without_a_policy_has_the_farms_defaults(db, settings):
    settings.GENERATOR_DISK_IMAGES_LIMIT_MB, settings.GENERATOR_DISK_BUILD_CACHE_LIMIT_MB = 123, 45
    daemon = DockerDaemon(name="d", url="unix:///x")
    assert (daemon.images_limit_bytes, daemon.build_cache_limit_bytes) == (123 * MIB, 45 * MIB)


@pytest.fixture
def local_daemon(db):
    # Nothing listens there.
    return DockerDaemon.objects.create(name="local", url="unix:///nonexistent/docker.sock")


@pytest.fixture
def staff_api(operator):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return api


def test_staff_set_a_daemons_policy_through_the_api_and_the_figures_are_read_only(staff_api, local_daemon):
    url = f"/api/v1/daemons/{local_daemon.pk}/"
    answer = staff_api.patch(url, {"images_limit_mb": 100, "disk_full": True, "disk_images_bytes": 5}, format="json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["images_limit_mb"] == 100 and body["images_limit_bytes"] == 100 * MIB
    assert body["disk_full"] is False and body["disk_images_bytes"] is None  # housekeeping's, not the API's
    assert staff_api.patch(url, {"build_cache_limit_mb": -5}, format="json").status_code == 400
    answer = staff_api.patch(url, {"build_cache_limit_mb": "lots"}, format="json")
    assert answer.status_code == 400 and "build_cache_limit_mb" in answer.json()


def test_only_staff_change_the_policy(reader, local_daemon):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {reader.api_token}")
    answer = api.patch(f"/api/v1/daemons/{local_daemon.pk}/", {"images_limit_mb": 1}, format="json")
    assert answer.status_code == 403
    assert api.post(f"/api/v1/daemons/{local_daemon.pk}/prune/").status_code == 403
    assert DockerDaemon.objects.get(pk=local_daemon.pk).images_limit_mb is None


def test_the_prune_action_says_when_the_daemon_cannot_be_reached(staff_api, local_daemon):
    answer = staff_api.post(f"/api/v1/daemons/{local_daemon.pk}/prune/")
    assert answer.status_code == 200
    assert answer.json()["prune"].startswith("failed: ")
    assert answer.json()["disk_error"].startswith("prune failed: ")


@pytest.mark.parametrize(
    "message, full",
    [
        ("failed to copy: write /var/lib/docker/overlay2/x/diff/big: no space left on device", True),
        ("failed to register layer: Error processing tar file(exit status 1): No space left on device", True),
        ("write /var/lib/docker/tmp/GetImageBlob1: disk quota exceeded\n", True),
        ('process "/bin/sh -c echo no space left on device; false" did not complete successfully: exit code: 1', False),
        ('failed to compute cache key: "/no space left on device" not found: not found', False),
        ("no space left on device is what the step printed, then more", False),
    ],
)
def test_a_full_disk_is_known_by_the_daemons_own_words_at_the_end(message, full):
    assert is_disk_full(message) is full


def test_a_full_daemon_takes_no_builds():
    full = DockerDaemon(pk=1, name="full", url="unix:///a", disk_full=True)
    free = DockerDaemon(pk=2, name="free", url="unix:///b")
    assert not full.takes_builds and free.takes_builds
    assert choose_daemon([full, free], {}, prefer=1) is free
    assert choose_daemon([full], {}) is None


def _failing_build(monkeypatch, error: Exception) -> None:
    """The build stands in for the daemon: it fails with the daemon's own words."""

    def build_and_push(job, log, watch, froms):
        log.write("#5 [2/2] RUN dd if=/dev/zero of=/big bs=1M count=20000")
        raise error

    monkeypatch.setattr(runner, "_build_and_push", build_and_push)


DISK_FULL = BuildFailed(
    "failed to solve: failed to copy: write /var/lib/docker/overlay2/x/big: no space left on device"
)


@pytest.mark.django_db(transaction=True)
def test_a_build_that_fills_the_disk_marks_the_daemon_and_goes_to_another(monkeypatch, redis_url):
    full = DockerDaemon.objects.create(name="filling", url="unix:///run/filling.sock")
    spare = DockerDaemon.objects.create(name="spare", url="unix:///run/spare.sock")
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", daemon=full)
    _failing_build(monkeypatch, DISK_FULL)

    runner.run_build(job.id, 1, full.pk, worker="w")

    job.refresh_from_db()
    full.refresh_from_db()
    assert job.status == "queued" and job.attempt == 2 and job.daemon_id == spare.pk
    assert "the Docker daemon filling ran out of disk space" in job.error and "no space left on device" in job.error
    assert full.disk_full and not full.takes_builds and "ran out of disk space" in full.disk_error
    assert full.healthy  # it answers: only its disk is the matter


@pytest.mark.django_db(transaction=True)
def test_with_no_attempt_left_the_build_fails_naming_the_full_disk(monkeypatch, redis_url, settings):
    settings.GENERATOR_MAX_ATTEMPTS = 1
    full = DockerDaemon.objects.create(name="filling", url="unix:///run/filling.sock")
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", daemon=full)
    _failing_build(monkeypatch, DISK_FULL)

    runner.run_build(job.id, 1, full.pk, worker="w")

    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("the Docker daemon filling ran out of disk space (failed to solve")
    assert job.error.endswith("(gave up after 1 attempts)")
    assert DockerDaemon.objects.get(pk=full.pk).disk_full


@pytest.mark.parametrize(
    "error",
    [
        BuildFailed('process "/bin/sh -c dd of=/tmp/x" did not complete successfully: exit code: 1', exit_code=1),
        PushFailed("received unexpected HTTP status: 500: write /registry/x: no space left on device", transient=False),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_steps_exit_or_a_registrys_full_disk_leaves_the_daemon_in_the_pool(monkeypatch, redis_url, error):
    daemon = DockerDaemon.objects.create(name="fine", url="unix:///run/fine.sock")
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", daemon=daemon)
    _failing_build(monkeypatch, error)

    runner.run_build(job.id, 1, daemon.pk, worker="w")

    assert BuildJob.objects.get(pk=job.pk).status == "failed"
    assert not DockerDaemon.objects.get(pk=daemon.pk).disk_full


def test_a_prune_under_the_limits_clears_the_mark_and_one_over_them_keeps_it(daemon):
    DockerDaemon.objects.filter(pk=daemon.pk).update(
        images_limit_mb=10, build_cache_limit_mb=10, disk_full=True, disk_error="ran out"
    )
    daemon.refresh_from_db()
    housekeeping.record(
        daemon, PruneResult(use=DiskUse(images=50 * MIB, farm_images=11 * MIB, build_cache=0, volumes=0))
    )
    daemon.refresh_from_db()
    assert daemon.disk_full and daemon.last_pruned_at and daemon.disk_farm_images_bytes == 11 * MIB
    assert daemon.disk_error.startswith("ran out (still over its limits")

    housekeeping.record(
        daemon, PruneResult(use=DiskUse(images=50 * MIB, farm_images=9 * MIB, build_cache=0, volumes=7))
    )
    daemon.refresh_from_db()
    assert not daemon.disk_full and daemon.disk_error == "" and daemon.takes_builds
    assert (daemon.disk_images_bytes, daemon.disk_volumes_bytes) == (50 * MIB, 7)


def test_a_failed_prune_keeps_the_figures_and_the_mark(daemon):
    DockerDaemon.objects.filter(pk=daemon.pk).update(disk_full=True, disk_farm_images_bytes=3)
    daemon.refresh_from_db()
    housekeeping.record(daemon, PruneResult(error="ConnectionError: refused"))
    daemon.refresh_from_db()
    assert daemon.disk_full and daemon.disk_farm_images_bytes == 3 and daemon.last_pruned_at is None
    assert daemon.disk_error == "prune failed: ConnectionError: refused"


def test_disk_use_counts_the_farms_images_and_the_cache_no_image_shares():
    label = {housekeeping.FARM_LABEL: housekeeping.FARM_LABEL_VALUE}
    df = {
        "LayersSize": 100,
        "Images": [
            {"Id": "a", "Size": 30, "SharedSize": 5, "Labels": label},
            {"Id": "b", "Size": 25, "SharedSize": 5, "Labels": label},
            {"Id": "base", "Size": 5, "SharedSize": 5, "Labels": None},
        ],
        "BuildCache": [{"Size": 20, "Shared": True}, {"Size": 8, "Shared": False}],
        "Volumes": [{"UsageData": {"Size": 4}}, {"UsageData": {"Size": -1}}],
    }
    assert disk_use(df) == DiskUse(images=100, farm_images=25 + 20 + 5, build_cache=8, volumes=4)


def test_what_a_running_build_uses_is_named(daemon, operator):
    other = DockerDaemon.objects.create(name="other", url="unix:///o")
    started = timezone.now()
    BuildJob.objects.create(
        image="localhost:5000/a/b:1", extra_tags=["x"], daemon=daemon, status="pushing", image_id="sha256:1",
        started_at=started,
    )  # fmt: skip
    BuildJob.objects.create(image="localhost:5000/a/c:2", daemon=daemon, status="succeeded", image_id="sha256:2")
    BuildJob.objects.create(image="localhost:5000/a/d:3", daemon=other, status="building")
    protected = protected_on(daemon)
    assert protected.references == {"localhost:5000/a/b:1", "localhost:5000/a/b:x"}
    assert protected.image_ids == {"sha256:1"} and protected.since == started
    assert protected_on(DockerDaemon.objects.create(name="idle", url="unix:///i")).since > started


def test_the_pool_page_and_metrics_show_each_daemons_disk(client, operator, daemon):
    DockerDaemon.objects.filter(pk=daemon.pk).update(
        disk_images_bytes=3 * MIB, disk_farm_images_bytes=2 * MIB, disk_build_cache_bytes=MIB,
        disk_volumes_bytes=0, disk_measured_at=timezone.now(), last_pruned_at=timezone.now(), disk_full=True,
    )  # fmt: skip
    client.force_login(operator)
    page = client.get("/pool/").content.decode()
    assert "images 2.0\xa0MB / 20.0\xa0GB</span>" in page and "cache 1.0\xa0MB / 10.0\xa0GB</span>" in page
    assert "disk full" in page
    page = client.get("/pool/unit-daemon/").content.decode()
    assert "farm images 2.0\xa0MB (limit 20.0\xa0GB), build cache 1.0\xa0MB (limit 10.0\xa0GB)" in page
    assert "volumes 0\xa0bytes, all images 3.0\xa0MB" in page and "disk full" in page
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(client.get("/metrics").content.decode())
        for sample in family.samples
        if sample.labels.get("daemon") == "unit-daemon"
    }
    assert samples["generator_daemon_disk_farm_images_bytes"] == 2 * MIB
    assert samples["generator_daemon_disk_build_cache_bytes"] == MIB
    assert samples["generator_daemon_disk_volumes_bytes"] == 0
    assert samples["generator_daemon_disk_full"] == 1
    assert samples["generator_daemon_last_pruned_timestamp_seconds"] > 1.7e9


def test_beat_prunes_the_daemons(settings):
    assert settings.CELERY_BEAT_SCHEDULE["prune-daemons"]["task"] == "farm.prune_daemons"


def test_admin_shows_the_disk_and_prunes_on_request(client, operator, local_daemon):
    client.force_login(operator)
    page = client.get("/admin/pool/dockerdaemon/").content.decode()
    assert '<td class="field-disk">not measured yet</td>' in page
    response = client.post(
        "/admin/pool/dockerdaemon/", {"action": "prune_now", "_selected_action": [local_daemon.pk]}, follow=True
    )
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("local: ConnectionError: "), message
    assert DockerDaemon.objects.get(pk=local_daemon.pk).disk_error.startswith("prune failed: ")

    DockerDaemon.objects.filter(pk=local_daemon.pk).update(
        disk_farm_images_bytes=2 * MIB, disk_build_cache_bytes=0, disk_measured_at=timezone.now(), disk_full=True
    )
    page = client.get("/admin/pool/dockerdaemon/").content.decode()
    assert '<td class="field-disk">2.0\xa0MB / 0\xa0bytes FULL</td>' in page
