"""A worker killed mid-build, a dockerd killed mid-build: the job is built again,
elsewhere, as the next attempt; never two builds of one attempt."""

from __future__ import annotations

import pytest

from pool.models import DockerDaemon
from tests.farm.conftest import build_processes, engine, follow, registry_digest, submit
from tests.farm.faults.conftest import (
    assert_gapless_log,
    job,
    log_texts,
    wait_for,
    wait_until_printed,
    wait_until_status,
)

pytestmark = pytest.mark.farm

SLOW = "FROM busybox\nRUN echo {tag} started && sleep 5 && echo {tag} finished\n"


def attempts_started(job_id: str) -> list[str]:
    return [t for t in log_texts(job_id) if t.startswith("[generator] Building")]


def test_a_killed_worker_is_noticed_and_its_build_runs_again_elsewhere(restore, token):
    farm = restore
    job_id = submit(farm, token, f"{farm.registry}/faults/killed-worker", SLOW.format(tag="kw"))
    wait_until_printed(job_id, "kw started")
    first = job(job_id)
    assert (first.status, first.attempt) == ("building", 1)

    farm.supervisor.kill(farm.worker_of(first.daemon.name))  # kill -9, the whole process group

    done = follow(farm, job_id, token)
    final = job(job_id)
    assert done.end["status"] == final.status == "succeeded"
    assert final.attempt == 2 and final.daemon != first.daemon
    texts = log_texts(job_id)
    assert any(t.startswith("[generator] worker lost:") and "attempt 1" in t for t in texts)
    # One build per attempt: attempt 1 once, attempt 2 once.
    assert [t.rsplit("(", 1)[1] for t in attempts_started(job_id)] == ["attempt 1)", "attempt 2)"]
    assert_gapless_log(job_id)
    assert final.digest == registry_digest(farm, "faults/killed-worker", "latest")
    # The dead worker's connection closed (its docker CLI died with it), so the
    # daemon stopped that build: no process of it is left, no container either.
    old_daemon = engine(dict(farm.daemons)[first.daemon.name])
    wait_for(
        lambda: not build_processes(first.daemon.name) and not old_daemon.api.containers(all=True),
        timeout=30,
        what="the old build's processes going",
    )


def test_a_killed_dockerd_is_taken_out_of_service_and_the_build_moves(restore, token):
    farm = restore
    job_id = submit(farm, token, f"{farm.registry}/faults/killed-dockerd", SLOW.format(tag="kd"))
    wait_until_printed(job_id, "kd started")
    first = job(job_id)

    farm.supervisor.kill(farm.dockerd_of(first.daemon.name))

    final = wait_until_status(job_id, {"succeeded", "failed", "cancelled"})
    assert final.status == "succeeded", final.error
    assert final.attempt == 2 and final.daemon != first.daemon
    assert any("lost the Docker daemon" in t and "trying again (attempt 2 of 3)" in t for t in log_texts(job_id))
    assert_gapless_log(job_id)
    sick = DockerDaemon.objects.get(pk=first.daemon.pk)
    assert not sick.healthy and sick.last_error

    # Back in service once it answers again.
    farm.ensure_running()
    wait_for(lambda: DockerDaemon.objects.get(pk=first.daemon.pk).healthy, timeout=30, what="the daemon's return")


def test_a_daemon_without_a_worker_gets_no_builds(restore, token):
    farm = restore
    name = farm.daemons[0][0]
    farm.supervisor.stop(farm.worker_of(name))
    wait_for(lambda: not DockerDaemon.objects.get(name=name).worker_online, timeout=30, what="the worker seen missing")
    job_ids = [submit(farm, token, f"{farm.registry}/faults/orphan-{i}", "FROM busybox\nRUN true\n") for i in range(3)]
    for job_id in job_ids:
        final = wait_until_status(job_id, {"succeeded", "failed"})
        assert final.status == "succeeded" and final.daemon.name != name
