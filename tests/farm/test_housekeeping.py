"""Daemon housekeeping on a real daemon: a daemon filled past its disk policy comes
back under it after the prune, while a build running there is left alone and
pushes; a daemon marked full takes no builds until the prune clears it."""

from __future__ import annotations

import uuid

import docker
import pytest

from builds.models import BuildJob, BuildLogLine
from pool import disk_prune
from pool.disk_prune import FARM_LABEL, disk_use, mark_disk_full
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, engine, follow, registry_digest, wait_for

pytestmark = pytest.mark.farm

LIMIT_MB = 30
LAYER_MB = 20


def big_image(nonce: str, then: str = "") -> str:
    # /dev/urandom: zeros would compress to nothing in the registry, not on the daemon's disk
    return f"FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count={LAYER_MB} && echo {nonce}\n{then}"


@pytest.fixture
def one_daemon(farm_pool):
    """Builds go to the first daemon only; its policy and state are put back after."""
    daemon, *others = farm_pool
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    yield daemon
    DockerDaemon.objects.filter(pk=daemon.pk).update(images_limit_mb=None, build_cache_limit_mb=None, disk_full=False)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)


def test_a_daemon_over_its_limits_is_pruned_under_them_while_its_running_build_goes_on(farm, one_daemon, token):
    client = engine(one_daemon.url)
    run = uuid.uuid4().hex[:8]
    old = [f"{farm.registry}/housekeeping/old{i}:{run}" for i in range(3)]
    for image in old:
        job_id = api_build(farm, token, {"image": image, "dockerfile": big_image(uuid.uuid4().hex)})
        assert follow(farm, job_id, token).end["status"] == "succeeded", BuildJob.objects.get(pk=job_id).error
        assert client.images.get(image).labels[FARM_LABEL] == "generator"  # every farm build carries it
    before = disk_use(client.api.df())
    assert before.farm_images > (len(old) * LAYER_MB) << 20  # past the limit set below, with room to spare
    DockerDaemon.objects.filter(pk=one_daemon.pk).update(images_limit_mb=LIMIT_MB, build_cache_limit_mb=LIMIT_MB)

    # A build that makes its own big layer, then waits while the prune runs.
    running = f"{farm.registry}/housekeeping/running:{run}"
    job_id = api_build(
        farm, token, {"image": running, "dockerfile": big_image(uuid.uuid4().hex, "RUN echo waiting && sleep 8\n")}
    )
    wait_for(lambda: BuildLogLine.objects.filter(job_id=job_id, text__endswith=" waiting").exists(), "the sleep")
    # And, as if a build had just met a full disk there: it takes no builds now.
    mark_disk_full(one_daemon.pk, "a build said: no space left on device")
    assert not DockerDaemon.objects.get(pk=one_daemon.pk).takes_builds

    result = disk_prune.prune_daemons(DockerDaemon.objects.filter(pk=one_daemon.pk))[one_daemon.name]

    assert not result.error, result.error
    assert BuildJob.objects.get(pk=job_id).status == "building"  # the prune did not wait for it, nor stop it
    measured = disk_use(client.api.df())
    assert measured.farm_images <= LIMIT_MB << 20, (before, measured, result)
    assert measured.build_cache <= LIMIT_MB << 20, (before, measured, result)
    assert result.removed, result
    # The removed images' layers were BuildKit's records too: freed by the cache prune after them.
    assert result.cache_reclaimed > 0, (before, measured, result)
    gone = [image for image in old if not client.images.list(name=image)]
    assert old[0] in gone  # the least recently built first
    daemon = DockerDaemon.objects.get(pk=one_daemon.pk)
    assert daemon.last_pruned_at and daemon.disk_farm_images_bytes == measured.farm_images
    assert daemon.disk_build_cache_bytes == measured.build_cache and daemon.disk_volumes_bytes is not None
    assert not daemon.disk_full and daemon.takes_builds  # under its limits: builds again

    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == "succeeded", job.error
    assert job.digest == registry_digest(farm, "housekeeping/running", run)
    assert client.images.get(running).id == job.image_id  # and its image is on the daemon


def test_an_unreachable_daemon_keeps_its_figures_and_says_why(farm, farm_pool):
    lost = DockerDaemon.objects.create(
        name=f"gone-{uuid.uuid4().hex[:6]}", url="unix:///nonexistent/docker.sock", enabled=False
    )
    try:
        result = disk_prune.prune_daemons(DockerDaemon.objects.filter(pk=lost.pk))[lost.name]
        lost.refresh_from_db()
        assert result.error and lost.disk_error.startswith("prune failed: ")
        assert lost.last_pruned_at is None and lost.disk_measured_at is None
    finally:
        lost.delete()


def test_a_limit_of_nothing_removes_every_farm_image_and_no_other(farm, one_daemon, token):
    client = engine(one_daemon.url)
    image = f"{farm.registry}/housekeeping/any:{uuid.uuid4().hex[:8]}"
    job_id = api_build(farm, token, {"image": image, "dockerfile": f"FROM busybox\nRUN echo {uuid.uuid4().hex}\n"})
    assert follow(farm, job_id, token).end["status"] == "succeeded"
    client.images.get("busybox:latest").tag("someone/else", "kept")  # not the farm's: no label
    DockerDaemon.objects.filter(pk=one_daemon.pk).update(images_limit_mb=0)

    disk_prune.prune_daemons(DockerDaemon.objects.filter(pk=one_daemon.pk))

    assert client.images.get("someone/else:kept") and client.images.get("busybox:latest")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image)
    farm_images = [i for i in client.api.df()["Images"] if (i.get("Labels") or {}).get(FARM_LABEL)]
    assert farm_images == []
