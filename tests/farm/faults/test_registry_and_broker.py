"""The registry down during a push; Redis restarted with jobs queued."""

from __future__ import annotations

import pytest

from builds.models import BuildJob
from scripts import localfarm as lf
from tests.farm.conftest import engine, follow, registry_digest, submit
from tests.farm.faults.conftest import (
    assert_gapless_log,
    job,
    log_texts,
    wait_for,
    wait_until_logged,
    wait_until_status,
)

pytestmark = pytest.mark.farm

SMALL = "FROM busybox\nRUN echo {tag} > /tag\n"


def test_a_push_retries_while_the_registry_is_down_and_succeeds_when_it_returns(restore, token):
    farm = restore
    farm.supervisor.stop("registry")
    job_id = submit(farm, token, f"{farm.registry}/faults/registry-back", SMALL.format(tag="back"))
    wait_until_logged(job_id, "trying again in")

    lf.start_registry(farm.supervisor, farm.registry_port, farm.services_dir / "registry")

    final = wait_until_status(job_id, {"succeeded", "failed"})
    assert final.status == "succeeded", final.error
    assert final.attempt == 1  # retried inside the attempt, not rebuilt
    assert final.digest == registry_digest(farm, "faults/registry-back", "latest")
    assert sum(t.startswith("[generator] Pushing") for t in log_texts(job_id)) >= 2


def test_a_registry_that_stays_down_fails_the_job_naming_it_and_keeps_the_image(restore, token):
    farm = restore
    farm.supervisor.stop("registry")
    image = f"{farm.registry}/faults/registry-gone"
    job_id = submit(farm, token, image, SMALL.format(tag="gone"))

    final = wait_until_status(job_id, {"succeeded", "failed"})
    assert final.status == "failed"
    assert final.error.startswith(f"registry {farm.registry} did not take the push after 4 tries: ")
    assert final.attempt == 1 and final.image_id and not final.digest
    assert log_texts(job_id)[-1] == f"[generator] Build failed: {final.error}"
    # The image stays on the daemon: a retry of the push would not need a rebuild.
    assert engine(dict(farm.daemons)[final.daemon.name]).images.get(f"{image}:latest").id == final.image_id


def test_jobs_queued_when_redis_restarts_are_not_lost(restore, token):
    farm = restore
    # daphne's channel layer holds a connection to this Redis from here on.
    warm_up = submit(farm, token, f"{farm.registry}/faults/redis-warm-up", SMALL.format(tag="warm"))
    assert follow(farm, warm_up, token).end["status"] == "succeeded"
    # No worker takes messages for a moment: the messages sit in Redis. (Beat
    # goes first, or its health check would see the workers gone and hold the
    # jobs back in the database, which is not the case under test.)
    farm.supervisor.stop("control")
    for index in range(len(farm.daemons)):
        farm.supervisor.stop(f"worker-{index}")
    # One per daemon: a BuildKit build has its daemon to itself.
    job_ids = [submit(farm, token, f"{farm.registry}/faults/redis-{i}", SMALL.format(tag=i)) for i in range(2)]
    wait_for(
        lambda: BuildJob.objects.filter(pk__in=job_ids, daemon__isnull=False).count() == 2,
        timeout=10,
        what="jobs given to daemons",
    )

    # Redis keeps nothing on disk here: a restart drops every queued message.
    farm.supervisor.stop("redis")
    lf.start_redis(farm.supervisor, farm.redis_port, farm.services_dir / "redis")
    farm.ensure_running()

    # The live log works again too: daphne's channel layer reconnects.
    assert follow(farm, job_ids[0], token).end["status"] == "succeeded"
    for job_id in job_ids:
        final = wait_until_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
        assert final.status == "succeeded", final.error
        assert_gapless_log(job_id)
    assert all(job(j).digest == registry_digest(farm, f"faults/redis-{i}", "latest") for i, j in enumerate(job_ids))
