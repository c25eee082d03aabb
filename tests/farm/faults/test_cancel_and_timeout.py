"""Cancel (the admin action) and the build timeout stop the build inside the daemon."""

from __future__ import annotations

import pytest

from tests.farm.conftest import build_processes, engine, follow, submit
from tests.farm.faults.conftest import assert_gapless_log, job, log_texts, wait_for, wait_until_printed

pytestmark = pytest.mark.farm

ENDLESS = "FROM busybox\nRUN echo {tag} sleeping && sleep 300\n"


def admin_cancel(client, job_id: str) -> list[str]:
    """Runs the admin's cancel action; answers the messages the page shows."""
    response = client.post("/admin/builds/buildjob/", {"action": "cancel", "_selected_action": [job_id]}, follow=True)
    assert response.status_code == 200
    return [str(message) for message in response.context["messages"]]


def containers_on(farm, daemon_name: str):
    # The low-level list: the high-level one inspects each container and races
    # with the daemon removing it.
    return engine(dict(farm.daemons)[daemon_name]).api.containers(all=True)


def build_gone(farm, daemon_name: str) -> bool:
    """No RUN step process left (BuildKit's show in no container list) and no container."""
    return not build_processes(daemon_name) and not containers_on(farm, daemon_name)


def test_an_operator_cancels_a_running_build_from_admin(farm, token, operator, client):
    job_id = submit(farm, token, f"{farm.registry}/faults/cancelled", ENDLESS.format(tag="cancel"))
    wait_until_printed(job_id, "cancel sleeping")
    daemon_name = job(job_id).daemon.name
    assert "sleep 300" in build_processes(daemon_name)  # the RUN step, running

    client.force_login(operator)
    assert admin_cancel(client, job_id) == [f"{job_id[:8]}: stopping"]

    done = follow(farm, job_id, token)
    final = job(job_id)
    assert done.end["status"] == final.status == "cancelled"
    assert final.cancelled_by == operator and final.finished_at and final.cancel_requested_at
    assert log_texts(job_id)[-1] == "[generator] Cancelled by operator"
    assert_gapless_log(job_id)
    wait_for(lambda: build_gone(farm, daemon_name), timeout=30, what="the build's processes going")


def test_cancelling_a_finished_build_changes_nothing(farm, token, operator, client):
    job_id = submit(farm, token, f"{farm.registry}/faults/finished", "FROM busybox\nRUN true\n")
    assert follow(farm, job_id, token).end["status"] == "succeeded"
    client.force_login(operator)
    assert admin_cancel(client, job_id) == [f"{job_id[:8]}: already succeeded"]
    assert job(job_id).status == "succeeded"


def test_a_build_past_its_timeout_is_stopped_and_fails(farm, token):
    # The farm's workers run with GENERATOR_BUILD_TIMEOUT=20 (tests/farm/conftest.py).
    job_id = submit(farm, token, f"{farm.registry}/faults/too-slow", ENDLESS.format(tag="slow"))
    done = follow(farm, job_id, token)
    final = job(job_id)
    assert done.end["status"] == final.status == "failed"
    assert final.error == "timed out after 20 s" and final.attempt == 1
    assert log_texts(job_id)[-1] == "[generator] Build failed: timed out after 20 s"
    wait_for(lambda: build_gone(farm, final.daemon.name), timeout=30, what="the build's processes going")
