"""Issue 24, part 2, played as the flooding team: one team fills the farm with long
BuildKit builds (two to a daemon, every slot) and queues more; another
team's small build still starts within seconds, since the flood's longest-running
build beyond its share goes back to the queue (builds/jobs/preemption.py), stopped in
its daemon by its worker, with a reason naming the policy."""

from __future__ import annotations

import time
import uuid

import pytest
from django.contrib.auth import get_user_model

from builds.jobs.services import cancel_build
from builds.models import BuildJob, BuildLogLine
from tests.farm.conftest import api_build, follow, steps_running, team_token, wait_for

pytestmark = pytest.mark.farm

FLOOD_SLEEP = 600  # longer than the farm's build timeout (20 s): only pre-emption frees a slot in time


@pytest.fixture
def flood_and_other(farm, farm_pool):
    yield {slug: team_token(farm, slug, "fair share test") for slug in ("flood", "other")}
    # Nothing of the flood may hold the farm after the test.
    admin = get_user_model().objects.filter(is_superuser=True).first()
    for job in BuildJob.objects.filter(team__slug="flood", status__in=BuildJob.ACTIVE):
        cancel_build(job, admin)
    wait_for(
        lambda: not BuildJob.objects.filter(team__slug="flood", status__in=BuildJob.ACTIVE).exists(), "the flood's end"
    )


def test_a_flooding_team_cannot_keep_another_teams_small_build_waiting(farm, flood_and_other):
    run = uuid.uuid4().hex[:8]
    flood = [
        api_build(
            farm,
            flood_and_other["flood"],
            {
                "image": f"{farm.registry}/flood/long:{run}-{n}",
                "dockerfile": f"FROM busybox\nRUN echo {run}-{n} && sleep {FLOOD_SLEEP}\n",
                "builder": "buildkit",
            },
        )
        for n in range(6)
    ]
    # Two daemons of two slots, each slot held by one of the flood's BuildKit builds: the pool is full.
    wait_for(lambda: steps_running(FLOOD_SLEEP) >= 4, "the flood's sleeps", timeout=60)
    assert BuildJob.objects.filter(pk__in=flood, status="building").count() == 4

    submitted = time.monotonic()
    small = api_build(
        farm,
        flood_and_other["other"],
        {"image": f"{farm.registry}/other/small:{run}", "dockerfile": f"FROM busybox\nRUN echo {run}\n"},
    )
    done = follow(farm, small, flood_and_other["other"])
    job = BuildJob.objects.get(pk=small)
    assert done.end["status"] == "succeeded", job.error
    waited = (job.started_at - job.created_at).total_seconds()
    # The farm's fair share: 5 s (GENERATOR_FAIR_SHARE_SECONDS in FAST_TIMINGS), checked every second,
    # a heartbeat of 1 s; the flood's builds would time out only at 20 s.
    assert waited < 15, f"the small build waited {waited:.1f} s ({time.monotonic() - submitted:.1f} s in all)"

    # One of the flood's running builds went back to the queue, saying why, and stopped in its daemon.
    [preempted] = BuildJob.objects.filter(pk__in=flood, attempt=2)
    reason = preempted.error
    assert reason.startswith("stopped by the fair share (GENERATOR_FAIR_SHARE_SECONDS): team flood held 4 of the 4")
    assert "(its share 2)" in reason and "while 1 other team waited" in reason
    assert BuildLogLine.objects.filter(
        job_id=preempted.pk, text__contains="back in the farm's queue as attempt 2"
    ).exists()
    # Never a state in between: waiting again, or running again as its second attempt.
    assert preempted.status in ("queued", "building") and preempted.error
