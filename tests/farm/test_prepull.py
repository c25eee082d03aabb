"""A push warms the other daemon (builds/worker/prepull.py), on real daemons and
the farm's registry: the image is pulled there by digest with the farm's read
token and tagged as pushed, the next build there takes every step from the cache
without fetching a layer or reading the cache from the registry, and the pulled
image is the disk prune's to remove like any the farm built."""

from __future__ import annotations

import uuid

import docker
import pytest
import redis
from django.conf import settings

from builds.metrics import figures as metrics
from builds.models import BuildJob
from builds.worker import prepull
from pool import disk_prune
from pool.models import DockerDaemon
from tests.farm.conftest import follow, submit, wait_for

pytestmark = pytest.mark.farm


def held(url: str, reference: str) -> dict | None:
    api = docker.APIClient(base_url=url, version="1.41")
    try:
        return api.inspect_image(reference)
    except docker.errors.NotFound:
        return None
    finally:
        api.close()


def prepull_bytes(farm, daemon_name: str) -> int:
    broker = redis.Redis(port=farm.redis_port)
    return int(broker.hget(metrics.REDIS_PREFIX + prepull.BYTES, daemon_name) or 0)


def test_a_push_warms_the_other_daemon_whose_rebuild_then_fetches_no_layer(farm, farm_pool, token):
    image = f"{farm.registry}/prepull/app:v1"
    dockerfile = f"FROM busybox\nRUN echo {uuid.uuid4().hex} > /made\nRUN echo second > /second\n"
    bytes_before = {d.name: prepull_bytes(farm, d.name) for d in farm_pool}
    job_id = submit(farm, token, image, dockerfile)
    assert follow(farm, job_id, token).end["status"] == "succeeded"
    job = BuildJob.objects.get(pk=job_id)
    other = next(d for d in farm_pool if d.pk != job.daemon_id)
    bytes_before = bytes_before[other.name]
    reference = f"{job.image_repository}@{job.digest}"

    pulled = wait_for(lambda: held(other.url, reference), f"the warm of {other.name}", timeout=60)
    # Its cost, counted for /metrics: the bytes of the layers it fetched, from the image's manifest.
    wait_for(lambda: prepull_bytes(farm, other.name) > bytes_before, "the warm's count", timeout=10)
    assert pulled["Config"]["Labels"][disk_prune.FARM_LABEL] == disk_prune.FARM_LABEL_VALUE  # the prune's to remove
    # Tagged as pushed, so the next build's --cache-from of the tag reads the daemon's own store.
    wait_for(lambda: (held(other.url, image) or {}).get("Id") == pulled["Id"], "the warm's tag", timeout=10)

    DockerDaemon.objects.filter(pk=job.daemon_id).update(enabled=False)
    try:
        again = submit(farm, token, image, dockerfile)
        lines = [text for _, text in follow(farm, again, token).lines]
    finally:
        DockerDaemon.objects.filter(pk=job.daemon_id).update(enabled=True)
    assert BuildJob.objects.get(pk=again).daemon_id == other.pk
    log = "\n".join(lines)
    assert log.count(" CACHED") >= 2, log  # both RUN steps
    assert "pulling sha256:" not in log, log  # every layer was in the daemon's own store
    # The inline cache read from the daemon's own store (moby's local importer): no registry token asked for it.
    assert "importing cache manifest from" in log and "[auth]" not in log, log

    # The housekeeping prunes it as any image the farm built.
    other.images_limit_mb = 0
    result = disk_prune.prune(
        other,
        disk_prune.Protected(),
        api_version=settings.GENERATOR_DOCKER_API_VERSION,
        timeout=settings.GENERATOR_DOCKER_TIMEOUT,
    )
    assert pulled["Id"] in result.removed, result
    assert held(other.url, reference) is None
