"""What a submit costs: its queries, counted, and its dispatch pass, which in
daphne runs after the answer, once for the asks that came while one ran
(builds/jobs/dispatch_soon.py). bench/history.py times the same phases."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from builds.jobs import dispatch_soon
from builds.models import BuildJob
from tests.conftest import builder

DOCKERFILE = "FROM busybox\nRUN echo hi\n"


def test_a_seed_api_submit_of_a_team_member_under_limits_stays_within_its_queries(
    client, team, daemon, django_assert_max_num_queries
):
    """A member (permissions read from the database, not a superuser's), the team's
    limits on: the token, the permission (user's and groups', one query), the
    registry, the namespace with the membership, the quotas (one query), the pool,
    the team's row locked and the quotas again, the job, the audit event, the
    notifications' question. 17 before the permission, the quotas and the
    namespace were one query each (bench/history.py prints them by phase)."""
    team.max_concurrent_builds, team.max_builds_per_hour, team.over_limit = 10, 10, "reject"
    team.save()
    user = builder("member", team)
    params = {"imagename": "localhost:5000/cost/app", "dockerfile": base64.b64encode(DOCKERFILE.encode()).decode()}
    with django_assert_max_num_queries(13):
        response = client.get("/b1/build", params, headers={"Authorization": f"Token {user.api_token}"})
    assert response.status_code == 200, response.content


@pytest.fixture
def background(monkeypatch):
    monkeypatch.setattr(dispatch_soon, "_in_background", True)


@pytest.mark.django_db(transaction=True)  # the dispatch thread reads with a connection of its own
def test_in_the_web_tier_asks_that_come_during_a_pass_are_served_by_one_more(background, monkeypatch, daemon):
    passes, first_pass_running, release = [], threading.Event(), threading.Event()
    real = dispatch_soon.dispatch

    def counted_dispatch() -> int:
        passes.append(time.monotonic())
        if len(passes) == 1:
            first_pass_running.set()
            release.wait(10)
        return real()

    monkeypatch.setattr(dispatch_soon, "dispatch", counted_dispatch)
    dispatch_soon.dispatch_soon()
    assert first_pass_running.wait(10)
    jobs = [BuildJob.objects.create(image=f"localhost:5000/cost/app:{n}", dockerfile=DOCKERFILE) for n in range(2)]
    for _ in range(20):  # twenty submits while the first pass runs
        dispatch_soon.dispatch_soon()
    release.set()
    deadline = time.monotonic() + 10
    while BuildJob.objects.filter(pk__in=[j.pk for j in jobs], daemon__isnull=False).count() < 2:
        assert time.monotonic() < deadline, "the jobs submitted during a pass were not dispatched"
        time.sleep(0.05)
    time.sleep(0.3)  # any further pass would have started by now
    assert len(passes) == 2


def test_elsewhere_the_pass_runs_where_it_is_asked_for(daemon):
    job = BuildJob.objects.create(image="localhost:5000/cost/app:now", dockerfile=DOCKERFILE)
    dispatch_soon.dispatch_soon()
    assert BuildJob.objects.get(pk=job.pk).daemon == daemon
