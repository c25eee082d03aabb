"""A daemon whose data root is a small filesystem of its own (as `make up` gives
each daemon one), two thirds full of the farm's images: a build that fills the
rest meets a real ENOSPC and fails with a reason naming the daemon's disk, the
farm's other services (the database, the logs, the registry) write on, the
prune its worker asks for frees the disk (the oldest image goes), and the
daemon takes builds again."""

from __future__ import annotations

import os
import uuid

import pytest

from builds.models import BuildJob, BuildLogLine
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, engine, follow, registry_digest, wait_for

pytestmark = pytest.mark.farm

DISK_BYTES = 300 << 20


@pytest.fixture
def small_disk_daemon(farm, farm_pool):
    """The farm's second daemon alone takes builds, on a 300 MiB data root; put back after."""
    *others, daemon = farm_pool
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    farm.give_data_disk(daemon.name, DISK_BYTES)
    wait_for(lambda: DockerDaemon.objects.get(pk=daemon.pk).takes_builds, "the daemon back in the pool")
    yield daemon
    farm.give_data_disk(daemon.name, 0)
    DockerDaemon.objects.filter(pk=daemon.pk).update(disk_full=False, disk_error="", data_disk_bytes=None)
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)


def data_root(farm, daemon) -> str:
    index = [name for name, _ in farm.daemons].index(daemon.name)
    return str(farm.services_dir / f"d{index}" / "data")


def test_a_build_that_fills_its_daemons_disk_fails_naming_it_and_the_daemon_builds_again_after_the_prune(
    farm, small_disk_daemon, token
):
    daemon = small_disk_daemon
    root = data_root(farm, daemon)
    assert os.path.ismount(root)
    # The registry's storage, the logs and the test database are on another filesystem.
    assert os.stat(farm.services_dir / "registry").st_dev != os.stat(root).st_dev

    # Two images of 100 MiB each, kept on the daemon (and BuildKit's records of them):
    # two thirds of the disk, more than its disk policy, held within the disk, keeps.
    kept = []
    for n in range(2):
        image = f"{farm.registry}/disk/kept{n}:{uuid.uuid4().hex[:8]}"
        job_id = api_build(
            farm,
            token,
            {"image": image, "dockerfile": f"FROM busybox\nRUN dd if=/dev/urandom of=/k bs=1M count=100 # {image}\n"},
        )
        assert follow(farm, job_id, token).end["status"] == "succeeded", BuildJob.objects.get(pk=job_id).error
        kept.append(image)

    filling = api_build(
        farm,
        token,
        {
            "image": f"{farm.registry}/disk/filling:{uuid.uuid4().hex[:8]}",
            "dockerfile": "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count=1000\n",
        },
    )
    assert follow(farm, filling, token).end["status"] == "failed"
    job = BuildJob.objects.get(pk=filling)
    assert job.daemon_id == daemon.pk
    assert f"the Docker daemon {daemon.name}'s disk is full (" in job.error, job.error
    assert "MiB free of 2" in job.error  # the 300 MiB file holds a filesystem of about 272 MiB
    # What dd said is in the build's log: written by the farm, on the host's disk.
    assert BuildLogLine.objects.filter(job_id=filling, text__contains="No space left on device").exists()

    # The worker asked for a prune at once: the mark goes, and the disk has room again.
    wait_for(
        lambda: (d := DockerDaemon.objects.get(pk=daemon.pk)).last_pruned_at and not d.disk_full,
        "the prune that clears the disk's mark",
        timeout=30,
    )
    measured = DockerDaemon.objects.get(pk=daemon.pk)
    assert 250 << 20 < measured.data_disk_bytes <= DISK_BYTES
    # The policy in force is held within the disk: three quarters of it between images and cache.
    assert measured.images_limit_bytes + measured.build_cache_limit_bytes <= measured.data_disk_bytes * 3 // 4
    # The prune, not the build's end, freed it: the oldest image went, and its cache records.
    assert measured.disk_farm_images_bytes <= measured.images_limit_bytes
    assert not engine(daemon.url).images.list(name=kept[0]) and engine(daemon.url).images.list(name=kept[1])
    stat = os.statvfs(root)
    assert stat.f_bavail * stat.f_frsize > 120 << 20

    tag = uuid.uuid4().hex[:8]
    next_build = api_build(
        farm,
        token,
        {
            "image": f"{farm.registry}/disk/after:{tag}",
            "dockerfile": "FROM busybox\nRUN dd if=/dev/zero of=/small bs=1M count=50\n",
        },
    )
    assert follow(farm, next_build, token).end["status"] == "succeeded", BuildJob.objects.get(pk=next_build).error
    job = BuildJob.objects.get(pk=next_build)
    assert job.daemon_id == daemon.pk and job.digest == registry_digest(farm, "disk/after", tag)
